//! Hot reload of the routing YAML: on SIGHUP, and when the file changes.
//!
//! A change is noticed by polling the file's modification time and size rather than with inotify:
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, which inotify watches on the file
//! miss, while `metadata()` follows the link and sees the new file. A valid config is swapped in
//! atomically ([`SharedTable::replace`]): streams in flight finish with the table they started
//! with. An invalid one is rejected with its reasons logged, and the old table stays in force.
//! Settings read only at start (listeners, `max_body_bytes` as the gRPC message limit, the
//! affinity store) need a restart; the reload logs when they differ.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{SharedTable, load};
use crate::telemetry::Metrics;

/// Reloads the routing YAML into a [`SharedTable`].
pub struct Reloader {
    path: PathBuf,
    shared: SharedTable,
    metrics: Arc<Metrics>,
    stamp: Option<(SystemTime, u64)>,
}

impl Reloader {
    /// A reloader for the table `shared` was built from `path`.
    pub fn new(path: &Path, shared: SharedTable, metrics: Arc<Metrics>) -> Self {
        metrics.config_loaded(shared.current_with_generation().0, true);
        Reloader {
            stamp: stamp(path),
            path: path.to_owned(),
            shared,
            metrics,
        }
    }

    /// Loads the file now; returns the generation in force afterwards.
    pub fn reload(&mut self) -> u64 {
        self.stamp = stamp(&self.path);
        match load(&self.path) {
            Ok(table) => {
                let old = self.shared.current();
                if old.max_body_bytes() != table.max_body_bytes()
                    || old.config().affinity.redis_url != table.config().affinity.redis_url
                    || old.config().affinity.learn != table.config().affinity.learn
                {
                    tracing::warn!(
                        "max_body_bytes and affinity settings take effect only after a restart"
                    );
                }
                let generation = self.shared.replace(table);
                self.metrics.config_loaded(generation, true);
                tracing::info!(generation, path = %self.path.display(), "routing config reloaded");
                generation
            }
            Err(e) => {
                let generation = self.shared.current_with_generation().0;
                self.metrics.config_loaded(generation, false);
                tracing::error!(
                    generation,
                    "routing config rejected, keeping the one in force: {e}"
                );
                generation
            }
        }
    }

    /// Reloads whenever SIGHUP arrives, and every `poll` when the file changed (`None`: SIGHUP
    /// only). Runs until the process ends.
    pub async fn run(mut self, poll: Option<Duration>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("SIGHUP reload unavailable: {e}");
                None
            }
        };
        let mut ticker = poll.map(tokio::time::interval);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the routing config");
                    self.reload();
                }
                _ = tick => {
                    if stamp(&self.path) != self.stamp {
                        self.reload();
                    }
                }
            }
        }
    }
}

/// Modification time and size, following symlinks; `None` if the file cannot be read.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "default_model: a\nmodels: [{ name: a, clusters: [{ name: c1 }] }]\n";
    const V2: &str = "default_model: b\nmodels: [{ name: b, clusters: [{ name: c2 }] }]\n";

    #[test]
    fn a_valid_change_is_swapped_in_an_invalid_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, V1).unwrap();
        let shared = SharedTable::new(load(&path).unwrap());
        let metrics = Arc::new(Metrics::default());
        let mut reloader = Reloader::new(&path, shared.clone(), Arc::clone(&metrics));
        let before = shared.current();

        std::fs::write(&path, V2).unwrap();
        assert_eq!(reloader.reload(), 2);
        assert_eq!(shared.current().config().default_model, "b");
        assert_eq!(
            before.config().default_model,
            "a",
            "a stream's table never changes under it"
        );

        std::fs::write(&path, "default_model: nope\nmodels: []\n").unwrap();
        assert_eq!(reloader.reload(), 2, "rejected: generation unchanged");
        assert_eq!(
            shared.current().config().default_model,
            "b",
            "old table kept"
        );
        let text = metrics.encode();
        assert!(
            text.contains("responses_router_config_generation 2"),
            "{text}"
        );
        assert!(
            text.contains(r#"responses_router_config_reloads_total{result="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"responses_router_config_reloads_total{result="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("responses_router_config_last_reload_ok 0"),
            "{text}"
        );
    }
}
