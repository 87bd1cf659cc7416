//! The bundled OpenAI-compatible model-server simulator: one vLLM-like replica. It is its own
//! crate and binary (`responses-router-simulator`) so the production router never carries it.
//!
//! It exists so the router can be demonstrated, tested and benchmarked against backends that
//! behave like the real thing where it matters for routing: each instance keeps its **own** response
//! and conversation store (so a continuation sent to the wrong replica gets vLLM's 404), streams the
//! real Responses SSE event sequence (so the router can learn ids from `response.created`), and says
//! who answered and what bytes it received (`x-simulator-instance`, `x-received-body-sha256`).
//!
//! Layout: [`state`] (configuration, bounded stores, request log), [`object`] (Response objects and
//! request parsing), [`input`] (loose input reading, items, pagination), [`responses`],
//! [`conversations`] and [`chat`] (handlers), [`sse`] (event streams), [`observe`] (middleware and
//! introspection), [`error`] (vLLM-style errors).

pub mod chat;
pub mod conversations;
pub mod error;
pub mod input;
pub mod object;
pub mod observe;
pub mod responses;
pub mod sse;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use error::SimError;
pub use state::{SimConfig, SimState};

/// Command-line arguments of `responses-router-simulator`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (host:port).
    #[arg(long, default_value = "127.0.0.1:8101")]
    pub listen: String,
    /// Instance name, shown in output texts and the `x-simulator-instance` header.
    #[arg(long, default_value = "sim")]
    pub instance: String,
    /// Comma-separated models this instance serves; any other model is a 404.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Delay before each streamed text chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Number of text chunks per stream (`response.output_text.delta` events), 1..=100000.
    #[arg(long, default_value_t = 4)]
    pub stream_chunks: usize,
    /// How long a `background: true` response stays queued/in progress, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub background_delay_ms: u64,
    /// Most responses (and, separately, conversations) kept; the oldest are evicted first.
    #[arg(long, default_value_t = 100_000)]
    pub max_stored: usize,
    /// Approximate memory budget of each store, in MiB; the oldest entries are evicted first.
    #[arg(long, default_value_t = 512)]
    pub max_store_mib: usize,
}

impl SimulateArgs {
    /// The CLI defaults for `instance` serving `models`, for starting a simulator from code.
    pub fn new(instance: &str, models: &[&str]) -> Self {
        Self {
            listen: "127.0.0.1:8101".to_owned(),
            instance: instance.to_owned(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            chunk_delay_ms: 0,
            stream_chunks: 4,
            background_delay_ms: 50,
            max_stored: 100_000,
            max_store_mib: 512,
        }
    }

    /// Validated configuration.
    pub fn config(&self) -> std::io::Result<SimConfig> {
        let models: Vec<String> = self
            .models
            .iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        if models.is_empty() {
            return Err(invalid("--models needs at least one model name"));
        }
        Ok(SimConfig {
            instance: self.instance.clone(),
            models,
            chunk_delay: Duration::from_millis(self.chunk_delay_ms),
            stream_chunks: self.stream_chunks.clamp(1, MAX_STREAM_CHUNKS),
            background_delay: Duration::from_millis(self.background_delay_ms),
            max_entries: self.max_stored.max(1),
            max_bytes: self.max_store_mib.saturating_mul(1024 * 1024),
        })
    }
}

/// Upper bound of `--stream-chunks`, so a typo cannot make every stream allocate gigabytes.
pub const MAX_STREAM_CHUNKS: usize = 100_000;

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

/// The simulator's HTTP application for one instance.
pub fn app(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/input_tokens", post(responses::input_tokens))
        .route("/v1/responses/compact", post(responses::compact))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::retrieve)
                .post(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(conversations::list_items).post(conversations::add_items),
        )
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(conversations::get_item).delete(conversations::delete_item),
        )
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/health", get(|| async {}))
        .route("/_simulator/health", get(observe::health))
        .route("/_simulator/requests/{sha256}", get(observe::request_body))
        .fallback(observe::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .layer(DefaultBodyLimit::max(state::MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the simulator on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    args: &SimulateArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(
        SimState::new(args.config()?)
            .map_err(|e| invalid(format!("--instance is not a valid header value: {e}")))?,
    );
    // SSE chunks are small writes: without TCP_NODELAY, Nagle would hold them back.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs the simulator until the process is stopped (Ctrl-C or SIGTERM).
pub async fn run(args: SimulateArgs) -> std::io::Result<()> {
    let config = args.config()?;
    let listener = TcpListener::bind(args.listen.as_str()).await?;
    eprintln!(
        "simulator instance {} serving [{}] on http://{}",
        config.instance,
        config.models.join(","),
        listener.local_addr()?
    );
    serve(listener, &args, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
