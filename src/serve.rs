//! `serve` as a library function: load the routing YAML, build the affinity store, open the
//! listeners and the admin port, start hot reload, and serve ext_proc until `shutdown` completes;
//! streams in flight then get the drain time to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use responses_router_core::affinity::{MemoryStore, NoStore};
use responses_router_core::config::{AffinityConfig, ConfigError};

use crate::extproc::{self, RouterService, service::Listeners};
use crate::reload::{Reloader, SharedTable};
use crate::store::{SharedStore, Store};
use crate::telemetry::{self, Metrics};
use crate::tls::{ServerTls, TlsError, TlsFiles};

/// What `serve` needs besides the routing YAML's own settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The routing YAML.
    pub config: PathBuf,
    /// TCP address for gRPC (ext_proc, RouterAdmin, health); `None` serves only on `uds`.
    pub listen: Option<SocketAddr>,
    /// mTLS on `listen`: the router's certificate and the CAs of the clients it accepts.
    pub tls: Option<TlsOptions>,
    /// Unix socket for gRPC (a sidecar sharing a volume with Envoy).
    pub uds: Option<PathBuf>,
    /// TCP address serving gRPC health and nothing else (kubelet's gRPC probes).
    pub health_listen: Option<SocketAddr>,
    /// Address of the admin HTTP port (/metrics, /healthz, /readyz); `None` disables it.
    pub admin_listen: Option<String>,
    /// How often the routing YAML is checked for changes; `None`: reload on SIGHUP only.
    pub config_poll: Option<Duration>,
    /// Answer /readyz with 503 while a shared store is unreachable.
    pub ready_requires_store: bool,
    /// How long streams in flight may run on after `shutdown`.
    pub drain: Duration,
}

/// TLS on the TCP listener.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub files: TlsFiles,
    /// How often the files are checked for changes; `None`: on SIGHUP only.
    pub poll: Option<Duration>,
}

/// Why `serve` could not run (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routing YAML is unreadable or invalid.
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    /// The options cannot work together.
    #[error("{0}")]
    Usage(String),
    /// The TLS certificate files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not be opened.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` completes and streams in flight have finished (or the drain time has
/// run out).
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let compiled = crate::config::load(&options.config).map_err(|source| ServeError::Config {
        path: options.config.clone(),
        source,
    })?;
    if options.tls.is_some() && options.listen.is_none() {
        return Err(ServeError::Usage(
            "--tls-cert/--tls-key/--tls-client-ca secure the TCP listener: give --listen ADDR \
             (a Unix socket is guarded by its file permissions, not TLS)"
                .to_owned(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    // Unusable certificates stop `serve` before it opens any listener.
    let tls = match &options.tls {
        Some(tls) => Some(ServerTls::load(tls.files.clone(), Arc::clone(&metrics))?),
        None => None,
    };
    let tcp = match options.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let uds = match &options.uds {
        Some(path) => Some(
            Listeners::bind_uds(path).map_err(|source| ServeError::Bind {
                what: path.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    if tcp.is_none() && uds.is_none() {
        return Err(ServeError::Usage(
            "nothing to listen on: give --listen ADDR or --uds PATH".to_owned(),
        ));
    }
    let health = match options.health_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: format!("{addr} (--health-listen)"),
                    source,
                })?,
        ),
        None => None,
    };
    if let (Some(tls), Some(options)) = (&tls, &options.tls) {
        tokio::spawn(Arc::clone(tls).watch(options.poll));
    }
    let table = compiled.table;
    tracing::info!(
        listen = ?options.listen,
        tls = tls.is_some(),
        uds = ?options.uds,
        health_listen = ?options.health_listen,
        models = table.models().len(),
        categories = table.category_names().count(),
        "responses-router serving ext_proc"
    );
    let affinity = &compiled.settings.affinity;
    let store = build_store(affinity, &options.config)?;
    tracing::info!(
        learn = affinity.learn,
        shared = affinity.shares(),
        "affinity store ready"
    );
    if let Some(counters) = store.shared_counters() {
        metrics.register_shared_store(counters);
    }
    if let Some(admin_listen) = &options.admin_listen {
        let listener = tokio::net::TcpListener::bind(admin_listen)
            .await
            .map_err(|source| ServeError::Bind {
                what: format!("{admin_listen} (--admin-listen)"),
                source,
            })?;
        let admin = telemetry::admin::router(
            Arc::clone(&metrics),
            Arc::clone(&store),
            options.ready_requires_store,
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, admin).await {
                tracing::error!("admin server failed: {e}");
            }
        });
    }
    let shared = SharedTable::new(table);
    let reloader = Reloader::new(&options.config, shared.clone(), Arc::clone(&metrics));
    tokio::spawn(reloader.run(options.config_poll));
    let service = RouterService::new(shared, store, metrics);
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: no new streams, finishing those in flight");
        let _ = signalled_tx.send(true);
    };
    // Streams in flight get `drain` to finish after the signal; then serving stops regardless.
    let drain = options.drain;
    let deadline = async {
        let _ = signalled.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = extproc::serve(service, Listeners { tcp, tls, uds, health }, shutdown) => {
            result?;
            tracing::info!("stopped");
        }
        () = deadline => tracing::warn!("streams still open after {drain:?}; exiting"),
    }
    Ok(())
}

/// The affinity store the settings ask for: none (learning off), memory, or memory + Redis
/// (credential and certificate files are read here, so a missing one stops the start).
fn build_store(affinity: &AffinityConfig, path: &Path) -> Result<Arc<dyn Store>, ServeError> {
    let ttl = Duration::from_secs(affinity.ttl_seconds);
    if !affinity.learn {
        return Ok(Arc::new(NoStore));
    }
    let local = MemoryStore::new(affinity.capacity, ttl);
    let settings =
        responses_router_redis::RedisSettings::from_config(affinity).map_err(|issues| {
            ServeError::Config {
                path: path.to_owned(),
                source: ConfigError::Invalid(issues),
            }
        })?;
    Ok(match settings {
        None => Arc::new(local),
        Some(settings) => Arc::new(
            SharedStore::start(settings, local)
                .map_err(|e| ServeError::Usage(format!("affinity.redis: {e}")))?,
        ),
    })
}
