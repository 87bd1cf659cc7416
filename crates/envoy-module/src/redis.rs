//! The module's shared store: the service's own Redis store (`responses-router-redis`: memory
//! first, 50 ms per command, back-off, write-behind and re-seed, Redis Cluster, TLS) run on a
//! thread of its own, with a single-threaded tokio runtime. Worker threads only hand it work and
//! are called back (then resumed through Envoy's scheduler), so none ever waits on the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use responses_router_core::affinity::{AffinityStore, Location, MemoryStore};
use responses_router_redis::{RedisSettings, SharedStore, Stats};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::shared::{Done, Remote};

/// How often the store's thread asks Redis whether it answers (`PING`), for the `store_up` gauge
/// and to end a back-off as soon as Redis is back.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The shared store and the thread that runs it (stopped when this is dropped).
pub struct RedisRemote {
    store: Arc<SharedStore>,
    runtime: Handle,
    up: Arc<AtomicBool>,
    /// Dropping it ends the thread's runtime (and every task on it).
    _stop: oneshot::Sender<()>,
}

impl RedisRemote {
    /// Starts the store's thread. Nothing here touches the network (the store connects lazily),
    /// so Envoy's main thread is not held up by a Redis that is down.
    pub fn start(settings: RedisSettings, local: MemoryStore) -> Result<Arc<RedisRemote>, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rr-redis".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("no runtime for the Redis store: {e}")));
                        return;
                    }
                };
                let handle = runtime.handle().clone();
                runtime.block_on(async move {
                    let store = match SharedStore::start(settings, local) {
                        Ok(store) => Arc::new(store),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("affinity.redis: {e}")));
                            return;
                        }
                    };
                    // Down until a check says otherwise: a gauge that read "up" before Redis
                    // ever answered would tell an operator (or a readiness probe) too much.
                    let up = Arc::new(AtomicBool::new(false));
                    let (stop_tx, mut stop_rx) = oneshot::channel();
                    let remote = RedisRemote {
                        store: Arc::clone(&store),
                        runtime: handle,
                        up: Arc::clone(&up),
                        _stop: stop_tx,
                    };
                    if ready_tx.send(Ok(Arc::new(remote))).is_err() {
                        return;
                    }
                    loop {
                        let ok = store.check().await.is_ok();
                        up.store(ok, Ordering::Relaxed);
                        tokio::select! {
                            _ = &mut stop_rx => return,
                            () = tokio::time::sleep(CHECK_EVERY) => {}
                        }
                    }
                });
            })
            .map_err(|e| format!("no thread for the Redis store: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the Redis store's thread ended at start".to_owned())?
    }

    /// Whether Redis answered the last check, and what the store counted so far.
    pub fn state(&self) -> (bool, Stats) {
        (
            self.up.load(Ordering::Relaxed),
            self.store.counters().snapshot(),
        )
    }
}

impl Remote for RedisRemote {
    fn lookup(&self, id: &str, done: Done<Option<Location>>) {
        let store = Arc::clone(&self.store);
        let id = id.to_owned();
        self.runtime
            .spawn(async move { done(store.lookup(&id).await) });
    }

    /// The worker has put the id in memory already (`AffinityStore::record`): only Redis is left.
    fn record(&self, id: &str, location: &Location, done: Done<()>) {
        let store = Arc::clone(&self.store);
        let id = id.to_owned();
        let location = location.clone();
        self.runtime.spawn(async move {
            store.share(&id, &location).await;
            done(());
        });
    }
}

/// The memory in front of Redis, which the worker threads consult and fill directly (a hit
/// costs no trip to the store's thread).
impl AffinityStore for RedisRemote {
    fn lookup(&self, id: &str) -> Option<Location> {
        self.store.local().get(id)
    }

    fn record(&self, id: &str, location: &Location) {
        self.store.local().put(id, location);
    }

    fn len(&self) -> usize {
        self.store.local().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use responses_router_core::config;
    use std::sync::mpsc;
    use std::time::Instant;

    fn settings(url: &str) -> RedisSettings {
        let yaml = format!(
            "default_model: a\nmodels: [{{ name: a, clusters: [{{ name: c1 }}] }}]\n\
             affinity: {{ redis_url: \"{url}\" }}\n"
        );
        let compiled = config::from_yaml(&yaml).expect("a routing YAML with a Redis URL");
        RedisSettings::from_config(&compiled.settings.affinity)
            .expect("valid Redis settings")
            .expect("Redis configured")
    }

    #[test]
    fn a_redis_that_does_not_answer_costs_a_bounded_wait_and_memory_still_answers() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let remote = RedisRemote::start(
            settings(&format!("redis://127.0.0.1:{port}/")),
            MemoryStore::new(1000, Duration::from_secs(60)),
        )
        .expect("starts without reaching Redis");
        let here = Location {
            cluster: "general".into(),
            host: None,
        };
        AffinityStore::record(remote.as_ref(), "resp_known", &here);
        assert_eq!(
            AffinityStore::lookup(remote.as_ref(), "resp_known"),
            Some(here.clone())
        );

        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        Remote::lookup(
            remote.as_ref(),
            "resp_unknown",
            Box::new(move |found| {
                let _ = tx.send(found);
            }),
        );
        let found = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the callback runs");
        assert_eq!(found, None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // As the filter learns: memory on the worker first, then the shared write.
        AffinityStore::record(remote.as_ref(), "resp_new", &here);
        let (tx, rx) = mpsc::channel();
        Remote::record(
            remote.as_ref(),
            "resp_new",
            &here,
            Box::new(move |()| {
                let _ = tx.send(());
            }),
        );
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the write gives up and calls back");
        // Queued for when Redis answers, and known in memory meanwhile.
        assert_eq!(
            AffinityStore::lookup(remote.as_ref(), "resp_new"),
            Some(here)
        );
        // The write's failure, then the check's.
        let failures = |stats: &Stats| stats.errors + stats.timeouts;
        let deadline = Instant::now() + Duration::from_secs(5);
        while failures(&remote.state().1) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (up, stats) = remote.state();
        assert!(!up, "the check finds Redis down");
        assert!(failures(&stats) >= 2, "{stats:?}");
        assert!(stats.queued >= 1, "{stats:?}");
    }
}
