//! Affinity shared between router replicas through Redis: one server or a Redis Cluster, in
//! plain TCP or TLS, and what happens when it goes away and comes back.
//!
//! One router sidecar per Envoy pod makes replicas the norm, and a conversation's turns may reach
//! any of them. Every replica records `id -> cluster, host` in its own [`MemoryStore`] and in
//! Redis (with the store's TTL); a lookup answers from memory first and asks Redis only for ids
//! this replica has not seen.
//!
//! **Budgets.** Redis is never on the failure path. A command on the request path gets
//! [`Tuning::command_timeout`] (50 ms); an error or a slow answer makes the store skip Redis for
//! [`Tuning::backoff`] (1 s), answering from local knowledge (and the caller from the hash). With
//! a cluster the back-off is kept per range of 256 slots (see [`keys::RANGES`]), not for the
//! whole store: a failed master (a third of the keys with three) then costs sharing for its own
//! keys only, while the others stay shared. The price is that each of its ranges pays one failed
//! command (at most 50 ms) per back-off period instead of one for the whole store. Ranges rather
//! than nodes, because a range's node is what changes in a failover: the back-off must not
//! follow a node that no longer serves the keys, nor wait for the new slot map to be learned.
//!
//! **Cluster.** Commands go to the master of their key's slot over one connection per node, by a
//! slot map the store keeps itself (the `backend` module says why not redis-rs's cluster client).
//!
//! **Write-behind.** An id learned while its part of Redis does not answer goes into a bounded
//! queue ([`queue`]), written out (newest first) once Redis answers again, so the other replicas
//! find it after the outage.
//!
//! **Re-seed.** Marker keys ([`keys::markers`]) tell a Redis that kept its data (restarted from
//! its append-only file) from one that came back empty (or whose master lost its slots' data).
//! A replica that finds a marker gone or rewritten by another replica writes everything its
//! memory holds back into Redis, newest first, with `SET NX` and the time each entry has left, so
//! an id recorded meanwhile is never overwritten. Queue and re-seed share one pace,
//! `replay_per_second` (default 2,000 writes per second per replica, queue first), and the
//! re-seed is bounded by the memory store itself (at most its capacity, live entries only). It
//! pauses while Redis fails and resumes where it was.
//!
//! A background task on the runtime that [`SharedStore::start`] runs on does the marker checks,
//! the replay and (cluster) the slot-map upkeep; it ends when the store is dropped. Nothing here
//! depends on a gRPC or HTTP server: the ext_proc service and the in-process Envoy module (on a
//! small tokio runtime of its own) run the same store, and export its [`Counters`] as they like.

mod backend;
pub mod keys;
mod queue;
pub mod settings;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::{Cmd, FromRedisValue, RedisError};
use responses_router_core::affinity::{Location, MemoryStore, ReplayCursor, id_key};

use backend::{Backend, Watched};
use queue::WriteBehind;
pub use settings::{RedisSettings, Secrets, Tuning, check};

/// Commands sent at once by the background task (the connection pipelines them).
const BACKGROUND_CONCURRENCY: usize = 64;
/// How often "no cluster node answers" is logged while it lasts.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the store's Redis is not usable right now.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer; requests go on with local knowledge and hashing.
    #[error("redis unreachable ({0}): routing on local affinity and hashing")]
    Unreachable(String),
    /// The client could not be set up.
    #[error("cannot set up the redis client: {0}")]
    Client(#[from] RedisError),
}

/// What the store did, as plain counters a front-end exports (Prometheus in the ext_proc
/// service).
#[derive(Debug, Default)]
pub struct Counters {
    queued: AtomicU64,
    dropped: AtomicU64,
    flushed: AtomicU64,
    queue_len: AtomicU64,
    reseeds: AtomicU64,
    reseeded: AtomicU64,
    reseeding: AtomicBool,
    errors: AtomicU64,
    timeouts: AtomicU64,
    topology_changes: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ids put in the write-behind queue (Redis did not answer for them).
    pub queued: u64,
    /// Ids dropped from the full queue (oldest first): never shared unless a re-seed writes them.
    pub dropped: u64,
    /// Ids written from the queue once Redis answered.
    pub flushed: u64,
    /// Ids in the queue now.
    pub queue_len: u64,
    /// Times Redis was found emptied (a marker gone or rewritten) and a re-seed began.
    pub reseeds: u64,
    /// Ids written into Redis by re-seeds (ids Redis already held again are not counted).
    pub reseeded: u64,
    /// A re-seed is in progress.
    pub reseeding: bool,
    /// Redis commands that failed with an error.
    pub errors: u64,
    /// Redis commands that ran out of time.
    pub timeouts: u64,
    /// Changes of a cluster's slot map seen (failovers, resharding).
    pub topology_changes: u64,
}

impl Counters {
    /// The counters now.
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            queued: get(&self.queued),
            dropped: get(&self.dropped),
            flushed: get(&self.flushed),
            queue_len: get(&self.queue_len),
            reseeds: get(&self.reseeds),
            reseeded: get(&self.reseeded),
            reseeding: self.reseeding.load(Ordering::Relaxed),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            topology_changes: get(&self.topology_changes),
        }
    }
}

/// Memory first, Redis for what other replicas learned; see the crate documentation.
pub struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    local: MemoryStore,
    backend: Backend,
    prefix: String,
    ttl_seconds: u64,
    tuning: Tuning,
    replay_per_second: u32,
    addresses: Vec<String>,
    markers: Vec<String>,
    epoch: Instant,
    /// Per slot range (one for a standalone Redis): milliseconds since `epoch` before which
    /// Redis is not asked about keys of that range.
    skip_until_ms: Box<[AtomicU64]>,
    /// Some command failed and Redis has not been seen whole since.
    degraded: AtomicBool,
    /// The last failure, said plainly, for `/readyz` and logs.
    last_error: Mutex<Option<String>>,
    queue: WriteBehind,
    counters: Arc<Counters>,
}

impl SharedStore {
    /// A store sharing through the Redis of `settings`, layered around `local`. Connects lazily
    /// (the router starts and serves while Redis is still down) and spawns the background task
    /// on the current tokio runtime, so it must be called from inside one.
    pub fn start(settings: RedisSettings, local: MemoryStore) -> Result<SharedStore, StoreError> {
        install_crypto_provider();
        let backend = Backend::connect(settings.client, &settings.tuning)?;
        let cluster = backend.is_cluster();
        let ranges = if cluster { keys::RANGES } else { 1 };
        let inner = Arc::new(Inner {
            local,
            backend,
            markers: keys::markers(&settings.prefix, cluster),
            prefix: settings.prefix,
            ttl_seconds: settings.ttl.as_secs().max(1),
            tuning: settings.tuning,
            replay_per_second: settings.replay_per_second,
            addresses: settings.addresses,
            epoch: Instant::now(),
            skip_until_ms: (0..ranges).map(|_| AtomicU64::new(0)).collect(),
            degraded: AtomicBool::new(false),
            last_error: Mutex::new(None),
            queue: WriteBehind::new(settings.write_behind_capacity),
            counters: Arc::new(Counters::default()),
        });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        tracing::info!(
            redis = %inner.addresses.join(","),
            cluster,
            "affinity shared through redis"
        );
        Ok(SharedStore { inner })
    }

    /// Where `id` was served: from memory, else from Redis (≤ the command budget), else `None`
    /// (the caller hashes).
    pub async fn lookup(&self, id: &str) -> Option<Location> {
        let inner = &self.inner;
        if let Some(location) = inner.local.get(id) {
            return Some(location);
        }
        let key = keys::redis_key(&inner.prefix, id_key(id));
        let range = inner.range(&key);
        if !inner.available(range) {
            return None;
        }
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let value: Option<String> = inner.request(&key, &get).await?;
        let location = keys::decode(&value?)?;
        inner.local.put(id, &location);
        Some(location)
    }

    /// Records where `id` was served: in memory, and in Redis (≤ the command budget) or, when
    /// that part of Redis does not answer, in the write-behind queue.
    pub async fn record(&self, id: &str, location: Location) {
        self.inner.local.put(id, &location);
        self.share(id, &location).await;
    }

    /// Shares where `id` was served, for a caller that has already put it in this store's memory
    /// (the Envoy module does on its worker thread): Redis, or the write-behind queue.
    pub async fn share(&self, id: &str, location: &Location) {
        let inner = &self.inner;
        let key = id_key(id);
        let redis_key = keys::redis_key(&inner.prefix, key);
        let range = inner.range(&redis_key);
        if !inner.available(range) {
            inner.queue.push(key, &inner.counters);
            return;
        }
        let mut set = redis::cmd("SET");
        set.arg(&redis_key)
            .arg(keys::encode(location))
            .arg("EX")
            .arg(inner.ttl_seconds);
        if inner.request::<()>(&redis_key, &set).await.is_none() {
            inner.queue.push(key, &inner.counters);
        }
    }

    /// Asks Redis now (`PING`; every master of a cluster); `Err` says why it is unreachable.
    pub async fn check(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let result = tokio::time::timeout(inner.tuning.command_timeout, inner.backend.ping()).await;
        let why = match result {
            Ok(Ok(())) => {
                // Whole again: stop skipping Redis at once.
                for range in inner.skip_until_ms.iter() {
                    range.store(0, Ordering::Relaxed);
                }
                inner.recovered();
                return Ok(());
            }
            Ok(Err(e)) if e.kind() == redis::ErrorKind::ClusterConnectionNotFound => {
                // No node has told the slots yet: say what they answered instead.
                match lock(&inner.last_error).clone() {
                    Some(last) => format!("{}; {last}", explain(&e)),
                    None => explain(&e),
                }
            }
            Ok(Err(e)) => explain(&e),
            Err(_) => format!("no answer within {:?}", inner.tuning.command_timeout),
        };
        if !inner.backend.is_cluster() {
            inner.failed(0, &why, false);
        }
        Err(StoreError::Unreachable(why))
    }

    /// Whether Redis (or a part of a cluster) failed and has not been seen whole since: the
    /// router is running (at least partly) on local knowledge.
    pub fn degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// The memory store in front of Redis.
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    /// The counters, to export.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.inner.counters)
    }
}

/// Makes ring rustls' process-wide default provider, unless one is installed already. redis-rs
/// builds its TLS configs with the process default, and rustls cannot pick one by itself when a
/// dependency ever enables a second provider.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The back-off range of a Redis key.
    fn range(&self, key: &str) -> usize {
        if self.skip_until_ms.len() == 1 {
            0
        } else {
            keys::range_of_slot(keys::slot(key.as_bytes()))
        }
    }

    fn available(&self, range: usize) -> bool {
        self.now_ms() >= self.skip_until_ms[range].load(Ordering::Relaxed)
    }

    fn any_available(&self) -> bool {
        (0..self.skip_until_ms.len()).any(|r| self.available(r))
    }

    /// A command about `key` on the request path, within the command budget.
    async fn request<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> Option<T> {
        self.run(key, cmd, self.tuning.command_timeout).await
    }

    /// A command about `key` of the background task.
    async fn background<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> Option<T> {
        self.run(key, cmd, self.tuning.background_timeout).await
    }

    async fn run<T: FromRedisValue>(&self, key: &str, cmd: &Cmd, within: Duration) -> Option<T> {
        let slot = keys::slot(key.as_bytes());
        let range = self.range(key);
        match tokio::time::timeout(within, self.backend.query(cmd, slot)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(range, &explain(&e), e.is_timeout());
                None
            }
            Err(_) => {
                self.failed(range, &format!("no answer within {within:?}"), true);
                None
            }
        }
    }

    /// Skips the range for the back-off time and says so once.
    fn failed(&self, range: usize, why: &str, timeout: bool) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.tuning.backoff.as_millis()).unwrap_or(u64::MAX));
        self.skip_until_ms[range].store(until, Ordering::Relaxed);
        self.backend.failed();
        let counter = if timeout {
            &self.counters.timeouts
        } else {
            &self.counters.errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(range, timeout, "redis command failed: {why}");
        *lock(&self.last_error) = Some(why.to_owned());
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                redis = %self.addresses.join(","),
                "redis unavailable ({why}): routing on local affinity and hashing; ids learned \
                 meanwhile are queued and written once it answers"
            );
        }
    }

    /// Redis answered whole: leaves the degraded state, saying so once.
    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(
                queued = self.queue.len(),
                "redis reachable again: affinity is shared; writing the queued ids"
            );
        }
    }
}

/// What the background task remembers between ticks.
struct Maintenance {
    next_marker_check: Instant,
    /// The marker values last seen (`None`: not seen yet).
    markers_seen: Vec<Option<String>>,
    reseed: Option<Reseed>,
    next_topology_refresh: Instant,
    next_unreachable_log: Instant,
    /// Writes the replay may still make (refilled at `replay_per_second`, at most one tick's).
    credit: f64,
    last_tick: Instant,
}

/// A re-seed in progress.
struct Reseed {
    cursor: ReplayCursor,
    started: Instant,
    written_before: u64,
}

/// The background task: runs every tick until the store is dropped.
async fn maintain(store: Weak<Inner>) {
    let tick = match store.upgrade() {
        Some(inner) => inner.tuning.tick,
        None => return,
    };
    let markers = store.upgrade().map_or(0, |inner| inner.markers.len());
    let now = Instant::now();
    let mut state = Maintenance {
        next_marker_check: now,
        markers_seen: vec![None; markers],
        reseed: None,
        next_topology_refresh: now,
        next_unreachable_log: now,
        credit: 0.0,
        last_tick: now,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        inner.tick(&mut state).await;
    }
}

impl Inner {
    async fn tick(&self, state: &mut Maintenance) {
        let now = Instant::now();
        if let Backend::Cluster(cluster) = &self.backend {
            match cluster.watch(&mut state.next_topology_refresh).await {
                Watched::Nothing => {}
                Watched::Changed {
                    first: true,
                    description,
                } => {
                    tracing::info!("redis cluster slots: {description}");
                }
                Watched::Changed {
                    first: false,
                    description,
                } => {
                    self.counters
                        .topology_changes
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!("redis cluster slots moved: {description}");
                }
                Watched::Unreachable(why) => {
                    if now >= state.next_unreachable_log {
                        state.next_unreachable_log = now + UNREACHABLE_LOG_EVERY;
                        tracing::warn!("redis cluster: no node answers CLUSTER SLOTS: {why}");
                    }
                    *lock(&self.last_error) = Some(with_hint(why, false));
                    self.degraded.store(true, Ordering::Relaxed);
                }
            }
        }
        let degraded = self.degraded.load(Ordering::Relaxed);
        if (now >= state.next_marker_check || degraded) && self.any_available() {
            state.next_marker_check = now + self.tuning.marker_every;
            self.check_markers(state).await;
        }
        // Pace: `replay_per_second` writes, never more than one tick's worth at once (so no
        // second sees more than the rate plus one tick's share).
        let rate = f64::from(self.replay_per_second);
        let elapsed = now.duration_since(state.last_tick).as_secs_f64();
        state.last_tick = now;
        let most = (rate * self.tuning.tick.as_secs_f64()).max(1.0);
        state.credit = (state.credit + rate * elapsed).min(most);
        let budget = state.credit as usize;
        if budget == 0 {
            return;
        }
        let mut used = self.flush(budget).await;
        if used < budget && !self.degraded.load(Ordering::Relaxed) {
            used += self.reseed_step(state, budget - used).await;
        }
        state.credit -= used as f64;
    }

    /// Reads the markers: all there and unchanged is the normal case; one gone (or rewritten by
    /// another replica that found it gone) means Redis lost its data, and a re-seed begins.
    async fn check_markers(&self, state: &mut Maintenance) {
        let reads = self
            .markers
            .iter()
            .enumerate()
            .map(|(range, marker)| async move {
                if !self.available(range) {
                    return None;
                }
                let mut get = redis::cmd("GET");
                get.arg(marker);
                self.background::<Option<String>>(marker, &get).await
            });
        let values = join_all(reads).await;
        let mut emptied = None;
        let mut all_answered = true;
        for (range, value) in values.into_iter().enumerate() {
            match value {
                None => all_answered = false,
                Some(None) => {
                    // Gone: put one back (another replica may be quicker; then keep its value).
                    let generation = new_generation();
                    let marker = &self.markers[range];
                    let mut set = redis::cmd("SET");
                    set.arg(marker).arg(&generation).arg("NX");
                    let _: Option<Option<String>> = self.background(marker, &set).await;
                    let mut get = redis::cmd("GET");
                    get.arg(marker);
                    let now: Option<Option<String>> = self.background(marker, &get).await;
                    // Never seen before: a new Redis (or one that lost its data before this
                    // replica first looked, while every id it learned was queued anyway).
                    if state.markers_seen[range].is_some() {
                        emptied.get_or_insert_with(|| format!("marker {marker} was gone"));
                    }
                    state.markers_seen[range] = now.flatten();
                }
                Some(Some(value)) => {
                    let seen = &mut state.markers_seen[range];
                    if seen.as_ref().is_some_and(|s| *s != value) {
                        emptied.get_or_insert_with(|| {
                            format!("marker {} was rewritten", self.markers[range])
                        });
                    }
                    *seen = Some(value);
                }
            }
        }
        if all_answered {
            self.recovered();
        }
        if let Some(why) = emptied {
            let held = self.local.len();
            if held == 0 {
                tracing::info!(
                    "redis lost its data ({why}); this replica holds nothing to re-seed"
                );
                return;
            }
            self.counters.reseeds.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "redis lost its data ({why}): re-seeding the {held} ids this replica holds, \
                 newest first, at up to {} per second",
                self.replay_per_second
            );
            self.counters.reseeding.store(true, Ordering::Relaxed);
            state.reseed = Some(Reseed {
                cursor: self.local.replay_cursor(),
                started: Instant::now(),
                written_before: self.counters.reseeded.load(Ordering::Relaxed),
            });
        }
    }

    /// Writes up to `budget` queued ids (newest first); returns how many it tried.
    async fn flush(&self, budget: usize) -> usize {
        let keys = self.queue.take_newest(budget);
        if keys.is_empty() {
            return 0;
        }
        let tried = keys.len();
        let mut later = Vec::new();
        let mut writes = Vec::new();
        for key in keys {
            // Expired or evicted since: nothing to share any more.
            let Some(entry) = self.local.entry(key) else {
                continue;
            };
            let redis_key = keys::redis_key(&self.prefix, key);
            let range = self.range(&redis_key);
            if !self.available(range) {
                later.push(key);
                continue;
            }
            let mut set = redis::cmd("SET");
            set.arg(&redis_key)
                .arg(keys::encode(&entry.location))
                .arg("EX")
                .arg(entry.ttl_left.as_secs().max(1));
            writes.push((key, redis_key, set));
        }
        for chunk in writes.chunks(BACKGROUND_CONCURRENCY) {
            let results = join_all(
                chunk
                    .iter()
                    .map(|(_, redis_key, set)| self.background::<()>(redis_key, set)),
            )
            .await;
            for ((key, _, _), result) in chunk.iter().zip(results) {
                match result {
                    Some(()) => {
                        self.counters.flushed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => later.push(*key),
                }
            }
        }
        tracing::debug!(tried, put_back = later.len(), "write-behind flush");
        self.queue.done(tried, later, &self.counters);
        tried
    }

    /// Writes up to `budget` more entries of a re-seed in progress; returns how many it tried.
    async fn reseed_step(&self, state: &mut Maintenance, budget: usize) -> usize {
        let Some(reseed) = &mut state.reseed else {
            return 0;
        };
        let entries = self.local.next_entries(&mut reseed.cursor, budget);
        if entries.is_empty() {
            let written = self.counters.reseeded.load(Ordering::Relaxed) - reseed.written_before;
            tracing::info!(
                "re-seed done: {written} ids written to redis in {:.1} s",
                reseed.started.elapsed().as_secs_f64()
            );
            state.reseed = None;
            self.counters.reseeding.store(false, Ordering::Relaxed);
            return 0;
        }
        let tried = entries.len();
        for chunk in entries.chunks(BACKGROUND_CONCURRENCY) {
            let writes = chunk.iter().map(|entry| async move {
                let redis_key = keys::redis_key(&self.prefix, entry.key);
                let range = self.range(&redis_key);
                if !self.available(range) {
                    return None;
                }
                // NX: an id recorded since the outage is newer than this replica's memory.
                let mut set = redis::cmd("SET");
                set.arg(&redis_key)
                    .arg(keys::encode(&entry.location))
                    .arg("EX")
                    .arg(entry.ttl_left.as_secs().max(1))
                    .arg("NX");
                self.background::<Option<String>>(&redis_key, &set).await
            });
            for (entry, result) in chunk.iter().zip(join_all(writes).await) {
                match result {
                    Some(Some(_)) => {
                        self.counters.reseeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(None) => {} // Redis had it already.
                    None => self.queue.push(entry.key, &self.counters),
                }
            }
        }
        tried
    }
}

/// A Redis error, with a hint where the fix is in the router's settings.
fn explain(e: &RedisError) -> String {
    let auth = e.kind() == redis::ErrorKind::AuthenticationFailed;
    with_hint(e.to_string(), auth)
}

fn with_hint(text: String, auth: bool) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("unknownca")
    {
        format!(
            "{text} (TLS: check affinity.redis.tls.ca_file, that the server's certificate names \
             the address used, and the client certificate)"
        )
    } else if auth
        || lower.contains("wrongpass")
        || lower.contains("authentication")
        || lower.contains("noauth")
        || lower.contains("noperm")
    {
        format!(
            "{text} (check the ACL user and password: affinity.redis.username*, password_file or \
             password_env)"
        )
    } else {
        text
    }
}

/// A value no other replica will pick: the marker generation.
fn new_generation() -> String {
    use std::hash::{BuildHasher, RandomState};
    let seed = (std::process::id(), std::time::SystemTime::now());
    format!("{:016x}", RandomState::new().hash_one(seed))
}

/// Locks, recovering from poisoning: every critical section leaves its value consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
