//! Per-instance state of one simulated replica: its configuration, its bounded response and
//! conversation stores, and the log of recently received request bodies.
//!
//! Everything here is deliberately per process, like vLLM's in-memory dicts: a response created on
//! one simulator is unknown to every other one, which is exactly what makes a mis-routed
//! continuation fail with a 404. Unlike vLLM, the stores are bounded (entries and approximate bytes)
//! so a long soak or benchmark cannot grow the process without limit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use bytes::Bytes;
use fnv::FnvHashMap;
use serde_json::Value;

use super::object::ResponseObject;

/// How many request bodies `GET /_simulator/requests/{sha256}` can still return.
pub const REQUEST_LOG_ENTRIES: usize = 64;
/// Byte budget of the request-body log, so 64 huge bodies cannot pin gigabytes.
pub const REQUEST_LOG_BYTES: usize = 256 * 1024 * 1024;
/// Largest request body the simulator reads (the router's own default limit is 10 MiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Items kept per conversation; older items are dropped first.
pub const MAX_CONVERSATION_ITEMS: usize = 1000;

/// Immutable settings of one simulator instance, fixed at start-up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Instance name, echoed in every output text and in `x-simulator-instance`.
    pub instance: String,
    /// Models this replica serves; anything else is a vLLM-style 404.
    pub models: Vec<String>,
    /// Pause before each streamed text chunk (simulates token latency).
    pub chunk_delay: Duration,
    /// Number of `response.output_text.delta` (or chat content) chunks per stream.
    pub stream_chunks: usize,
    /// How long a `background: true` response stays queued/in progress.
    pub background_delay: Duration,
    /// Entry cap of each store (responses, conversations).
    pub max_entries: usize,
    /// Approximate byte cap of each store.
    pub max_bytes: usize,
}

/// Shared state handed to every handler (behind an `Arc`).
#[derive(Debug)]
pub struct SimState {
    pub config: SimConfig,
    /// Pre-validated header value of the instance name (built once, cloned per response).
    pub instance_header: HeaderValue,
    pub responses: BoundedStore<StoredResponse>,
    pub conversations: BoundedStore<Conversation>,
    pub requests: RequestLog,
}

impl SimState {
    /// Builds the state; fails only if the instance name cannot be an HTTP header value.
    pub fn new(config: SimConfig) -> Result<Self, axum::http::header::InvalidHeaderValue> {
        let instance_header = HeaderValue::from_str(&config.instance)?;
        Ok(Self {
            responses: BoundedStore::new(config.max_entries, config.max_bytes),
            conversations: BoundedStore::new(config.max_entries, config.max_bytes),
            requests: RequestLog::new(REQUEST_LOG_ENTRIES, REQUEST_LOG_BYTES),
            instance_header,
            config,
        })
    }

    /// vLLM semantics: a missing model means "the served model"; an unknown one is an error.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, super::SimError> {
        match requested {
            None => Ok(self.config.models.first().cloned().unwrap_or_default()),
            Some(m) if self.config.models.iter().any(|s| s == m) => Ok(m.to_owned()),
            Some(m) => Err(super::SimError::ModelNotFound(m.to_owned())),
        }
    }
}

/// One stored response: the object `GET` returns plus what continuations and `input_items` need.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub object: Arc<ResponseObject>,
    /// The request's `input`, kept as sent; normalized into items only when listed.
    pub input: Arc<Value>,
    /// Conversation turn number this response answered (1 for a fresh chain).
    pub turn: u32,
}

/// One conversation (`conv_…`) and its items.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub created_at: u64,
    pub metadata: Value,
    pub items: VecDeque<Value>,
    /// Responses created in this conversation; the next one answers turn `responses + 1`.
    pub responses: u32,
    /// Sum of [`approx_size`] over `items`.
    pub items_bytes: usize,
}

impl Conversation {
    /// The Conversation object of the API (`object: "conversation"`).
    pub fn to_json(&self) -> ConversationObject {
        ConversationObject {
            id: self.id.clone(),
            object: "conversation",
            created_at: self.created_at,
            metadata: self.metadata.clone(),
        }
    }

    /// Appends items, dropping the oldest beyond [`MAX_CONVERSATION_ITEMS`].
    pub fn append(&mut self, items: impl IntoIterator<Item = Value>) {
        for item in items {
            self.items_bytes += approx_size(&item);
            self.items.push_back(item);
        }
        while self.items.len() > MAX_CONVERSATION_ITEMS {
            if let Some(old) = self.items.pop_front() {
                self.items_bytes = self.items_bytes.saturating_sub(approx_size(&old));
            }
        }
    }

    /// Approximate memory footprint, for the store's byte budget (kept incrementally).
    pub fn approx_size(&self) -> usize {
        128 + approx_size(&self.metadata) + self.items_bytes
    }
}

/// Wire form of a conversation (typed for a stable key order).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversationObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub metadata: Value,
}

/// Cheap estimate of how many bytes a JSON value occupies (strings plus a per-node overhead).
pub fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => 32 + s.len(),
        Value::Array(a) => 32 + a.iter().map(approx_size).sum::<usize>(),
        Value::Object(o) => {
            32 + o
                .iter()
                .map(|(k, v)| 32 + k.len() + approx_size(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}

/// An id-keyed store that evicts its oldest entries beyond an entry cap or a byte budget.
///
/// One short critical section per operation and never held across an `.await`; callers clone
/// cheap (`Arc`-based) values out or run a closure under the lock, then serialize outside it.
#[derive(Debug)]
pub struct BoundedStore<V> {
    inner: Mutex<StoreInner<V>>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct StoreInner<V> {
    map: FnvHashMap<String, (V, usize)>,
    /// Insertion order; may still hold ids already deleted (skipped when evicted).
    order: VecDeque<String>,
    bytes: usize,
}

impl<V> BoundedStore<V> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(StoreInner {
                map: FnvHashMap::default(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner<V>> {
        // A panic elsewhere must not turn every later request into a panic too.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Inserts (or replaces) an entry of approximately `size` bytes, evicting the oldest first.
    pub fn insert(&self, id: String, value: V, size: usize) {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some((_, old)) = inner.map.insert(id.clone(), (value, size)) {
            inner.bytes = inner.bytes.saturating_sub(old);
        } else {
            inner.order.push_back(id);
        }
        inner.bytes += size;
        self.evict(inner);
    }

    fn evict(&self, inner: &mut StoreInner<V>) {
        while inner.order.len() > self.max_entries
            || (inner.bytes > self.max_bytes && inner.order.len() > 1)
        {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = inner.map.remove(&old) {
                inner.bytes = inner.bytes.saturating_sub(size);
            }
        }
    }

    /// Runs `f` on the entry under the lock (keep `f` short: clone or read, never block).
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.lock().map.get(id).map(|(v, _)| f(v))
    }

    /// Mutates the entry under the lock; `f` may also update the entry's approximate size.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut V, &mut usize) -> R) -> Option<R> {
        let mut g = self.lock();
        let inner = &mut *g;
        let (value, size) = inner.map.get_mut(id)?;
        let old = *size;
        let result = f(value, size);
        inner.bytes = inner.bytes.saturating_sub(old) + *size;
        self.evict(inner);
        Some(result)
    }

    /// Removes the entry; its slot in the eviction order is reclaimed lazily.
    pub fn remove(&self, id: &str) -> Option<V> {
        let mut g = self.lock();
        let inner = &mut *g;
        let (v, size) = inner.map.remove(id)?;
        inner.bytes = inner.bytes.saturating_sub(size);
        if inner.order.back().is_some_and(|b| b == id) {
            inner.order.pop_back();
        }
        Some(v)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The raw bodies of the most recent requests, keyed by their sha256, so a test can diff the bytes
/// that reached the backend against the bytes the client sent.
#[derive(Debug)]
pub struct RequestLog {
    inner: Mutex<(VecDeque<(String, Bytes)>, usize)>,
    max_entries: usize,
    max_bytes: usize,
}

impl RequestLog {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new((VecDeque::with_capacity(max_entries + 1), 0)),
            max_entries,
            max_bytes,
        }
    }

    /// Records a body (a cheap `Bytes` clone); the newest entry is always kept.
    pub fn push(&self, digest: String, body: Bytes) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (log, bytes) = &mut *g;
        *bytes += body.len();
        log.push_back((digest, body));
        while log.len() > self.max_entries || (*bytes > self.max_bytes && log.len() > 1) {
            if let Some((_, b)) = log.pop_front() {
                *bytes = bytes.saturating_sub(b.len());
            }
        }
    }

    /// The most recent body with this digest.
    pub fn get(&self, digest: &str) -> Option<Bytes> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.iter()
            .rev()
            .find(|(d, _)| d.eq_ignore_ascii_case(digest))
            .map(|(_, b)| b.clone())
    }
}

/// Seconds since the Unix epoch (the API's `created_at`).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random id: `prefix` + 32 lowercase hex digits (vLLM's `resp_<uuid-hex>` form).
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    s.push_str(
        uuid::Uuid::new_v4()
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    s
}

/// Lowercase hex of the sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_evicts_oldest_beyond_entry_cap() {
        let s: BoundedStore<u32> = BoundedStore::new(3, usize::MAX);
        for i in 0..5u32 {
            s.insert(format!("k{i}"), i, 1);
        }
        assert_eq!(s.len(), 3);
        assert!(s.with("k0", |v| *v).is_none());
        assert!(s.with("k1", |v| *v).is_none());
        assert_eq!(s.with("k4", |v| *v), Some(4));
    }

    #[test]
    fn store_evicts_beyond_byte_budget_and_deletes_free_bytes() {
        let s: BoundedStore<u32> = BoundedStore::new(100, 250);
        s.insert("a".into(), 1, 100);
        s.insert("b".into(), 2, 100);
        s.insert("c".into(), 3, 100); // 300 > 250: "a" goes
        assert!(s.with("a", |_| ()).is_none());
        assert_eq!(s.remove("b"), Some(2));
        s.insert("d".into(), 4, 100); // 200 <= 250: nothing else goes
        assert_eq!(s.with("c", |v| *v), Some(3));
        assert_eq!(s.with("d", |v| *v), Some(4));
    }

    #[test]
    fn deleted_ids_do_not_grow_the_order_queue_without_bound() {
        let s: BoundedStore<u32> = BoundedStore::new(10, usize::MAX);
        for i in 0..10_000u32 {
            let k = format!("k{i}");
            s.insert(k.clone(), i, 1);
            if i % 2 == 0 {
                s.remove(&k);
            }
        }
        assert!(s.lock().order.len() <= 10);
        assert!(s.len() <= 10);
    }

    #[test]
    fn request_log_keeps_last_entries_only() {
        let log = RequestLog::new(2, usize::MAX);
        log.push("a".into(), Bytes::from_static(b"1"));
        log.push("b".into(), Bytes::from_static(b"2"));
        log.push("c".into(), Bytes::from_static(b"3"));
        assert!(log.get("a").is_none());
        assert_eq!(log.get("C").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ids_have_prefix_and_32_hex() {
        let id = new_id("resp_");
        assert_eq!(id.len(), 37);
        assert!(
            id[5..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, new_id("resp_"));
    }
}
