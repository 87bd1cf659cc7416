//! What every worker thread shares for one filter config: the routing table in force (swapped as
//! a whole on reload) and the affinity store. Built when Envoy loads the filter config (also under
//! `envoy --mode validate`, so a broken routing YAML fails validation with the router's own
//! messages), and hot-reloaded from the file by a background thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use responses_router_core::affinity::{AffinityStore, MemoryStore, NoStore};
use responses_router_core::config::{self, Compiled, RoutingTable};
use responses_router_redis::{RedisSettings, Stats};
use serde::Deserialize;

use crate::redis::RedisRemote;
use crate::shared::Remote;

/// The filter's own config (`filter_config` in Envoy's YAML): a `google.protobuf.Struct` (Envoy
/// hands it over as JSON) or a `StringValue` holding the path of the routing YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleConfig {
    /// Path of the routing YAML (hot-reloaded when it changes).
    #[serde(default)]
    routing_yaml: Option<PathBuf>,
    /// The routing YAML itself, inline (never reloaded).
    #[serde(default)]
    routing_yaml_inline: Option<String>,
    /// Seconds between checks of `routing_yaml` for changes (0: never).
    #[serde(default = "default_poll_seconds")]
    config_poll_seconds: u64,
}

fn default_poll_seconds() -> u64 {
    5
}

/// State shared by all of Envoy's worker threads for one filter config.
pub struct Router {
    table: RwLock<Arc<RoutingTable>>,
    /// Memory, or (with Redis) the memory in front of Redis.
    store: Arc<dyn AffinityStore>,
    /// The store shared with other Envoys, when Redis is configured (a fake in tests).
    remote: Option<Arc<dyn Remote>>,
    /// The Redis store itself, for its state and counters.
    redis: Option<Arc<RedisRemote>>,
    generation: AtomicU64,
    /// Reload outcomes not yet exported as stats (the reload thread cannot touch Envoy's stats;
    /// the main thread's next publication takes them).
    unpublished_ok: AtomicU64,
    unpublished_rejected: AtomicU64,
    /// Tells the reload thread to stop (the config is being destroyed).
    stopped: AtomicBool,
}

impl Router {
    /// Builds the shared state from the filter config's bytes; `Err` says, in the router's own
    /// words, why the config cannot be used.
    pub fn from_filter_config(bytes: &[u8]) -> Result<Arc<Router>, String> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| "filter_config is not UTF-8 text".to_owned())?
            .trim();
        let module: ModuleConfig = if text.starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("filter_config: {e}"))?
        } else {
            ModuleConfig {
                routing_yaml: (!text.is_empty()).then(|| PathBuf::from(text)),
                routing_yaml_inline: None,
                config_poll_seconds: default_poll_seconds(),
            }
        };
        let compiled = match (&module.routing_yaml, &module.routing_yaml_inline) {
            (Some(path), None) => {
                config::load(path).map_err(|e| format!("{}: {e}", path.display()))
            }
            (None, Some(yaml)) => {
                config::from_yaml(yaml).map_err(|e| format!("routing_yaml_inline: {e}"))
            }
            _ => Err(
                "filter_config needs exactly one of `routing_yaml` (a path) and \
                      `routing_yaml_inline`"
                    .to_owned(),
            ),
        }?;
        let router = Arc::new(Router::new(compiled)?);
        if let Some(path) = module
            .routing_yaml
            .filter(|_| module.config_poll_seconds > 0)
        {
            let poll = Duration::from_secs(module.config_poll_seconds);
            spawn_reloader(Arc::downgrade(&router), path, poll);
        }
        Ok(router)
    }

    fn new(compiled: Compiled) -> Result<Router, String> {
        let affinity = &compiled.settings.affinity;
        let mut redis = None;
        let store: Arc<dyn AffinityStore> = if affinity.learn {
            let memory =
                MemoryStore::new(affinity.capacity, Duration::from_secs(affinity.ttl_seconds));
            // Credential and certificate files are read here: a missing one fails the config.
            let settings = RedisSettings::from_config(affinity).map_err(|issues| {
                let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
                issues.join("; ")
            })?;
            match settings {
                None => Arc::new(memory),
                Some(settings) => {
                    crate::log::forward_tracing();
                    let remote = RedisRemote::start(settings, memory)?;
                    redis = Some(Arc::clone(&remote));
                    remote
                }
            }
        } else {
            Arc::new(NoStore)
        };
        Ok(Router {
            table: RwLock::new(Arc::new(compiled.table)),
            store,
            remote: redis.clone().map(|r| r as Arc<dyn Remote>),
            redis,
            generation: AtomicU64::new(1),
            unpublished_ok: AtomicU64::new(1),
            unpublished_rejected: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    /// The table new streams use (a stream keeps the one it started with).
    pub fn table(&self) -> Arc<RoutingTable> {
        // A poisoned lock still holds a complete table (writers only swap an Arc).
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The affinity store shared by every worker.
    pub fn store(&self) -> &dyn AffinityStore {
        self.store.as_ref()
    }

    /// The shared store, when there is one.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.as_ref()
    }

    /// With Redis: whether it answered the last check, and the store's counters.
    pub fn redis_state(&self) -> Option<(bool, Stats)> {
        self.redis.as_ref().map(|redis| redis.state())
    }

    /// Shares learned locations through `remote` (tests; `from_filter_config` builds the real
    /// one from the settings).
    #[cfg(test)]
    pub fn set_remote(self: &mut Arc<Router>, remote: Arc<dyn Remote>) {
        if let Some(router) = Arc::get_mut(self) {
            router.remote = Some(remote);
        }
    }

    /// The generation of the table in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Reload outcomes since the last call: (accepted, rejected).
    pub fn take_reloads(&self) -> (u64, u64) {
        (
            self.unpublished_ok.swap(0, Ordering::Relaxed),
            self.unpublished_rejected.swap(0, Ordering::Relaxed),
        )
    }

    /// Stops hot reload; the config is going away.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Loads the routing YAML again; the new table takes effect for streams that start later.
    fn reload(&self, path: &Path) -> Result<u64, String> {
        // Against the table in force: an unchanged embedding model is shared, not loaded again.
        match config::reload_reusing(path, &self.table()) {
            Ok(reloaded) => {
                *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reloaded.table);
                self.unpublished_ok.fetch_add(1, Ordering::Relaxed);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                if !reloaded.needs_restart.is_empty() {
                    crate::log::warn(&format!(
                        "routing config reloaded; these settings take effect only after Envoy \
                         reloads the filter config: {}",
                        reloaded.needs_restart.join(", ")
                    ));
                }
                Ok(generation)
            }
            Err(e) => {
                self.unpublished_rejected.fetch_add(1, Ordering::Relaxed);
                Err(e.to_string())
            }
        }
    }
}

/// Polls `path` every `poll` and reloads it when its modification time or size changed (a
/// Kubernetes ConfigMap swaps a symlink, which `metadata()` follows). Ends when the router is
/// dropped or stopped; it never blocks a worker.
fn spawn_reloader(router: Weak<Router>, path: PathBuf, poll: Duration) {
    let mut seen = config::file_stamp(&path);
    let spawned = std::thread::Builder::new()
        .name("responses-router-reload".to_owned())
        .spawn(move || {
            let step = Duration::from_millis(100).min(poll);
            let mut waited = Duration::ZERO;
            loop {
                std::thread::sleep(step);
                let Some(router) = router
                    .upgrade()
                    .filter(|r| !r.stopped.load(Ordering::Relaxed))
                else {
                    return;
                };
                waited += step;
                if waited < poll {
                    continue;
                }
                waited = Duration::ZERO;
                let now = config::file_stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match router.reload(&path) {
                    Ok(generation) => crate::log::info(&format!(
                        "routing config reloaded from {} (generation {generation})",
                        path.display()
                    )),
                    Err(e) => crate::log::error(&format!(
                        "routing config rejected, keeping the one in force: {e}"
                    )),
                }
            }
        });
    if let Err(e) = spawned {
        crate::log::error(&format!("routing config hot reload unavailable: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "default_model: a\nmodels: [{ name: a, clusters: [{ name: c1 }] }]\n";

    #[test]
    fn the_config_names_the_routing_yaml_by_path_or_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, YAML).unwrap();
        let by_path = Router::from_filter_config(path.to_str().unwrap().as_bytes()).unwrap();
        assert_eq!(by_path.table().default_model(), "a");
        let json = serde_json::json!({ "routing_yaml_inline": YAML }).to_string();
        let inline = Router::from_filter_config(json.as_bytes()).unwrap();
        assert_eq!(inline.table().default_model(), "a");
    }

    #[test]
    fn a_broken_config_is_refused_with_the_routers_own_messages() {
        let json = serde_json::json!({
            "routing_yaml_inline": "default_model: nope\nmodels: [{ name: a, clusters: [{ name: c }] }]\n"
        })
        .to_string();
        let err = Router::from_filter_config(json.as_bytes()).err().unwrap();
        assert!(err.contains("default_model: unknown model `nope`"), "{err}");
        let err = Router::from_filter_config(b"{\"routing_yam\": \"x\"}")
            .err()
            .unwrap();
        assert!(err.contains("unknown field"), "{err}");
        let err = Router::from_filter_config(b"").err().unwrap();
        assert!(err.contains("exactly one of"), "{err}");
    }

    #[test]
    fn a_reload_swaps_the_table_and_keeps_the_old_one_when_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, YAML).unwrap();
        let json = serde_json::json!({ "routing_yaml": path, "config_poll_seconds": 0 });
        let router = Router::from_filter_config(json.to_string().as_bytes()).unwrap();
        let before = router.table();
        std::fs::write(
            &path,
            YAML.replace("name: a", "name: b").replace(": a", ": b"),
        )
        .unwrap();
        assert_eq!(router.reload(&path), Ok(2));
        assert_eq!(router.table().default_model(), "b");
        assert_eq!(before.default_model(), "a", "a stream keeps its table");
        std::fs::write(&path, "default_model: x\nmodels: []\n").unwrap();
        assert!(router.reload(&path).is_err());
        assert_eq!(router.table().default_model(), "b", "the old table stays");
        assert_eq!(
            router.take_reloads(),
            (2, 1),
            "start + one reload; one rejected"
        );
        assert_eq!(router.take_reloads(), (0, 0));
    }
}
