//! Hot reload of the routing YAML: on SIGHUP, and when the file changes.
//!
//! A change is noticed by polling the file's modification time and size rather than with inotify:
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, which inotify watches on the file
//! miss, while `metadata()` follows the link and sees the new file. A valid config is swapped in
//! atomically ([`SharedTable::replace`]): streams in flight finish with the table they started
//! with. An invalid one is rejected with its reasons logged, and the old table stays in force.
//! The startup settings (`max_body_bytes`, which also sizes the gRPC message limit, and the
//! affinity store) stay as they were at start: the new routes are compiled against them, and the
//! reload logs which of them the new file changes, to take effect at the next restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use responses_router_core::config::{self, RoutingTable};

use crate::telemetry::Metrics;

/// The routing table in force and its generation (1 at start, +1 per replacement), swappable as a
/// whole (hot reload) while streams keep the table they started with.
#[derive(Clone)]
pub struct SharedTable(Arc<RwLock<(u64, Arc<RoutingTable>)>>);

impl SharedTable {
    /// Wraps the initial table (generation 1).
    pub fn new(table: RoutingTable) -> Self {
        SharedTable(Arc::new(RwLock::new((1, Arc::new(table)))))
    }

    /// The table new streams use.
    pub fn current(&self) -> Arc<RoutingTable> {
        self.current_with_generation().1
    }

    /// The table in force and its generation, read together.
    pub fn current_with_generation(&self) -> (u64, Arc<RoutingTable>) {
        // A poisoned lock still holds a complete table (writers only swap an Arc).
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, Arc::clone(&guard.1))
    }

    /// Installs a new table for streams that start from now on; returns its generation.
    pub fn replace(&self, table: RoutingTable) -> u64 {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        *guard = (guard.0 + 1, Arc::new(table));
        guard.0
    }
}

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
        if let Some(model) = shared.current().embedding_model() {
            tracing::info!(
                dir = %model.dir().display(),
                "embedding model loaded: {}",
                model.describe()
            );
        }
        Reloader {
            stamp: config::file_stamp(path),
            path: path.to_owned(),
            shared,
            metrics,
        }
    }

    /// Loads the file now; returns the generation in force afterwards. The embedding model of the
    /// table in force is kept when the new file names the same, unchanged model files (the
    /// examples are embedded again either way).
    pub fn reload(&mut self) -> u64 {
        self.stamp = config::file_stamp(&self.path);
        let in_force = self.shared.current();
        match config::reload_reusing(&self.path, &in_force) {
            Ok(reloaded) => {
                if !reloaded.needs_restart.is_empty() {
                    tracing::warn!(
                        changed = ?reloaded.needs_restart,
                        "these settings take effect only after a restart"
                    );
                }
                let model = reloaded.table.embedding_model().map(|m| m.describe());
                let model_kept =
                    match (in_force.embedding_model(), reloaded.table.embedding_model()) {
                        (Some(before), Some(now)) => Arc::ptr_eq(before, now),
                        _ => false,
                    };
                let generation = self.shared.replace(reloaded.table);
                self.metrics.config_loaded(generation, true);
                tracing::info!(
                    generation,
                    path = %self.path.display(),
                    embedding_model = model.as_deref().unwrap_or("none"),
                    model_kept,
                    "routing config reloaded"
                );
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
    /// only). Runs until the process ends. A reload reads files, embeds the examples and may load
    /// a model (a tenth of a second): it runs on a blocking thread, never on the workers that
    /// serve Envoy's streams.
    pub async fn run(mut self, poll: Option<Duration>) {
        let mut wakeups = Wakeups::new("the routing config", poll);
        loop {
            let wanted = match wakeups.next().await {
                Wake::Hangup => {
                    tracing::info!("SIGHUP: reloading the routing config");
                    true
                }
                Wake::Tick => config::file_stamp(&self.path) != self.stamp,
            };
            if wanted {
                self = off_the_workers(move || {
                    self.reload();
                    self
                })
                .await;
            }
        }
    }
}

/// Runs blocking `work` on tokio's blocking pool and returns its result (a panic in it goes on
/// in the caller; a runtime shutting down never returns).
pub async fn off_the_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}

/// What woke a [`Wakeups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// SIGHUP: the operator asks for a reload.
    Hangup,
    /// The poll interval passed: time to look whether the files changed.
    Tick,
}

/// SIGHUP and an optional poll interval as one source of wake-ups, for everything that reloads
/// files the router read at start (the routing config, the TLS certificates).
pub struct Wakeups {
    hangup: Option<tokio::signal::unix::Signal>,
    ticker: Option<tokio::time::Interval>,
}

impl Wakeups {
    /// Wake-ups for reloading `what` (named in the warning when SIGHUP cannot be caught), every
    /// `poll` (`None`: on SIGHUP only). A poll that falls behind is not caught up in a burst.
    pub fn new(what: &str, poll: Option<Duration>) -> Self {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!("SIGHUP reload of {what} unavailable: {e}"))
            .ok();
        let ticker = poll.map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Wakeups { hangup, ticker }
    }

    /// Waits for the next SIGHUP or poll tick.
    pub async fn next(&mut self) -> Wake {
        let hup = async {
            match self.hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match self.ticker.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup => Wake::Hangup,
            _ = tick => Wake::Tick,
        }
    }
}

#[cfg(test)]
#[path = "../crates/core/benches/support/models.rs"]
mod models;

#[cfg(test)]
mod tests {
    use super::models;
    use super::*;

    const V1: &str = "default_model: a\nmodels: [{ name: a, clusters: [{ name: c1 }] }]\n";
    const V2: &str = "default_model: b\nmodels: [{ name: b, clusters: [{ name: c2 }] }]\n";

    #[test]
    fn a_valid_change_is_swapped_in_an_invalid_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, V1).unwrap();
        let shared = SharedTable::new(config::load(&path).unwrap().table);
        let metrics = Arc::new(Metrics::default());
        let mut reloader = Reloader::new(&path, shared.clone(), Arc::clone(&metrics));
        let before = shared.current();

        std::fs::write(&path, V2).unwrap();
        assert_eq!(reloader.reload(), 2);
        assert_eq!(shared.current().default_model(), "b");
        assert_eq!(
            before.default_model(),
            "a",
            "a stream's table never changes under it"
        );

        std::fs::write(&path, "default_model: nope\nmodels: []\n").unwrap();
        assert_eq!(reloader.reload(), 2, "rejected: generation unchanged");
        assert_eq!(shared.current().default_model(), "b", "old table kept");
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

    #[test]
    fn a_reload_keeps_the_embedding_model_while_its_files_are_unchanged() {
        let model = models::model_dir(models::WORDLLAMA);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        let yaml = |example: &str| {
            format!(
                "{V1}classification: {{ embedding: {{ model_dir: \"{}\" }} }}\n\
                 categories: [{{ name: k, model: a, examples: [\"{example}\"] }}]\n",
                model.display()
            )
        };
        std::fs::write(&path, yaml("write a poem")).unwrap();
        let shared = SharedTable::new(config::load(&path).unwrap().table);
        let mut reloader = Reloader::new(&path, shared.clone(), Arc::new(Metrics::default()));
        let first = shared.current();
        std::fs::write(&path, yaml("fix my code")).unwrap();
        assert_eq!(reloader.reload(), 2);
        let second = shared.current();
        assert!(Arc::ptr_eq(
            first.embedding_model().unwrap(),
            second.embedding_model().unwrap()
        ));
    }
}
