//! Affinity shared between router replicas through Redis.
//!
//! One router sidecar per Envoy pod makes replicas the norm, and a conversation's turns may reach
//! any of them. Every replica records `id -> cluster, host` in Redis (with the store's TTL) and in
//! its own [`MemoryStore`]; a lookup answers from memory first and asks Redis only for ids this
//! replica has not seen. Redis is never on the failure path: a Redis error or a slow answer (over
//! [`REDIS_TIMEOUT`]) makes the store skip Redis for [`BACKOFF`], answering from local knowledge
//! (and the caller from the hash), and sharing resumes by itself when Redis answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tonic::async_trait;

use responses_router_core::affinity::{Location, MemoryStore};

use super::Store;

/// Longest wait for one Redis command on the request path.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// How long Redis is skipped after a failure before it is tried again.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Memory first, Redis for what other replicas learned.
pub struct RedisStore {
    local: MemoryStore,
    redis: ConnectionManager,
    prefix: String,
    ttl_seconds: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked.
    skip_until_ms: AtomicU64,
    /// Whether the last Redis command failed (for health and logs).
    degraded: AtomicBool,
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis url: {0}")]
pub struct RedisUrlError(#[from] redis::RedisError);

impl RedisStore {
    /// A store sharing through the Redis at `url`. Connects lazily: a router starts (and serves)
    /// while Redis is still down.
    pub fn new(
        url: &str,
        prefix: &str,
        local: MemoryStore,
        ttl: Duration,
    ) -> Result<Self, RedisUrlError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            local,
            redis,
            prefix: prefix.to_owned(),
            ttl_seconds: ttl.as_secs().max(1),
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
        })
    }

    /// Whether the last Redis command failed: the router is running on local knowledge.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(&self) -> bool {
        self.now_ms() >= self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn outcome<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match result {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis reachable again: affinity is shared");
                }
                Some(value)
            }
            Ok(Err(e)) => {
                self.fail(&e.to_string());
                None
            }
            Err(_) => {
                self.fail("timed out");
                None
            }
        }
    }

    fn fail(&self, why: &str) {
        let backoff = u64::try_from(BACKOFF.as_millis()).unwrap_or(u64::MAX);
        self.skip_until_ms
            .store(self.now_ms().saturating_add(backoff), Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!("redis unavailable ({why}): routing on local affinity and hashing");
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

/// `cluster` or `cluster\thost`: tabs cannot occur in cluster names or `ip:port`.
fn encode(location: &Location) -> String {
    match &location.host {
        Some(host) => format!("{}\t{host}", location.cluster),
        None => location.cluster.clone(),
    }
}

fn decode(value: &str) -> Option<Location> {
    let (cluster, host) = match value.split_once('\t') {
        Some((c, h)) => (c, Some(h.to_owned())),
        None => (value, None),
    };
    (!cluster.is_empty()).then(|| Location {
        cluster: cluster.to_owned(),
        host,
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn lookup(&self, id: &str) -> Option<Location> {
        if let Some(location) = self.local.get(id) {
            return Some(location);
        }
        if !self.available() {
            return None;
        }
        let mut redis = self.redis.clone();
        let key = self.key(id);
        let result = tokio::time::timeout(REDIS_TIMEOUT, redis.get::<_, Option<String>>(key)).await;
        let location = self.outcome(result).flatten().as_deref().and_then(decode)?;
        self.local.put(id, &location);
        Some(location)
    }

    async fn record(&self, id: &str, location: Location) {
        self.local.put(id, &location);
        if !self.available() {
            return;
        }
        let mut redis = self.redis.clone();
        let (key, value) = (self.key(id), encode(&location));
        let result = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis.set_ex::<_, _, ()>(key, value, self.ttl_seconds),
        )
        .await;
        self.outcome(result);
    }

    async fn check(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let ping = redis::cmd("PING");
        let result =
            tokio::time::timeout(REDIS_TIMEOUT, ping.query_async::<String>(&mut redis)).await;
        match self.outcome(result) {
            Some(_) => {
                // Reachable again: stop skipping Redis at once.
                self.skip_until_ms.store(0, Ordering::Relaxed);
                Ok(())
            }
            None => Err("redis unreachable: routing on local affinity and hashing".to_owned()),
        }
    }

    fn local_entries(&self) -> usize {
        self.local.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        for location in [
            Location {
                cluster: "code".into(),
                host: None,
            },
            Location {
                cluster: "stories".into(),
                host: Some("10.0.0.7:8000".into()),
            },
            Location {
                cluster: "v6".into(),
                host: Some("[::1]:8000".into()),
            },
        ] {
            assert_eq!(decode(&encode(&location)), Some(location));
        }
        assert_eq!(decode(""), None);
    }

    #[tokio::test]
    async fn redis_down_degrades_to_local_knowledge_quickly() {
        // Nothing listens on port 1: every Redis command fails at once.
        let local = MemoryStore::new(100, Duration::from_secs(60));
        let store =
            RedisStore::new("redis://127.0.0.1:1/", "t:", local, Duration::from_secs(60)).unwrap();
        let here = Location {
            cluster: "code".into(),
            host: None,
        };
        let started = Instant::now();
        store.record("resp_local", here.clone()).await;
        assert!(store.degraded());
        assert_eq!(
            store.lookup("resp_local").await,
            Some(here),
            "local knowledge still answers"
        );
        assert_eq!(store.lookup("resp_elsewhere").await, None);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no request waits on a dead Redis"
        );
    }
}
