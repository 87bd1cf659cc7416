//! The `responses-router` command: serve ext_proc, validate a routing YAML, explain a decision, or
//! run the bundled model-server simulator.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use responses_router::affinity::{AffinityStore, MemoryStore, NoStore, RedisStore};
use responses_router::config::SharedTable;
use responses_router::config::reload::Reloader;
use responses_router::config::{self, RoutingTable};
use responses_router::extproc::{self, RouterService, service::Listeners};
use responses_router::openai::RequestKind;
use responses_router::routing::{self, RequestMeta};
use responses_router::telemetry::{self, Metrics};

#[derive(Parser)]
#[command(
    name = "responses-router",
    version,
    about = "Envoy ext_proc router for the OpenAI Responses API"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RESPONSES_ROUTER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ExternalProcessor (and gRPC health) on TCP and/or a Unix socket.
    Serve {
        /// The routing YAML.
        #[arg(long, env = "RESPONSES_ROUTER_CONFIG")]
        config: PathBuf,
        /// TCP address for gRPC (use --listen none to serve only on --uds).
        #[arg(
            long,
            env = "RESPONSES_ROUTER_LISTEN",
            default_value = "127.0.0.1:50051"
        )]
        listen: String,
        /// Unix socket path for gRPC (a sidecar sharing a volume with Envoy).
        #[arg(long, env = "RESPONSES_ROUTER_UDS")]
        uds: Option<PathBuf>,
        /// HTTP address for /metrics and /healthz (`none` to disable).
        #[arg(
            long,
            env = "RESPONSES_ROUTER_ADMIN_LISTEN",
            default_value = "127.0.0.1:9090"
        )]
        admin_listen: String,
        /// Answer /readyz with 503 while a configured shared affinity store (Redis) is unreachable
        /// (by default the router stays ready and reports the degraded state).
        #[arg(long, env = "RESPONSES_ROUTER_READY_REQUIRES_STORE")]
        ready_requires_store: bool,
        /// Seconds streams in flight may run on after SIGTERM before the process exits.
        #[arg(long, env = "RESPONSES_ROUTER_DRAIN_SECONDS", default_value_t = 15)]
        drain_seconds: u64,
        /// Seconds between checks of the routing YAML for changes (0: reload on SIGHUP only).
        #[arg(
            long,
            env = "RESPONSES_ROUTER_CONFIG_POLL_SECONDS",
            default_value_t = 5
        )]
        config_poll_seconds: u64,
        /// Threads serving Envoy. One is the default: measured on 2 cores shared with Envoy, one
        /// thread used 15-35% less CPU per request than two (no cross-thread wake-ups; see
        /// bench/filter_cost.py). Raise it when the router has cores of its own and one thread
        /// is kept busy.
        #[arg(
            long,
            env = "RESPONSES_ROUTER_WORKER_THREADS",
            default_value_t = 1,
            value_parser = clap::value_parser!(u16).range(1..)
        )]
        worker_threads: u16,
    },
    /// Check a routing YAML; exits non-zero and names every problem.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the decision for one request, through the same code path the service uses.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// Request path, e.g. /v1/responses.
        #[arg(long)]
        path: String,
        #[arg(long, default_value = "POST")]
        method: String,
        /// Read the body from this file instead of standard input.
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Request id (Envoy's x-request-id), which spreads stateless requests over clusters.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Run the bundled OpenAI-compatible model-server simulator.
    Simulate(responses_router::simulator::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve { worker_threads, .. } = &cli.command {
        runtime.worker_threads(usize::from(*worker_threads));
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve {
            config,
            listen,
            uds,
            admin_listen,
            config_poll_seconds,
            ready_requires_store,
            drain_seconds,
            worker_threads: _,
        } => {
            let options = ServeOptions {
                admin_listen,
                config_poll_seconds,
                ready_requires_store,
                drain: std::time::Duration::from_secs(drain_seconds),
            };
            serve(config, listen, uds, options).await
        }
        Command::Validate { config } => validate(&config),
        Command::Explain {
            config,
            path,
            method,
            body_file,
            request_id,
        } => explain(&config, &method, &path, body_file, &request_id).await,
        Command::Simulate(args) => match responses_router::simulator::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simulate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESPONSES_ROUTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &Path) -> Result<RoutingTable, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(2)
    })
}

async fn serve(
    config: PathBuf,
    listen: String,
    uds: Option<PathBuf>,
    options: ServeOptions,
) -> ExitCode {
    let ServeOptions {
        admin_listen,
        config_poll_seconds,
        ready_requires_store,
        drain,
    } = options;
    let table = match load(&config) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let tcp = if listen == "none" {
        None
    } else {
        let addr: SocketAddr = match listen.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("--listen {listen}: {e}");
                return ExitCode::from(2);
            }
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let uds_listener = match &uds {
        Some(path) => match Listeners::bind_uds(path) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if tcp.is_none() && uds_listener.is_none() {
        eprintln!("nothing to listen on: give --listen ADDR or --uds PATH");
        return ExitCode::from(2);
    }
    tracing::info!(
        listen = %listen,
        uds = ?uds,
        models = table.config().models.len(),
        categories = table.config().categories.len(),
        "responses-router serving ext_proc"
    );
    let affinity = &table.config().affinity;
    let ttl = std::time::Duration::from_secs(affinity.ttl_seconds);
    let store: Arc<dyn AffinityStore> = match (affinity.learn, &affinity.redis_url) {
        (false, _) => Arc::new(NoStore),
        (true, None) => Arc::new(MemoryStore::new(affinity.capacity, ttl)),
        (true, Some(url)) => {
            let local = MemoryStore::new(affinity.capacity, ttl);
            match RedisStore::new(url, &affinity.redis_key_prefix, local, ttl) {
                Ok(store) => Arc::new(store),
                Err(e) => {
                    eprintln!("affinity.redis_url: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    tracing::info!(
        learn = affinity.learn,
        shared = affinity.redis_url.is_some(),
        "affinity store ready"
    );
    let metrics = Arc::new(Metrics::default());
    if admin_listen != "none" {
        let listener = match tokio::net::TcpListener::bind(&admin_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {admin_listen} (--admin-listen): {e}");
                return ExitCode::FAILURE;
            }
        };
        let admin = telemetry::admin::router(
            Arc::clone(&metrics),
            Arc::clone(&store),
            ready_requires_store,
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, admin).await {
                tracing::error!("admin server failed: {e}");
            }
        });
    }
    let shared = SharedTable::new(table);
    let reloader = Reloader::new(&config, shared.clone(), Arc::clone(&metrics));
    let poll =
        (config_poll_seconds > 0).then(|| std::time::Duration::from_secs(config_poll_seconds));
    tokio::spawn(reloader.run(poll));
    let service = RouterService::new(shared, store, metrics);
    let listeners = Listeners {
        tcp,
        uds: uds_listener,
    };
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(true);
    };
    // Streams in flight get `drain` to finish after the signal; then the process exits.
    let deadline = async {
        let _ = signalled.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = extproc::serve(service, listeners, shutdown) => match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("server failed: {e}");
                ExitCode::FAILURE
            }
        },
        () = deadline => {
            tracing::warn!("streams still open after {drain:?}; exiting");
            ExitCode::SUCCESS
        }
    }
}

/// `serve` settings beyond where to listen for gRPC.
struct ServeOptions {
    admin_listen: String,
    config_poll_seconds: u64,
    ready_requires_store: bool,
    drain: std::time::Duration,
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down: no new streams, finishing those in flight");
}

fn validate(path: &Path) -> ExitCode {
    match load(path) {
        Ok(t) => {
            let c = t.config();
            println!(
                "{}: ok ({} models, {} clusters, {} categories)",
                path.display(),
                c.models.len(),
                t.all_candidates().len(),
                c.categories.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn explain(
    config: &Path,
    method: &str,
    path: &str,
    body_file: Option<PathBuf>,
    request_id: &str,
) -> ExitCode {
    let table = match load(config) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let kind = RequestKind::classify(method, path, false);
    let body = if kind.needs_body() {
        let read = match &body_file {
            Some(file) => std::fs::read(file),
            None => {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).map(|_| buf)
            }
        };
        match read {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("cannot read the body: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let meta = RequestMeta {
        kind: &kind,
        request_id,
    };
    let outcome = routing::route(&table, meta, body.as_deref(), &NoStore).await;
    // The decision prints in field order; an error prints as the client would receive it.
    let printed = match &outcome {
        Ok(decision) => serde_json::to_string_pretty(decision).unwrap_or_default(),
        Err(e) => format!(
            "HTTP {}\n{}",
            e.status,
            String::from_utf8_lossy(&e.to_json())
        ),
    };
    println!("{printed}");
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
