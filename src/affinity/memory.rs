//! The default affinity store: bounded, in process, with a time-to-live.
//!
//! Entries must stay small because a busy router records one per response. An id is kept as its
//! 128-bit xxh3 hash (ids are 40-60 bytes; a collision among a million entries has probability
//! ~1e-27), and a location as indexes into interned cluster and host names. Every entry lives for
//! the same TTL, so insertion order is expiry order: one FIFO queue per shard serves both TTL
//! expiry and capacity eviction (oldest first) without scanning. Shards keep lock hold times and
//! contention low; no lock is held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::async_trait;

use super::store::{AffinityStore, Location};

const SHARDS: usize = 16;

/// A bounded in-memory `id -> Location` map with a TTL.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    names: Mutex<Interner>,
    per_shard_capacity: usize,
    ttl: Duration,
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u128, Entry>,
    /// (key, expiry) in insertion order; stale pairs (key re-recorded later) are skipped.
    order: VecDeque<(u128, u32)>,
}

#[derive(Clone, Copy)]
struct Entry {
    cluster: u16,
    /// Index of the host name + 1; 0 means no host.
    host: u32,
    /// Seconds since `epoch` at which the entry expires.
    expires: u32,
}

/// Cluster and host names, stored once each.
#[derive(Default)]
struct Interner {
    clusters: Vec<String>,
    hosts: Vec<String>,
    cluster_ids: HashMap<String, u16>,
    host_ids: HashMap<String, u32>,
}

impl MemoryStore {
    /// A store holding at most `capacity` entries, each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            names: Mutex::new(Interner::default()),
            per_shard_capacity: capacity.div_ceil(SHARDS).max(1),
            ttl,
            epoch: Instant::now(),
        }
    }

    /// Number of live (not yet evicted) entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn shard(&self, key: u128) -> &Mutex<Shard> {
        &self.shards[(key as usize) % SHARDS]
    }

    /// Synchronous lookup (the store never waits on I/O).
    pub fn get(&self, id: &str) -> Option<Location> {
        let key = key_of(id);
        let entry = {
            let shard = lock(self.shard(key));
            *shard.map.get(&key)?
        };
        if entry.expires <= self.now() {
            return None;
        }
        let names = lock(&self.names);
        Some(Location {
            cluster: names.clusters.get(usize::from(entry.cluster))?.clone(),
            host: entry
                .host
                .checked_sub(1)
                .and_then(|h| names.hosts.get(h as usize).cloned()),
        })
    }

    /// Synchronous insert; evicts expired and, when full, the oldest entries.
    pub fn put(&self, id: &str, location: &Location) {
        let (cluster, host) = {
            let mut names = lock(&self.names);
            let Some(cluster) = names.cluster(&location.cluster) else {
                return; // More distinct clusters than any config has: refuse rather than alias.
            };
            let host = match &location.host {
                Some(h) => names.host(h).map_or(0, |i| i + 1),
                None => 0,
            };
            (cluster, host)
        };
        let now = self.now();
        let ttl = u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX);
        let expires = now.saturating_add(ttl);
        let key = key_of(id);
        let mut shard = lock(self.shard(key));
        shard.map.insert(
            key,
            Entry {
                cluster,
                host,
                expires,
            },
        );
        shard.order.push_back((key, expires));
        while let Some(&(old, old_expires)) = shard.order.front() {
            let full = shard.map.len() > self.per_shard_capacity;
            let expired = old_expires <= now;
            // Queue entries whose key was re-recorded later are stale: drop them silently.
            let stale = shard.map.get(&old).is_none_or(|e| e.expires != old_expires);
            if !(full || expired || stale || shard.order.len() > 2 * self.per_shard_capacity) {
                break;
            }
            shard.order.pop_front();
            if !stale {
                shard.map.remove(&old);
            }
        }
    }
}

impl Interner {
    fn cluster(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.cluster_ids.get(name) {
            return Some(id);
        }
        let id = u16::try_from(self.clusters.len()).ok()?;
        self.clusters.push(name.to_owned());
        self.cluster_ids.insert(name.to_owned(), id);
        Some(id)
    }

    fn host(&mut self, name: &str) -> Option<u32> {
        if let Some(&id) = self.host_ids.get(name) {
            return Some(id);
        }
        let id = u32::try_from(self.hosts.len())
            .ok()
            .filter(|&i| i < u32::MAX - 1)?;
        self.hosts.push(name.to_owned());
        self.host_ids.insert(name.to_owned(), id);
        Some(id)
    }
}

fn key_of(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// Locks, recovering from poisoning: every critical section leaves the maps consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl AffinityStore for MemoryStore {
    async fn lookup(&self, id: &str) -> Option<Location> {
        self.get(id)
    }

    async fn record(&self, id: &str, location: Location) {
        self.put(id, &location);
    }

    fn local_entries(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(cluster: &str, host: Option<&str>) -> Location {
        Location {
            cluster: cluster.into(),
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn records_and_finds_with_and_without_host() {
        let store = MemoryStore::new(100, Duration::from_secs(60));
        store.put("resp_a", &loc("code", Some("10.0.0.1:8000")));
        store.put("resp_b", &loc("general", None));
        assert_eq!(
            store.get("resp_a"),
            Some(loc("code", Some("10.0.0.1:8000")))
        );
        assert_eq!(store.get("resp_b"), Some(loc("general", None)));
        assert_eq!(store.get("resp_c"), None);
        store.put("resp_a", &loc("general", None));
        assert_eq!(
            store.get("resp_a"),
            Some(loc("general", None)),
            "re-recording moves the id"
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn capacity_evicts_the_oldest_first() {
        let store = MemoryStore::new(SHARDS * 10, Duration::from_secs(60));
        for i in 0..SHARDS * 100 {
            store.put(&format!("resp_{i}"), &loc("c", None));
        }
        assert!(store.len() <= SHARDS * 10, "bounded: {}", store.len());
        assert!(
            store.get(&format!("resp_{}", SHARDS * 100 - 1)).is_some(),
            "newest kept"
        );
        assert!(store.get("resp_0").is_none(), "oldest evicted");
        // Re-recording one id many times does not grow the queue without bound.
        for _ in 0..10_000 {
            store.put("hot", &loc("c", None));
        }
        let queued: usize = store.shards.iter().map(|s| lock(s).order.len()).sum();
        assert!(
            queued <= 2 * SHARDS * 10 + SHARDS,
            "queue bounded: {queued}"
        );
    }

    #[test]
    fn entries_expire() {
        let store = MemoryStore::new(100, Duration::from_secs(0));
        store.put("resp_a", &loc("c", None));
        assert_eq!(store.get("resp_a"), None, "a zero TTL keeps nothing");
    }

    #[tokio::test]
    async fn usable_through_the_trait() {
        let store: std::sync::Arc<dyn AffinityStore> =
            std::sync::Arc::new(MemoryStore::new(10, Duration::from_secs(60)));
        store.record("resp_x", loc("code", None)).await;
        assert_eq!(store.lookup("resp_x").await, Some(loc("code", None)));
    }
}
