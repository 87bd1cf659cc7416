//! The Envoy side: a tonic `ExternalProcessor` that turns Envoy's per-request message stream into
//! calls to [`crate::routing::route`] and the decision back into header/body mutations.
//!
//! - [`envoy`]: reading Envoy headers and building `ProcessingResponse`s (mutations, errors, modes).
//! - [`stream`]: the per-stream state machine (one reply per message, in order).
//! - [`observe`]: learning ids from responses; [`pending`]: continuations never overtake it.
//! - [`service`]: the gRPC service and the TCP / Unix-socket servers.

pub mod envoy;
pub mod observe;
pub mod pending;
pub mod service;
pub mod stream;

pub use service::{RouterService, serve};

/// Header that the shipped Envoy route reads with `cluster_header`.
pub const CLUSTER_HEADER: &str = "x-router-cluster";
/// The model the upstream will see.
pub const MODEL_HEADER: &str = "x-selected-model";
/// Why the route was chosen (`category`, `default`, `explicit`, `affinity`, `hash`, `passthrough`).
pub const REASON_HEADER: &str = "x-router-reason";
/// The winning category, when classification chose the model.
pub const CATEGORY_HEADER: &str = "x-router-category";
/// When affinity overrode the classifier: the model the classifier had picked.
pub const CLASSIFIED_MODEL_HEADER: &str = "x-router-classified-model";
/// The pinned host, base64-encoded `ip:port`, as Envoy's `stateful_session` filter (header-based
/// session state) reads it: Envoy sends the request to that host while it is healthy, else
/// load-balances as usual.
pub const SESSION_HOST_HEADER: &str = "x-router-session-host";
/// Host override for `ORIGINAL_DST` clusters (Gateway API Inference Extension protocol). The router
/// does not set it, but strips it, so a client cannot use it against such a cluster.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";

/// Set to `1` on requests whose answer the observer filter need not see (all but `stream: true`
/// requests that create state): Envoy then skips that filter (`ExtensionWithMatcher` in
/// deploy/envoy.yaml), saving a gRPC stream and its messages per request.
pub const SKIP_OBSERVER_HEADER: &str = "x-router-skip-observer";

/// Every header that can influence routing. A client may send any of them; the router removes
/// them all on every request it sees before setting its own, so none can choose an upstream.
pub const ROUTING_HEADERS: [&str; 8] = [
    CLUSTER_HEADER,
    MODEL_HEADER,
    REASON_HEADER,
    CATEGORY_HEADER,
    CLASSIFIED_MODEL_HEADER,
    SESSION_HOST_HEADER,
    DESTINATION_HEADER,
    SKIP_OBSERVER_HEADER,
];
