//! The default affinity store: bounded, in process, with a time-to-live.
//!
//! Entries must stay small because a busy router records one per response. An id is kept as its
//! 128-bit xxh3 hash (ids are 40-60 bytes; a collision among a million entries has probability
//! ~1e-27), and a location as indexes into interned cluster and host names. Every entry lives for
//! the same TTL, so insertion order is expiry order: each shard keeps its entries in a ring buffer
//! in insertion order, which serves both TTL expiry and capacity eviction (oldest first) without
//! scanning, and a hash table of 4-byte ring positions finds them by key. That is 28 bytes per
//! entry in the ring plus about 5-10 in the table (hashbrown's `HashTable`, which hashes the
//! entries it points to, is what lets the table hold positions instead of copies of the keys).
//! Shards keep lock hold times and contention low; no lock is held across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::store::{AffinityStore, Location};

const SHARDS: usize = 16;

/// Marks a ring slot whose key was re-recorded later (or never live).
const DEAD: u16 = u16::MAX;

/// A bounded in-memory `id -> Location` map with a TTL.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    names: Mutex<Interner>,
    ttl: Duration,
    epoch: Instant,
}

/// One shard: a ring of slots in insertion order and an index from key to ring position.
struct Shard {
    index: HashTable<u32>,
    /// Grows up to `capacity`, then wraps around.
    ring: Vec<Slot>,
    capacity: usize,
    /// Ring position of the oldest slot.
    head: usize,
    /// Occupied ring positions, dead slots included.
    occupied: usize,
    /// Slots ever put. The slot put as the `n`-th (from 0) sits at ring position
    /// `n % capacity` (each put advances `head + occupied` by exactly one), and is still in the
    /// ring while `n >= appended - occupied`: what lets a [`ReplayCursor`] walk the entries that
    /// existed when it was made, newest first, without copying them or holding a lock between
    /// batches.
    appended: u64,
}

/// An entry. The key is split into `u32`s so the slot packs into 28 bytes (a `u128` would align
/// it to 32).
#[derive(Clone, Copy)]
struct Slot {
    key: [u32; 4],
    /// Index of the cluster name; [`DEAD`] for a superseded slot.
    cluster: u16,
    /// Index of the host name + 1; 0 means no host.
    host: u32,
    /// Seconds since `epoch` at which the entry expires.
    expires: u32,
}

/// One live entry, as a store layered around this one replays it elsewhere (e.g. into a Redis
/// that came back empty): the key the id is kept under ([`id_key`]), where it was served, and how
/// long it has left to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: u128,
    pub location: Location,
    pub ttl_left: Duration,
}

/// A walk over the entries a store held when the cursor was made, newest first (interleaved over
/// the shards), for [`MemoryStore::next_entries`]. Entries put later are not visited; entries
/// evicted, expired or re-recorded before the walk reaches them are skipped. It holds positions
/// only (two integers per shard), whatever the store's size.
#[derive(Debug, Clone)]
pub struct ReplayCursor {
    /// Per shard: the append index after the next one to visit (counting down).
    next: [u64; SHARDS],
    /// Per shard: the oldest append index to visit.
    stop: [u64; SHARDS],
}

impl ReplayCursor {
    /// Whether every entry has been visited.
    pub fn is_done(&self) -> bool {
        self.next.iter().zip(&self.stop).all(|(n, s)| n <= s)
    }
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
    /// A store holding at most `capacity` entries (rounded up to a multiple of the 16 shards),
    /// each for `ttl`. Each shard evicts its own oldest entry when it holds its share, so a store
    /// filling up starts evicting a little before the total reaches `capacity`. Memory is taken
    /// as entries arrive, not up front.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        // Ring positions are u32; no shard needs more (that would be 68 billion entries).
        let per_shard = capacity.div_ceil(SHARDS).clamp(1, u32::MAX as usize);
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            names: Mutex::new(Interner::default()),
            ttl,
            epoch: Instant::now(),
        }
    }

    /// Number of live (not yet evicted) entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).index.len()).sum()
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
        self.entry(id_key(id)).map(|entry| entry.location)
    }

    /// The live entry kept under `key` ([`id_key`] of its id), with its time left.
    pub fn entry(&self, key: u128) -> Option<Entry> {
        let slot = lock(self.shard(key)).get(key)?;
        self.resolve(slot, self.now())
    }

    /// A cursor over the entries held now, for [`next_entries`](Self::next_entries).
    pub fn replay_cursor(&self) -> ReplayCursor {
        let mut cursor = ReplayCursor {
            next: [0; SHARDS],
            stop: [0; SHARDS],
        };
        for (i, shard) in self.shards.iter().enumerate() {
            let shard = lock(shard);
            cursor.next[i] = shard.appended;
            cursor.stop[i] = shard.appended - shard.occupied as u64;
        }
        cursor
    }

    /// Up to `max` more entries of `cursor`'s walk, newest first within each shard, taking from
    /// every shard in turn so the newest entries of the whole store come early. Empty when the
    /// walk is done. Each shard is locked only while its share of the batch is read.
    pub fn next_entries(&self, cursor: &mut ReplayCursor, max: usize) -> Vec<Entry> {
        let now = self.now();
        let mut slots = Vec::with_capacity(max.min(4096));
        let share = max.div_ceil(SHARDS).max(1);
        while slots.len() < max && !cursor.is_done() {
            for (i, shard) in self.shards.iter().enumerate() {
                let want = share.min(max - slots.len());
                if want == 0 {
                    break;
                }
                let shard = lock(shard);
                // Entries older than this were evicted since the cursor was made.
                let oldest_left = shard.appended - shard.occupied as u64;
                cursor.stop[i] = cursor.stop[i].max(oldest_left);
                let mut taken = 0;
                while taken < want && cursor.next[i] > cursor.stop[i] {
                    cursor.next[i] -= 1;
                    let slot = shard.ring[(cursor.next[i] % shard.capacity as u64) as usize];
                    if slot.cluster != DEAD && slot.expires > now {
                        slots.push(slot);
                        taken += 1;
                    }
                }
            }
        }
        slots
            .into_iter()
            .filter_map(|slot| self.resolve(slot, now))
            .collect()
    }

    /// The entry a live slot holds, with its names looked up.
    fn resolve(&self, slot: Slot, now: u32) -> Option<Entry> {
        if slot.cluster == DEAD || slot.expires <= now {
            return None;
        }
        let names = lock(&self.names);
        let [a, b, c, d] = slot.key;
        Some(Entry {
            key: u128::from(a) | u128::from(b) << 32 | u128::from(c) << 64 | u128::from(d) << 96,
            location: Location {
                cluster: names.clusters.get(usize::from(slot.cluster))?.clone(),
                host: slot
                    .host
                    .checked_sub(1)
                    .and_then(|h| names.hosts.get(h as usize).cloned()),
            },
            ttl_left: Duration::from_secs(u64::from(slot.expires - now)),
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
        let key = id_key(id);
        lock(self.shard(key)).put(
            Slot {
                key: split(key),
                cluster,
                host,
                expires: now.saturating_add(ttl),
            },
            now,
        );
    }
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Shard {
            index: HashTable::new(),
            ring: Vec::new(),
            capacity,
            head: 0,
            occupied: 0,
            appended: 0,
        }
    }

    fn get(&self, key: u128) -> Option<Slot> {
        let key = split(key);
        let ring = &self.ring;
        self.index
            .find(table_hash(key), |&pos| ring[pos as usize].key == key)
            .map(|&pos| ring[pos as usize])
    }

    fn put(&mut self, slot: Slot, now: u32) {
        // Make room: drop the oldest slots while they are dead or expired, or the ring is full.
        while self.occupied > 0 {
            let oldest = self.ring[self.head];
            if !(self.occupied == self.capacity || oldest.cluster == DEAD || oldest.expires <= now)
            {
                break;
            }
            self.pop_oldest();
        }
        let pos = (self.head + self.occupied) % self.capacity;
        if pos == self.ring.len() {
            // Grow geometrically, but never past the capacity, so a full shard wastes nothing.
            if self.ring.len() == self.ring.capacity() {
                let more = self.ring.len().max(16).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
            self.ring.push(slot);
        } else {
            self.ring[pos] = slot;
        }
        self.occupied += 1;
        self.appended += 1;
        // `pos` < capacity <= u32::MAX (see `MemoryStore::new`).
        let pos = pos as u32;
        let Shard { index, ring, .. } = self;
        let hash = table_hash(slot.key);
        match index.find_mut(hash, |&p| ring[p as usize].key == slot.key) {
            Some(existing) => {
                // Re-recorded: the older slot stays in the ring as a dead one until it is the oldest.
                ring[*existing as usize].cluster = DEAD;
                *existing = pos;
            }
            None => {
                index.insert_unique(hash, pos, |&p| table_hash(ring[p as usize].key));
            }
        }
    }

    fn pop_oldest(&mut self) {
        let oldest = self.ring[self.head];
        if oldest.cluster != DEAD {
            let head = self.head as u32;
            if let Ok(entry) = self
                .index
                .find_entry(table_hash(oldest.key), |&p| p == head)
            {
                entry.remove();
            }
        }
        self.head = (self.head + 1) % self.capacity;
        self.occupied -= 1;
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

/// The 128-bit key an id is kept under (its xxh3 hash). Stores layered around this one (Redis)
/// key their entries by it too, because a replay from memory has only the key, not the id.
pub fn id_key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

fn split(key: u128) -> [u32; 4] {
    [
        key as u32,
        (key >> 32) as u32,
        (key >> 64) as u32,
        (key >> 96) as u32,
    ]
}

/// The table's hash: the key's high half (the low bits already chose the shard).
fn table_hash(key: [u32; 4]) -> u64 {
    u64::from(key[2]) | (u64::from(key[3]) << 32)
}

/// Locks, recovering from poisoning: every critical section leaves the maps consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AffinityStore for MemoryStore {
    fn lookup(&self, id: &str) -> Option<Location> {
        self.get(id)
    }

    fn record(&self, id: &str, location: &Location) {
        self.put(id, location);
    }

    fn len(&self) -> usize {
        MemoryStore::len(self)
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
        // Re-recording one id many times does not grow the store: dead slots are reused.
        for _ in 0..10_000 {
            store.put("hot", &loc("c", None));
        }
        let slots: usize = store.shards.iter().map(|s| lock(s).ring.len()).sum();
        assert!(slots <= SHARDS * 10, "ring bounded: {slots}");
        assert_eq!(store.get("hot"), Some(loc("c", None)));
    }

    #[test]
    fn entries_expire() {
        let store = MemoryStore::new(100, Duration::from_secs(0));
        store.put("resp_a", &loc("c", None));
        assert_eq!(store.get("resp_a"), None, "a zero TTL keeps nothing");
    }

    #[test]
    fn expired_entries_are_dropped_to_make_room() {
        let mut shard = Shard::new(4);
        let slot = |k: u128, expires| Slot {
            key: split(k),
            cluster: 0,
            host: 0,
            expires,
        };
        shard.put(slot(1, 10), 0);
        shard.put(slot(2, 20), 0);
        shard.put(slot(3, 30), 15);
        assert!(shard.get(1).is_none(), "expired by the time 3 arrived");
        assert!(shard.get(2).is_some());
        assert_eq!(shard.index.len(), 2);
    }

    proptest::proptest! {
        /// Without expiry, a shard holds exactly the keys whose latest record is among the last
        /// `capacity` records, each with its latest value, however records wrap the ring.
        #[test]
        fn shard_matches_a_fifo_model(
            capacity in 1usize..8,
            records in proptest::collection::vec((0u128..12, 0u16..3), 0..200),
        ) {
            let mut shard = Shard::new(capacity);
            for &(key, cluster) in &records {
                shard.put(Slot { key: split(key), cluster, host: 0, expires: u32::MAX }, 0);
            }
            let start = records.len().saturating_sub(capacity);
            for key in 0u128..12 {
                let latest = records.iter().rposition(|&(k, _)| k == key);
                let expected = latest.filter(|&i| i >= start).map(|i| records[i].1);
                proptest::prop_assert_eq!(shard.get(key).map(|s| s.cluster), expected, "key {}", key);
            }
            proptest::prop_assert!(shard.ring.len() <= capacity);
        }
    }

    #[test]
    fn replay_walks_what_was_held_newest_first() {
        let store = MemoryStore::new(SHARDS * 100, Duration::from_secs(60));
        for i in 0..500 {
            store.put(
                &format!("resp_{i}"),
                &loc(if i % 2 == 0 { "a" } else { "b" }, None),
            );
        }
        store.put("resp_7", &loc("moved", Some("10.0.0.1:80"))); // re-recorded: one entry
        let mut cursor = store.replay_cursor();
        // Put after the cursor was made: not part of the walk.
        store.put("late", &loc("a", None));
        let mut seen = Vec::new();
        loop {
            let batch = store.next_entries(&mut cursor, 37);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 37);
            seen.extend(batch);
        }
        assert!(cursor.is_done());
        assert_eq!(
            seen.len(),
            500,
            "every id once, the re-recorded one with its new place"
        );
        let keys: std::collections::HashSet<u128> = seen.iter().map(|e| e.key).collect();
        assert_eq!(keys.len(), 500);
        assert!(!keys.contains(&id_key("late")));
        let moved = seen.iter().find(|e| e.key == id_key("resp_7")).unwrap();
        assert_eq!(moved.location, loc("moved", Some("10.0.0.1:80")));
        assert!(
            moved.ttl_left <= Duration::from_secs(60) && moved.ttl_left >= Duration::from_secs(59)
        );
        // Newest first: the first batch holds the newest entry, the last batch the oldest.
        assert!(seen[..37].iter().any(|e| e.key == id_key("resp_7")));
        assert!(seen[..37].iter().any(|e| e.key == id_key("resp_499")));
        let oldest = seen.iter().position(|e| e.key == id_key("resp_0")).unwrap();
        assert!(oldest > seen.len() / 2, "the oldest comes late: {oldest}");
        assert_eq!(
            store.entry(id_key("resp_8")).map(|e| e.location),
            Some(loc("a", None))
        );
        assert_eq!(store.entry(id_key("nobody")), None);
    }

    #[test]
    fn replay_skips_what_was_evicted_meanwhile() {
        let store = MemoryStore::new(SHARDS * 10, Duration::from_secs(60));
        for i in 0..SHARDS * 10 {
            store.put(&format!("old_{i}"), &loc("a", None));
        }
        let mut cursor = store.replay_cursor();
        let first = store.next_entries(&mut cursor, SHARDS);
        assert_eq!(first.len(), SHARDS);
        // A full turn of the ring evicts every entry the walk has not reached.
        for i in 0..SHARDS * 100 {
            store.put(&format!("new_{i}"), &loc("b", None));
        }
        assert!(store.next_entries(&mut cursor, 1000).is_empty());
        assert!(cursor.is_done());
    }

    #[test]
    fn usable_through_the_trait() {
        let store: std::sync::Arc<dyn AffinityStore> =
            std::sync::Arc::new(MemoryStore::new(10, Duration::from_secs(60)));
        store.record("resp_x", &loc("code", None));
        assert_eq!(store.lookup("resp_x"), Some(loc("code", None)));
        assert_eq!(store.len(), 1);
    }
}
