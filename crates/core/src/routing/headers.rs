//! The request headers that carry a decision to Envoy: the contract between the router (in either
//! form, ext_proc or in-process) and the shipped Envoy configs, whose route reads the cluster from
//! [`CLUSTER_HEADER`] and whose `stateful_session` filter reads the pinned host from
//! [`SESSION_HOST_HEADER`]. Both front-ends apply the same [`HeaderChanges`].

use super::Decision;

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
/// Set by the ext_proc form to `1` on requests whose answer its observer filter need not see, so
/// Envoy skips that filter (`ExtensionWithMatcher` in deploy/envoy.yaml).
pub const SKIP_OBSERVER_HEADER: &str = "x-router-skip-observer";

/// On responses, with `expose_decision`: the model the upstream saw.
pub const RESPONSE_MODEL_HEADER: &str = "x-router-model";
/// On responses, with `expose_decision`: why the route was chosen.
pub const RESPONSE_REASON_HEADER: &str = "x-router-reason";
/// On responses, with `expose_decision`: the winning category, if classification chose the model.
pub const RESPONSE_CATEGORY_HEADER: &str = "x-router-category";

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

/// Request headers to set (overwriting) and to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    pub set: Vec<(&'static str, String)>,
    pub remove: Vec<&'static str>,
}

impl HeaderChanges {
    /// Removes every routing header (before the decision is known).
    pub fn strip_routing_headers() -> Self {
        HeaderChanges {
            set: Vec::new(),
            remove: ROUTING_HEADERS.to_vec(),
        }
    }

    /// Sets `name` to `value` when there is a value, else removes it, so no client-sent value
    /// survives.
    pub fn set_or_remove(&mut self, name: &'static str, value: Option<String>) {
        match value {
            Some(v) => self.set.push((name, v)),
            None => self.remove.push(name),
        }
    }
}

/// How a front-end pins a request to one host of its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinBy {
    /// Envoy's `stateful_session` filter reads the host from [`SESSION_HOST_HEADER`] (the
    /// ext_proc form).
    SessionHeader,
    /// The filter sets Envoy's upstream override host itself (the module): no header carries it.
    OverrideHost,
}

/// The header changes that carry `decision` upstream: the routing headers (set or removed), a
/// corrected `content-length` when the body was rewritten and the request declared one, and for
/// requests that create state `accept-encoding: identity`, so the answer the router learns from is
/// never compressed. The ext_proc form adds [`SKIP_OBSERVER_HEADER`] itself.
pub fn request_headers(decision: &Decision, declared_length: bool, pin: PinBy) -> HeaderChanges {
    use base64::Engine as _;
    let mut changes = HeaderChanges {
        set: vec![
            (CLUSTER_HEADER, decision.target.cluster.clone()),
            (REASON_HEADER, decision.reason().as_str().to_owned()),
        ],
        remove: Vec::new(),
    };
    let session_host = match pin {
        PinBy::SessionHeader => decision
            .target
            .host
            .as_deref()
            .map(|h| base64::engine::general_purpose::STANDARD.encode(h)),
        PinBy::OverrideHost => None,
    };
    changes.set_or_remove(MODEL_HEADER, decision.model().map(str::to_owned));
    changes.set_or_remove(CATEGORY_HEADER, decision.category().map(str::to_owned));
    changes.set_or_remove(
        CLASSIFIED_MODEL_HEADER,
        decision.classified_model().map(str::to_owned),
    );
    changes.set_or_remove(SESSION_HOST_HEADER, session_host);
    changes.remove.push(DESTINATION_HEADER);
    if let Some(body) = decision.body.as_ref().filter(|_| declared_length) {
        changes.set.push(("content-length", body.len().to_string()));
    }
    if decision.kind.creates_state() {
        changes.set.push(("accept-encoding", "identity".to_owned()));
    }
    changes
}

/// The response headers that tell the client the decision (`expose_decision`): the model, the
/// reason and the category, each set or removed so an upstream's own value never passes for the
/// router's. Never a host or an address.
pub fn response_headers(decision: &Decision) -> HeaderChanges {
    let mut changes = HeaderChanges::default();
    changes.set_or_remove(RESPONSE_MODEL_HEADER, decision.model().map(str::to_owned));
    changes.set_or_remove(
        RESPONSE_REASON_HEADER,
        Some(decision.reason().as_str().to_owned()),
    );
    changes.set_or_remove(
        RESPONSE_CATEGORY_HEADER,
        decision.category().map(str::to_owned),
    );
    changes
}
