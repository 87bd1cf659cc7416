//! Closing the one window in which a continuation could overtake what the router learns.
//!
//! An SSE response's id is learned by the observer filter, which Envoy never waits for: the
//! client may read the whole stream and send its next turn while the observer's copy of the first
//! event is still queued in this process (seen under heavy CPU load: the next turn missed the
//! store, was placed by hash and lost its state). The routing stream, which Envoy *does* wait for,
//! sees the SSE response headers before the client does, so it [`opens`](PendingIds::open) an
//! entry there; the observer [`closes`](PendingIds::close) it once the id is recorded or cannot
//! be. (The observer sits before the routing filter on the response path, so its close may come
//! first: it is remembered, and the open that follows is dropped.) A lookup that misses waits until every entry opened before it is closed, at most
//! [`SETTLE_LIMIT`], then asks the store again ([`SettlingStore`]). Entries live from the response
//! headers to the first event, usually well under a millisecond, so a miss almost never waits, and
//! a lookup that hits never does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::async_trait;

use responses_router_core::affinity::Location;

use crate::store::Store;

/// Longest a missed lookup waits for pending ids to be learned.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(250);
/// Entries older than this are dropped (an observer that never ran cannot leave them for ever).
const MAX_AGE: Duration = Duration::from_secs(60);

/// Streamed responses whose id the observer has not recorded yet, in the order they started.
#[derive(Default)]
pub struct PendingIds {
    inner: Mutex<Inner>,
    closed: Notify,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Sequence number -> (request id, opened at).
    open: BTreeMap<u64, (String, Instant)>,
    by_request: HashMap<String, u64>,
    /// Closed before they were opened: request id -> closed at.
    closed_early: HashMap<String, Instant>,
    /// Size of `closed_early` at which it is next swept (doubles, so sweeps cost O(1) amortized).
    sweep_at: usize,
}

impl PendingIds {
    /// A streamed response to request `request_id` is about to reach the client.
    pub fn open(&self, request_id: &str) {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        inner.expire(now);
        if inner.closed_early.remove(request_id).is_some() {
            return;
        }
        let seq = inner.next;
        inner.next += 1;
        if let Some(old) = inner.by_request.insert(request_id.to_owned(), seq) {
            inner.open.remove(&old);
        }
        inner.open.insert(seq, (request_id.to_owned(), now));
    }

    /// The id of `request_id`'s response was recorded, or will never be.
    pub fn close(&self, request_id: &str) {
        let mut inner = lock(&self.inner);
        match inner.by_request.remove(request_id) {
            Some(seq) => {
                inner.open.remove(&seq);
                drop(inner);
                self.closed.notify_waiters();
            }
            None => {
                let now = Instant::now();
                inner.expire(now);
                inner.closed_early.insert(request_id.to_owned(), now);
            }
        }
    }

    /// Waits until every entry open now is closed, at most `limit`. Returns whether there was
    /// anything to wait for.
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let horizon = {
            let inner = lock(&self.inner);
            if inner.open.is_empty() {
                return false;
            }
            inner.next
        };
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Register before checking, so a close between the check and the wait is not missed.
            closed.as_mut().enable();
            if lock(&self.inner).open.range(..horizon).next().is_none() {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return true;
            }
        }
    }

    /// Entries open now (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.inner).open.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.open.first_entry() {
            if now.duration_since(entry.get().1) < MAX_AGE {
                break;
            }
            let (request, _) = entry.remove();
            self.by_request.remove(&request);
        }
        if self.closed_early.len() > self.sweep_at {
            self.closed_early
                .retain(|_, closed| now.duration_since(*closed) < MAX_AGE);
            self.sweep_at = (2 * self.closed_early.len()).max(64);
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The affinity store as routing sees it: a miss first lets pending streamed ids be learned.
pub struct SettlingStore {
    inner: Arc<dyn Store>,
    pending: Arc<PendingIds>,
}

impl SettlingStore {
    /// Wraps `inner`; misses wait on `pending`.
    pub fn new(inner: Arc<dyn Store>, pending: Arc<PendingIds>) -> Self {
        SettlingStore { inner, pending }
    }
}

#[async_trait]
impl Store for SettlingStore {
    async fn lookup(&self, id: &str) -> Option<Location> {
        if let Some(found) = self.inner.lookup(id).await {
            return Some(found);
        }
        if self.pending.settle(SETTLE_LIMIT).await {
            self.inner.lookup(id).await
        } else {
            None
        }
    }

    async fn record(&self, id: &str, location: Location) {
        self.inner.record(id, location).await;
    }

    async fn check(&self) -> Result<(), String> {
        self.inner.check().await
    }

    fn local_entries(&self) -> usize {
        self.inner.local_entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use responses_router_core::affinity::MemoryStore;

    fn loc() -> Location {
        Location {
            cluster: "code".into(),
            host: None,
        }
    }

    #[tokio::test]
    async fn a_miss_waits_for_a_pending_stream_and_then_finds_its_id() {
        let pending = Arc::new(PendingIds::default());
        let memory = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
        let store = SettlingStore::new(memory.clone(), Arc::clone(&pending));
        pending.open("req-1");
        let learner = {
            let (memory, pending) = (memory.clone(), Arc::clone(&pending));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                memory.put("resp_1", &loc());
                pending.close("req-1");
            })
        };
        assert_eq!(store.lookup("resp_1").await, Some(loc()));
        learner.await.unwrap();
        assert!(pending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_with_nothing_pending_does_not_wait() {
        let pending = Arc::new(PendingIds::default());
        let store = SettlingStore::new(
            Arc::new(MemoryStore::new(100, Duration::from_secs(60))),
            Arc::clone(&pending),
        );
        // The paused clock only moves when something waits on it.
        let started = tokio::time::Instant::now();
        assert_eq!(store.lookup("resp_unknown").await, None);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!pending.settle(SETTLE_LIMIT).await, "nothing to wait for");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_and_ignores_streams_opened_later() {
        let pending = PendingIds::default();
        pending.open("stuck");
        let started = tokio::time::Instant::now();
        assert!(pending.settle(SETTLE_LIMIT).await);
        assert_eq!(started.elapsed(), SETTLE_LIMIT, "gave up at the limit");

        // Only entries opened before the lookup count: one opened while waiting does not extend it.
        pending.close("stuck");
        pending.open("old");
        let second = tokio::time::Instant::now();
        let waiter = async {
            pending.settle(SETTLE_LIMIT).await;
            tokio::time::Instant::now()
        };
        let closer = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            pending.open("new");
            pending.close("old");
        };
        let (settled_at, ()) = tokio::join!(waiter, closer);
        assert_eq!(
            settled_at.duration_since(second),
            Duration::from_millis(5),
            "settled when `old` closed"
        );
        assert_eq!(
            pending.len(),
            1,
            "`new` is still open and was not waited for"
        );
    }

    #[test]
    fn reopening_replaces_and_a_close_before_the_open_cancels_it() {
        let pending = PendingIds::default();
        pending.open("a");
        pending.open("a");
        assert_eq!(pending.len(), 1);
        pending.close("a");
        assert!(pending.is_empty());
        // The observer finished first: the routing stream's open must not linger.
        pending.close("b");
        pending.open("b");
        assert!(pending.is_empty());
        pending.open("b");
        assert_eq!(pending.len(), 1, "only one open was cancelled");
    }
}
