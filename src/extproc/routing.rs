//! The routing filter's hooks: decide on the headers or the buffered body through the core, carry
//! the decision to Envoy, and learn where a JSON answer's new state lives before the client sees
//! it (Envoy holds that small body until the id is recorded, so a client can never continue the
//! conversation before the router knows where it is). SSE answers are learned by the observer
//! filter (`super::observe`); this stream only announces them to [`PendingIds`].

use std::sync::Arc;

use responses_router_core::affinity::Location;
use responses_router_core::config::RoutingTable;
use responses_router_core::learn::{Capture, Format, IdCapture};
use responses_router_core::routing::headers::{self, HeaderChanges, PinBy, SKIP_OBSERVER_HEADER};
use responses_router_core::routing::{self, Decision, Expect, RequestHead, ResponseWatch};
use responses_router_core::{ApiError, RequestKind};

use super::driver::{
    BodyMode, Headers, Hooks, OnRequestBody, OnRequestHeaders, OnResponseBody, OnResponseHeaders,
    Watch,
};
use super::pending::PendingIds;
use crate::store::{self, Store};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{DecisionLabels, LearnSource};

/// One routed request. The routing table is the one current when the stream started, so a config
/// reload never changes a request halfway.
pub struct RoutingHooks {
    table: Arc<RoutingTable>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Streamed responses whose id the observer has yet to learn.
    pending: Arc<PendingIds>,
    /// Envoy's `x-request-id`, carried by every log line about this request.
    request_id: String,
    /// The request kind, while its body is awaited.
    kind: Option<RequestKind>,
    /// Whether the client sent `content-length` (then it must be corrected on a rewrite; with
    /// chunked transfer encoding there is none to correct).
    declared_length: bool,
    learning: Learning,
}

/// Watching the response: to learn the id a JSON answer creates, and to notice a pinned host
/// that was not used.
enum Learning {
    /// Nothing (more) to watch.
    Off,
    /// Waiting for the response headers: to learn the id the response creates, to tell the
    /// client the decision, and to notice a pinned request served by another host.
    AwaitingResponse(ResponseWatch),
    /// A 2xx JSON response from `location`: its buffered body holds the id.
    Capturing {
        location: Location,
        capture: IdCapture,
    },
}

impl RoutingHooks {
    /// Hooks routing with `table`, asking `store` about state ids, announcing streamed responses
    /// to `pending`.
    pub fn new(
        table: Arc<RoutingTable>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        pending: Arc<PendingIds>,
    ) -> Self {
        RoutingHooks {
            table,
            store,
            metrics,
            pending,
            request_id: String::new(),
            kind: None,
            declared_length: false,
            learning: Learning::Off,
        }
    }

    /// Prepares the request, asks the store about the state it names, and decides.
    async fn route(&self, kind: &RequestKind, body: Option<&[u8]>) -> Result<Decision, ApiError> {
        let prepared = routing::prepare(&self.table, kind, &self.request_id, body)?;
        let pinned = store::pinned(self.store.as_ref(), &prepared).await;
        routing::decide(&self.table, &prepared, pinned.as_ref())
    }

    /// Counts and logs a decision, remembers what to watch on the response, and returns the
    /// header changes that carry it to Envoy.
    fn carry_out(&mut self, decision: &Decision) -> (HeaderChanges, Watch) {
        self.metrics.decided(&labels(decision));
        if let Some(outcome) = decision.affinity() {
            self.metrics.affinity_outcome(outcome.as_str());
        }
        tracing::debug!(
            request_id = %self.request_id,
            kind = decision.kind.name(),
            model = decision.model().unwrap_or_default(),
            cluster = %decision.target.cluster,
            reason = decision.reason().as_str(),
            category = decision.category().unwrap_or_default(),
            "routed"
        );
        let watch = match ResponseWatch::of(decision) {
            Some(watching) => {
                self.learning = Learning::AwaitingResponse(watching);
                Watch::Response
            }
            None => Watch::Nothing,
        };
        let mut changes =
            headers::request_headers(decision, self.declared_length, PinBy::SessionHeader);
        // Only a stream that creates state needs the observer filter: every other request skips it.
        let observe = decision.learns() == Some(Expect::Stream);
        changes.set_or_remove(SKIP_OBSERVER_HEADER, (!observe).then(|| "1".to_owned()));
        (changes, watch)
    }

    /// What a response to a state-creating request lets the router learn: a 2xx JSON body is
    /// read whole (Envoy holds it until the id is recorded); an SSE stream is left to the
    /// observer filter, and announced to `pending` so continuations wait for it.
    fn learn_from(
        &mut self,
        headers: &Headers<'_>,
        watching: ResponseWatch,
        served_by: Option<String>,
    ) -> Option<BodyMode> {
        match Format::of_response(
            headers.get(":status"),
            headers.get("content-type"),
            headers.get("content-encoding"),
        ) {
            Some(Format::Json) => {
                let location = watching.location(headers.attribute("xds.cluster_name"), served_by);
                self.learning = Learning::Capturing {
                    location,
                    capture: IdCapture::new(Format::Json),
                };
                Some(BodyMode::Buffered)
            }
            Some(Format::EventStream) => {
                if !self.request_id.is_empty() {
                    // The observer learns this stream's id; until it has, continuations wait.
                    self.pending.open(&self.request_id);
                }
                None
            }
            None => None,
        }
    }
}

/// The decision's metric labels (the projection lives with the front-end that counts).
fn labels(decision: &Decision) -> DecisionLabels {
    DecisionLabels {
        gen_ai_operation_name: decision.kind.name(),
        reason: decision.reason().as_str(),
        gen_ai_request_model: decision.model().unwrap_or_default().to_owned(),
        cluster: decision.target.cluster.clone(),
        category: decision.category().unwrap_or_default().to_owned(),
    }
}

impl Hooks for RoutingHooks {
    async fn on_request_headers(&mut self, headers: &Headers<'_>) -> OnRequestHeaders {
        let upgrade = headers
            .get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let kind = RequestKind::from_request(
            headers.get(":method").unwrap_or_default(),
            headers.get(":path").unwrap_or_default(),
            upgrade,
        );
        self.request_id = headers.get("x-request-id").unwrap_or_default().to_owned();
        match routing::answer_locally(&self.table, &kind) {
            Some(Ok(reply)) => {
                self.metrics.answered(kind.name());
                return OnRequestHeaders::Respond { body: reply.body };
            }
            Some(Err(error)) => return OnRequestHeaders::Refuse(error),
            None => {}
        }
        let head = RequestHead {
            content_encoding: headers.get("content-encoding"),
            content_length: headers
                .get("content-length")
                .and_then(|v| v.trim().parse().ok()),
        };
        if let Err(error) = routing::check_head(&self.table, &kind, head) {
            return OnRequestHeaders::Refuse(error);
        }
        if kind.needs_body() && !headers.end_of_stream {
            self.declared_length = headers.get("content-length").is_some();
            // Response headers are requested now or never, before the decision is known.
            let watch = if routing::watches_response(&self.table, &kind) {
                Watch::Response
            } else {
                Watch::Nothing
            };
            self.kind = Some(kind);
            return OnRequestHeaders::NeedBody { watch };
        }
        // No body to wait for: decide now (a body-bearing kind with no body is a 400).
        let body = kind.needs_body().then_some(&[][..]);
        match self.route(&kind, body).await {
            Ok(decision) => {
                let (headers, watch) = self.carry_out(&decision);
                OnRequestHeaders::Forward { headers, watch }
            }
            Err(error) => OnRequestHeaders::Refuse(error),
        }
    }

    async fn on_request_body(&mut self, body: &[u8]) -> OnRequestBody {
        let Some(kind) = self.kind.take() else {
            return OnRequestBody::Refuse(ApiError::internal("a request body without its kind"));
        };
        match self.route(&kind, Some(body)).await {
            Ok(mut decision) => {
                self.metrics.body_size(body.len());
                let (headers, _) = self.carry_out(&decision);
                OnRequestBody::Forward {
                    headers,
                    body: decision.body.take(),
                }
            }
            Err(error) => OnRequestBody::Refuse(error),
        }
    }

    /// Adds the decision for the client when asked to; for a 2xx JSON response to a
    /// state-creating request, asks Envoy for its body (held until the id is recorded). Anything
    /// else (errors, SSE, compressed bodies) passes untouched.
    async fn on_response_headers(&mut self, headers: &Headers<'_>) -> OnResponseHeaders {
        let Learning::AwaitingResponse(mut watching) =
            std::mem::replace(&mut self.learning, Learning::Off)
        else {
            return OnResponseHeaders::done();
        };
        let served_by = headers.attribute("upstream.address");
        if watching.moved_host(served_by.as_deref()) {
            let pinned = &watching.pinned_host;
            tracing::debug!(?pinned, served = ?served_by, "pinned host not used");
            self.metrics.moved_host();
        }
        let decision_headers = std::mem::take(&mut watching.decision_headers);
        let body = if !watching.learn || headers.end_of_stream {
            None
        } else {
            self.learn_from(headers, watching, served_by)
        };
        OnResponseHeaders {
            headers: decision_headers,
            body,
        }
    }
    async fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> OnResponseBody {
        let Learning::Capturing { location, capture } = &mut self.learning else {
            return OnResponseBody::Done;
        };
        match capture.feed(chunk, end_of_stream) {
            Capture::Pending => OnResponseBody::More,
            Capture::GaveUp => {
                self.learning = Learning::Off;
                OnResponseBody::Done
            }
            Capture::Found(id) => {
                self.store.record(&id, location.clone()).await;
                self.metrics.learned(LearnSource::Json);
                self.learning = Learning::Off;
                OnResponseBody::Done
            }
        }
    }

    fn refused(&mut self, error: &ApiError) {
        self.metrics.refused(error.code);
        tracing::info!(
            request_id = %self.request_id,
            status = error.status,
            code = error.code,
            "request refused: {}",
            error.message
        );
    }
}
