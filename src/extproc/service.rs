//! The gRPC service Envoy calls (routing streams and observer streams), and the servers that expose
//! it: on TCP (plaintext, or mTLS), on a Unix socket, and gRPC health alone on a TCP port of its own.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Msg,
};
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use responses_router_core::config::RoutingTable;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::driver::{Driver, Hooks, Outcome};
use super::observe::ObserverHooks;
use super::pending::{PendingIds, SettlingStore};
use super::routing::RoutingHooks;
use crate::api::AdminApi;
use crate::reload::SharedTable;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::Phase;
use crate::tls::{self, ServerTls};

/// The `envoy.service.ext_proc.v3.ExternalProcessor` implementation.
#[derive(Clone)]
pub struct RouterService {
    table: SharedTable,
    /// The store as routing sees it: a miss waits for streamed ids still being learned.
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    pending: Arc<PendingIds>,
}

impl RouterService {
    /// A service routing with `table`, learning affinity into `store`, counting into `metrics`.
    pub fn new(table: SharedTable, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let pending = Arc::new(PendingIds::default());
        RouterService {
            table,
            store: Arc::new(SettlingStore::new(store, Arc::clone(&pending))),
            metrics,
            pending,
        }
    }

    /// The tonic server wrapper, with message limits that fit the largest body the router takes.
    pub fn into_server(self) -> ExternalProcessorServer<Self> {
        // A BUFFERED body arrives as one gRPC message; leave room for headers and framing.
        let limit = self
            .table
            .current()
            .max_body_bytes()
            .saturating_add(1 << 20);
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for RouterService {
    type ProcessStream = ReplyStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let table = self.table.current();
        let service = self.clone();
        // Replies are strictly one per message, so a small channel never holds more than one.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move { service.run_stream(table, inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Replies = tokio::sync::mpsc::Sender<Result<ProcessingResponse, Status>>;

impl RouterService {
    /// Runs one stream: the first message says whether it is the observer filter's
    /// (observability mode) or the routing filter's.
    async fn run_stream(
        self,
        table: Arc<RoutingTable>,
        mut inbound: Streaming<ProcessingRequest>,
        tx: Replies,
    ) {
        let first = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        if first.observability_mode {
            // Envoy ignores answers in this mode; dropping `tx` closes the stream once nothing
            // more is needed.
            let pending = table.learns().then(|| Arc::clone(&self.pending));
            let hooks = ObserverHooks::new(store, metrics, pending);
            drive(Driver::observing(hooks), first, inbound, tx, &self.metrics).await;
        } else {
            let max_body_bytes = table.max_body_bytes();
            let hooks = RoutingHooks::new(table, store, metrics, Arc::clone(&self.pending));
            let driver = Driver::replying(hooks, max_body_bytes);
            drive(driver, first, inbound, tx, &self.metrics).await;
        }
    }
}

/// Feeds every message of the stream to `driver` and sends its replies, until either side ends.
async fn drive<H: Hooks>(
    mut driver: Driver<H>,
    first: ProcessingRequest,
    mut inbound: Streaming<ProcessingRequest>,
    tx: Replies,
    metrics: &Metrics,
) {
    let mut next = Some(first);
    while let Some(message) = next.take() {
        let phase = match message.request {
            Some(Msg::ResponseHeaders(_) | Msg::ResponseBody(_) | Msg::ResponseTrailers(_)) => {
                Phase::Response
            }
            _ => Phase::Request,
        };
        let started = std::time::Instant::now();
        let outcome = driver.handle(message).await;
        metrics.observe_duration(phase, started.elapsed());
        let reply = match outcome {
            Ok(Outcome::Reply(reply)) => Ok(*reply),
            Ok(Outcome::Silent) => {
                next = inbound.message().await.ok().flatten();
                continue;
            }
            Ok(Outcome::Close) => return,
            Err(violation) => Err(Status::from(violation)),
        };
        let failed = reply.is_err();
        // A failed send means Envoy went away: nothing is left to answer.
        if tx.send(reply).await.is_err() || failed {
            return;
        }
        next = match inbound.message().await {
            Ok(m) => m,
            Err(status) => {
                // A message the router could not read (e.g. over the gRPC size limit) must end
                // the stream with an error: ending it with OK would let Envoy forward the request
                // without the router's decision.
                tracing::debug!(%status, "ext_proc stream failed");
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
    }
}

/// Where the servers listen; `tcp` or `uds` must be set.
#[derive(Default)]
pub struct Listeners {
    /// ext_proc, RouterAdmin and health over TCP: plaintext, or mTLS when `tls` is set.
    pub tcp: Option<TcpListener>,
    /// Makes `tcp` serve TLS only, to clients with a certificate from its client CAs.
    pub tls: Option<Arc<ServerTls>>,
    /// ext_proc, RouterAdmin and health over a Unix socket (plaintext; the socket file's
    /// permissions and the volume it lives in decide who may connect).
    pub uds: Option<UnixListener>,
    /// gRPC health alone (kubelet's gRPC probes), plaintext: every other service is unknown
    /// there (`Unimplemented`).
    pub health: Option<TcpListener>,
}

impl Listeners {
    /// Binds a Unix socket, replacing a stale socket file left by an earlier run.
    pub fn bind_uds(path: &PathBuf) -> std::io::Result<UnixListener> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path)?;
        }
        UnixListener::bind(path)
    }
}

/// Serves the ext_proc service, the RouterAdmin API and gRPC health on the `tcp` and `uds`
/// listeners, and gRPC health alone on `health`, until `shutdown` completes; streams in flight
/// are then allowed to finish. The first server to fail ends them all.
pub async fn serve(
    service: RouterService,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<ExternalProcessorServer<RouterService>>()
        .await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = AdminApi::new(service.table.clone(), Arc::clone(&service.store));
    let router = tonic::transport::Server::builder()
        .add_service(health.clone())
        .add_service(api.into_server())
        .add_service(service.into_server());
    let mut servers: Vec<BoxFuture<'static, Result<(), tonic::transport::Error>>> = Vec::new();
    match (listeners.tcp, listeners.tls) {
        (Some(l), Some(tls)) => servers.push(Box::pin(
            router
                .clone()
                .serve_with_incoming_shutdown(tls::incoming(l, tls), stopped(stop_rx.clone())),
        )),
        (Some(l), None) => servers.push(Box::pin(
            router
                .clone()
                .serve_with_incoming_shutdown(tcp_incoming(l), stopped(stop_rx.clone())),
        )),
        (None, _) => {}
    }
    if let Some(l) = listeners.uds {
        servers.push(Box::pin(router.serve_with_incoming_shutdown(
            UnixListenerStream::new(l),
            stopped(stop_rx.clone()),
        )));
    }
    if let Some(l) = listeners.health {
        // A server of its own with the health service only: ext_proc and RouterAdmin are
        // unknown services there, so this port can be open to kubelet (the node) without
        // opening the router to whoever else reaches it.
        servers.push(Box::pin(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(tcp_incoming(l), stopped(stop_rx.clone())),
        ));
    }
    futures_util::future::try_join_all(servers)
        .await
        .map(|_| ())
}

/// Plaintext TCP connections, with Nagle's algorithm off: against Envoy's delayed ACKs it would
/// hold each small reply ~40 ms.
fn tcp_incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::warn!("TCP_NODELAY not set: {e}");
            }
        })
    })
}
