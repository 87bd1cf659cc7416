//! The `responses-router` command: serve ext_proc, validate a routing YAML, or explain a decision.
//! Argument parsing and the one mapping from errors to exit codes; the work is in the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use responses_router::serve::{ServeError, ServeOptions, TlsOptions};
use responses_router::tls::TlsFiles;
use responses_router::{config, explain};
use responses_router_core::RequestKind;

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
    /// Serve Envoy's ExternalProcessor (and gRPC health) on TCP (plaintext or mTLS) and/or a Unix
    /// socket.
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
        /// TCP address serving gRPC health only (grpc.health.v1.Health), for kubelet's gRPC
        /// probes when ext_proc is on --uds only; ext_proc and RouterAdmin are not served there.
        #[arg(long, env = "RESPONSES_ROUTER_HEALTH_LISTEN")]
        health_listen: Option<SocketAddr>,
        /// PEM certificate chain for --listen: with --tls-key and --tls-client-ca, the TCP
        /// listener serves TLS only, and only to clients with a certificate from a client CA.
        #[arg(
            long,
            env = "RESPONSES_ROUTER_TLS_CERT",
            requires_all = ["tls_key", "tls_client_ca"]
        )]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(
            long,
            env = "RESPONSES_ROUTER_TLS_KEY",
            requires_all = ["tls_cert", "tls_client_ca"]
        )]
        tls_key: Option<PathBuf>,
        /// PEM bundle of the CAs whose client certificates --listen accepts.
        #[arg(
            long,
            env = "RESPONSES_ROUTER_TLS_CLIENT_CA",
            requires_all = ["tls_cert", "tls_key"]
        )]
        tls_client_ca: Option<PathBuf>,
        /// Seconds between checks of the TLS files for changes (0: on SIGHUP only). New
        /// connections use changed certificates; open ones keep theirs.
        #[arg(long, env = "RESPONSES_ROUTER_TLS_POLL_SECONDS", default_value_t = 5)]
        tls_poll_seconds: u64,
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
        /// Do not read the credential and certificate files and environment variables that
        /// `affinity.redis` names (check the YAML alone, e.g. in CI where Secrets are not mounted).
        #[arg(long)]
        offline: bool,
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
}

/// Why a command failed, and so its exit code.
enum Failure {
    /// Bad arguments or configuration: exit 2.
    Usage(String),
    /// The command ran and failed (a refused request for `explain`, a server error): exit 1.
    Failed(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve {
            config,
            listen,
            uds,
            health_listen,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_poll_seconds,
            admin_listen,
            ready_requires_store,
            drain_seconds,
            config_poll_seconds,
            worker_threads,
        } => {
            let listen = match listen.as_str() {
                "none" => None,
                addr => Some(
                    addr.parse::<SocketAddr>()
                        .map_err(|e| Failure::Usage(format!("--listen {addr}: {e}")))?,
                ),
            };
            // clap requires all three together.
            let tls = match (tls_cert, tls_key, tls_client_ca) {
                (Some(cert), Some(key), Some(client_ca)) => Some(TlsOptions {
                    files: TlsFiles {
                        cert,
                        key,
                        client_ca,
                    },
                    poll: (tls_poll_seconds > 0).then(|| Duration::from_secs(tls_poll_seconds)),
                }),
                _ => None,
            };
            let options = ServeOptions {
                config,
                listen,
                tls,
                uds,
                health_listen,
                admin_listen: (admin_listen != "none").then_some(admin_listen),
                config_poll: (config_poll_seconds > 0)
                    .then(|| Duration::from_secs(config_poll_seconds)),
                ready_requires_store,
                drain: Duration::from_secs(drain_seconds),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(usize::from(worker_threads))
                .enable_all()
                .build()
                .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
            runtime
                .block_on(responses_router::serve::serve(options, shutdown_signal()))
                .map_err(|e| match e {
                    ServeError::Config { .. } | ServeError::Usage(_) | ServeError::Tls(_) => {
                        Failure::Usage(e.to_string())
                    }
                    ServeError::Bind { .. } | ServeError::Server(_) => {
                        Failure::Failed(e.to_string())
                    }
                })
        }
        Command::Validate {
            config: path,
            offline,
        } => {
            let secrets = if offline {
                config::Secrets::Skip
            } else {
                config::Secrets::Read
            };
            let compiled = config::load_with(&path, secrets)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            let table = &compiled.table;
            println!(
                "{}: ok ({}, {}, {})",
                path.display(),
                count(table.models().len(), "model", "models"),
                count(table.all_candidates().len(), "cluster", "clusters"),
                count(table.category_names().count(), "category", "categories")
            );
            if let Some(model) = table.embedding_model() {
                println!(
                    "  embedding model: {} ({})",
                    model.describe(),
                    model.dir().display()
                );
            }
            Ok(())
        }
        Command::Explain {
            config: path,
            path: request_path,
            method,
            body_file,
            request_id,
        } => {
            let compiled = config::load_with(&path, config::Secrets::Skip)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            // Only the endpoints whose route depends on the body read one.
            let kind = RequestKind::from_request(&method, &request_path, false);
            let body = match (&body_file, kind.needs_body()) {
                (_, false) => None,
                (Some(file), true) => Some(std::fs::read(file)),
                (None, true) => {
                    let mut buf = Vec::new();
                    Some(std::io::stdin().read_to_end(&mut buf).map(|_| buf))
                }
            }
            .transpose()
            .map_err(|e| Failure::Usage(format!("cannot read the body: {e}")))?;
            // The decision prints in field order; an error prints as the client would receive it.
            match explain::explain(
                &compiled.table,
                &method,
                &request_path,
                &request_id,
                body.as_deref(),
            ) {
                Ok(explain::Explained::Routed(routed)) => {
                    let (decision, explanation) = *routed;
                    println!("{}", explain::to_json(&decision, &explanation));
                    Ok(())
                }
                Ok(explain::Explained::Answered(body)) => {
                    println!("HTTP 200 (answered by the router)");
                    println!("{}", String::from_utf8_lossy(&body));
                    Ok(())
                }
                Err(error) => {
                    println!("{}", explain::error_text(&error));
                    Err(Failure::Failed(String::new()))
                }
            }
        }
    }
}

/// `1 model`, `3 models`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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
}
