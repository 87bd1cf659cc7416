//! One Envoy ext_proc stream (one HTTP request) as a state machine.
//!
//! Envoy sends the request's phases in order and waits for exactly one reply of the matching kind
//! to each. The machine buffers the body only for kinds whose route depends on it, decides once,
//! and answers every later message with a plain "continue" — except that for requests creating
//! state it also watches the response headers and reads a JSON answer's id (see `observe`). A
//! message that breaks the protocol (body before headers, headers twice, anything after an error
//! reply) ends the stream with a gRPC error instead of a guess, and Envoy applies its configured
//! failure mode.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    processing_request::Request,
};
use envoy_types::pb::google::protobuf::Struct;

use super::envoy::{self as msg, header};
use super::observe::{Capture, IdCapture, attribute};
use super::pending::PendingIds;
use super::{
    CATEGORY_HEADER, CLASSIFIED_MODEL_HEADER, CLUSTER_HEADER, DESTINATION_HEADER, MODEL_HEADER,
    REASON_HEADER, ROUTING_HEADERS, SESSION_HOST_HEADER, SKIP_OBSERVER_HEADER,
};
use crate::affinity::{AffinityStore, Location};
use crate::config::RoutingTable;
use crate::openai::{ApiError, RequestKind};
use crate::routing::{self, Decision, RequestMeta};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::LearnSource;

/// Envoy sent something the protocol does not allow at this point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ext_proc protocol violation: {0}")]
pub struct ProtocolViolation(pub &'static str);

impl From<ProtocolViolation> for tonic::Status {
    fn from(v: ProtocolViolation) -> Self {
        tonic::Status::invalid_argument(v.to_string())
    }
}

enum Phase {
    /// Nothing seen yet.
    AwaitingHeaders,
    /// The route depends on the body; chunks accumulate until end of stream.
    Buffering(Buffered),
    /// The decision is made (or not needed); later messages are only acknowledged.
    Forwarded,
    /// An error reply ended the request; Envoy sends nothing more.
    Finished,
}

struct Buffered {
    kind: RequestKind,
    request_id: String,
    body: Vec<u8>,
    /// Whether the client sent `content-length` (then it must be corrected on a rewrite; with
    /// chunked transfer encoding there is none to correct).
    had_content_length: bool,
    /// Chunks already answered with "drop" (STREAMED mode): the final reply must carry them all.
    withheld_chunks: usize,
}

/// The state of one stream. The routing table is the one current when the stream started, so a
/// config reload never changes a request halfway.
pub struct StreamState {
    table: Arc<RoutingTable>,
    store: Arc<dyn AffinityStore>,
    metrics: Arc<Metrics>,
    /// Streamed responses whose id the observer has yet to learn.
    pending: Arc<PendingIds>,
    phase: Phase,
    learning: Learning,
    /// Envoy's `x-request-id`, carried by every log line about this request.
    request_id: String,
}

/// Watching the response: to learn the id a JSON answer creates (SSE is left to the observer
/// filter), and to notice a pinned host that was not used.
enum Learning {
    /// The request creates no state, learning is off, or there is nothing (more) to learn.
    Off,
    /// Waiting for the response headers of a request routed to `routed_cluster`: to learn the id
    /// it creates (`learn`), and to notice when it was served by another host than `pinned_host`.
    AwaitingResponse {
        routed_cluster: String,
        pinned_host: Option<String>,
        learn: bool,
    },
    /// A 2xx JSON response from `location`: its buffered body holds the id.
    Capturing {
        location: Location,
        capture: IdCapture,
    },
}

impl StreamState {
    /// A stream routed with `table`, asking `store` about state ids, announcing streamed responses
    /// to `pending`.
    pub fn new(
        table: Arc<RoutingTable>,
        store: Arc<dyn AffinityStore>,
        metrics: Arc<Metrics>,
        pending: Arc<PendingIds>,
    ) -> Self {
        StreamState {
            table,
            store,
            metrics,
            pending,
            phase: Phase::AwaitingHeaders,
            learning: Learning::Off,
            request_id: String::new(),
        }
    }

    /// Handles one message from Envoy and returns the one reply it needs.
    pub async fn handle(
        &mut self,
        mut request: ProcessingRequest,
    ) -> Result<ProcessingResponse, ProtocolViolation> {
        let attributes = std::mem::take(&mut request.attributes);
        if matches!(self.phase, Phase::Finished) {
            return Err(ProtocolViolation(
                "message after the request was answered with an error",
            ));
        }
        match request.request {
            Some(Request::RequestHeaders(headers)) => self.on_request_headers(headers).await,
            Some(Request::RequestBody(body)) => self.on_request_body(body).await,
            Some(Request::RequestTrailers(_)) => {
                match std::mem::replace(&mut self.phase, Phase::Forwarded) {
                    Phase::Buffering(_) => {
                        self.phase = Phase::Finished;
                        Ok(msg::error_reply(&ApiError::unsupported(
                            "trailers_not_supported",
                            "request trailers are not supported on this endpoint",
                        )))
                    }
                    Phase::AwaitingHeaders => {
                        Err(ProtocolViolation("request trailers before headers"))
                    }
                    _ => Ok(msg::request_trailers_reply()),
                }
            }
            Some(Request::ResponseHeaders(h)) => Ok(self.on_response_headers(&h, &attributes)),
            Some(Request::ResponseBody(b)) => Ok(self.on_response_body(&b).await),
            Some(Request::ResponseTrailers(_)) => Ok(msg::response_trailers_reply()),
            None => Err(ProtocolViolation("message without a request")),
        }
    }

    async fn on_request_headers(
        &mut self,
        headers: HttpHeaders,
    ) -> Result<ProcessingResponse, ProtocolViolation> {
        if !matches!(self.phase, Phase::AwaitingHeaders) {
            return Err(ProtocolViolation("request headers twice"));
        }
        let map = headers.headers.as_ref();
        let method = header(map, ":method").unwrap_or_default();
        let path = header(map, ":path").unwrap_or_default();
        let upgrade = header(map, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let request_id = header(map, "x-request-id").unwrap_or_default().to_owned();
        self.request_id.clone_from(&request_id);
        let kind = RequestKind::classify(method, path, upgrade);

        let declared_length =
            header(map, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(encoding) = header(map, "content-encoding")
            .filter(|e| kind.needs_body() && !is_identity_encoding(e))
        {
            // The route depends on the body's text: a compressed body would be parsed as garbage
            // (or, in a bad case, forwarded with `model: "auto"` unrouted). Refuse it up front.
            return Ok(self.fail(&ApiError::unsupported_content_encoding(encoding)));
        }
        if kind.needs_body() && declared_length.is_some_and(|n| n > self.table.max_body_bytes()) {
            // Refuse before Envoy ships the body over gRPC.
            return Ok(self.fail(&ApiError::body_too_large(self.table.max_body_bytes())));
        }
        if kind.needs_body() && !headers.end_of_stream {
            let watch = self.learns(&kind);
            self.phase = Phase::Buffering(Buffered {
                kind,
                had_content_length: header(map, "content-length").is_some(),
                request_id,
                body: Vec::new(),
                withheld_chunks: 0,
            });
            let strip = HeaderMutation {
                remove_headers: ROUTING_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
                ..Default::default()
            };
            return Ok(msg::request_headers_reply(
                msg::common(strip, None, false),
                Some(msg::request_mode(true, watch)),
            ));
        }
        // No body to wait for: decide now (a body-bearing kind with no body is a 400).
        let body = kind.needs_body().then_some(&[][..]);
        let meta = RequestMeta {
            kind: &kind,
            request_id: &request_id,
        };
        match routing::route(&self.table, meta, body, self.store.as_ref()).await {
            Ok(decision) => {
                self.phase = Phase::Forwarded;
                self.decided(&decision);
                let learn = self.learns(&kind);
                let watch = learn || decision.host.is_some();
                if watch {
                    self.learning = Learning::AwaitingResponse {
                        routed_cluster: decision.cluster.clone(),
                        pinned_host: decision.host.clone(),
                        learn,
                    };
                }
                let observe = learn && decision.learn_from_stream;
                Ok(msg::request_headers_reply(
                    msg::common(
                        routing_mutation(&decision, &kind, None, observe),
                        None,
                        true,
                    ),
                    watch.then(|| msg::request_mode(false, true)),
                ))
            }
            Err(error) => Ok(self.fail(&error)),
        }
    }

    async fn on_request_body(
        &mut self,
        chunk: HttpBody,
    ) -> Result<ProcessingResponse, ProtocolViolation> {
        let buffered = match &mut self.phase {
            Phase::Buffering(b) => b,
            Phase::Forwarded => return Ok(msg::request_body_reply(Default::default())),
            Phase::AwaitingHeaders => return Err(ProtocolViolation("request body before headers")),
            Phase::Finished => return Err(ProtocolViolation("request body after an error reply")),
        };
        let limit = self.table.max_body_bytes();
        if buffered.body.len().saturating_add(chunk.body.len()) > limit {
            return Ok(self.fail(&ApiError::body_too_large(limit)));
        }
        buffered.body.extend_from_slice(&chunk.body);
        if !chunk.end_of_stream {
            // Only STREAMED-mode Envoy sends partial chunks: hold each back so the upstream
            // receives the (possibly rewritten) body once, whole, with the final reply.
            buffered.withheld_chunks += 1;
            return Ok(msg::request_body_reply(msg::common(
                HeaderMutation::default(),
                Some(msg::clear_body()),
                false,
            )));
        }
        let Phase::Buffering(buffered) = std::mem::replace(&mut self.phase, Phase::Forwarded)
        else {
            return Err(ProtocolViolation("request body after the decision"));
        };
        let meta = RequestMeta {
            kind: &buffered.kind,
            request_id: &buffered.request_id,
        };
        match routing::route(&self.table, meta, Some(&buffered.body), self.store.as_ref()).await {
            Ok(mut decision) => {
                self.metrics.body_size(buffered.body.len());
                self.decided(&decision);
                // Response headers were requested on the request headers only for kinds that
                // create state, so only those can be watched.
                if self.learns(&buffered.kind) {
                    self.learning = Learning::AwaitingResponse {
                        routed_cluster: decision.cluster.clone(),
                        pinned_host: decision.host.clone(),
                        learn: true,
                    };
                }
                let new_body = match decision.new_body.take() {
                    Some(body) => Some(body),
                    None if buffered.withheld_chunks > 0 => Some(buffered.body),
                    None => None,
                };
                let length = new_body
                    .as_ref()
                    .filter(|_| buffered.had_content_length)
                    .map(Vec::len);
                let observe = self.learns(&buffered.kind) && decision.learn_from_stream;
                Ok(msg::request_body_reply(msg::common(
                    routing_mutation(&decision, &buffered.kind, length, observe),
                    new_body.map(msg::replace_body),
                    true,
                )))
            }
            Err(error) => Ok(self.fail(&error)),
        }
    }

    /// Whether the response to a request of this kind should teach the router an id.
    fn learns(&self, kind: &RequestKind) -> bool {
        kind.creates_state() && self.table.config().affinity.learn
    }

    /// A 2xx JSON response to a state-creating request: ask Envoy for its body (held until the
    /// id is recorded). Anything else (errors, SSE, compressed bodies) passes untouched.
    fn on_response_headers(
        &mut self,
        headers: &HttpHeaders,
        attributes: &HashMap<String, Struct>,
    ) -> ProcessingResponse {
        let Learning::AwaitingResponse {
            routed_cluster,
            pinned_host,
            learn,
        } = std::mem::replace(&mut self.learning, Learning::Off)
        else {
            return msg::response_headers_reply(None);
        };
        let served_by = attribute(attributes, "upstream.address");
        if pinned_host.is_some() && served_by.is_some() && pinned_host != served_by {
            // Envoy could not use the pinned host (gone or unhealthy) and load-balanced instead.
            tracing::debug!(pinned = ?pinned_host, served = ?served_by, "pinned host not used");
            self.metrics.moved_host();
        }
        if !learn {
            return msg::response_headers_reply(None);
        }
        let map = headers.headers.as_ref();
        let ok = header(map, ":status").is_some_and(|s| s.starts_with('2'));
        let json = header(map, "content-type").is_some_and(|c| c.contains("json"));
        let encoded =
            header(map, "content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let sse = header(map, "content-type").is_some_and(|c| c.contains("text/event-stream"));
        if ok && sse && !encoded && !headers.end_of_stream && !self.request_id.is_empty() {
            // The observer learns this stream's id; until it has, continuations wait for it.
            self.pending.open(&self.request_id);
        }
        if !ok || !json || encoded || headers.end_of_stream {
            return msg::response_headers_reply(None);
        }
        let location = Location {
            cluster: attribute(attributes, "xds.cluster_name").unwrap_or(routed_cluster),
            host: served_by,
        };
        self.learning = Learning::Capturing {
            location,
            capture: IdCapture::new(false),
        };
        msg::response_headers_reply(Some(msg::buffered_response_mode()))
    }

    async fn on_response_body(&mut self, body: &HttpBody) -> ProcessingResponse {
        if let Learning::Capturing { location, capture } = &mut self.learning {
            match capture.feed(&body.body, body.end_of_stream) {
                Capture::Pending => {}
                Capture::GaveUp => self.learning = Learning::Off,
                Capture::Found(id) => {
                    self.store.record(&id, location.clone()).await;
                    self.metrics.learned(LearnSource::Json);
                    self.learning = Learning::Off;
                }
            }
        }
        msg::response_body_reply()
    }

    /// Counts and logs a decision (at debug level: Envoy's access log is the per-request record).
    fn decided(&self, decision: &Decision) {
        self.metrics.decided(decision);
        tracing::debug!(
            request_id = %self.request_id,
            kind = decision.kind,
            model = decision.model.as_deref().unwrap_or_default(),
            cluster = %decision.cluster,
            reason = decision.reason.as_str(),
            category = decision.category.as_deref().unwrap_or_default(),
            "routed"
        );
    }

    fn fail(&mut self, error: &ApiError) -> ProcessingResponse {
        self.metrics.refused(error.code);
        tracing::info!(
            request_id = %self.request_id,
            status = error.status,
            code = error.code,
            "request refused: {}",
            error.message
        );
        self.phase = Phase::Finished;
        msg::error_reply(error)
    }
}

/// Whether a request `content-encoding` leaves the body as sent: empty or only `identity` codings
/// (a list such as `gzip, identity` still compresses).
fn is_identity_encoding(value: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
}

/// Header changes that carry a decision to Envoy: the routing headers the router sets, removal of
/// every other routing header (so no client-sent value survives), a corrected content-length, and
/// for requests that create state, `accept-encoding: identity` so the response the router learns
/// from is never compressed.
fn routing_mutation(
    decision: &Decision,
    kind: &RequestKind,
    content_length: Option<usize>,
    observe: bool,
) -> HeaderMutation {
    use base64::Engine as _;
    let session_host = decision
        .host
        .as_deref()
        .map(|h| base64::engine::general_purpose::STANDARD.encode(h));
    let mut set = vec![
        msg::set_header(CLUSTER_HEADER, &decision.cluster),
        msg::set_header(REASON_HEADER, decision.reason.as_str()),
    ];
    let optional = [
        (MODEL_HEADER, decision.model.as_deref()),
        (CATEGORY_HEADER, decision.category.as_deref()),
        (
            CLASSIFIED_MODEL_HEADER,
            decision.classified_model.as_deref(),
        ),
        (SESSION_HOST_HEADER, session_host.as_deref()),
        (DESTINATION_HEADER, None),
        (SKIP_OBSERVER_HEADER, (!observe).then_some("1")),
    ];
    let mut remove = Vec::new();
    for (name, value) in optional {
        match value {
            Some(v) => set.push(msg::set_header(name, v)),
            None => remove.push(name.to_owned()),
        }
    }
    if let Some(len) = content_length {
        set.push(msg::set_header("content-length", &len.to_string()));
    }
    if kind.creates_state() {
        set.push(msg::set_header("accept-encoding", "identity"));
    }
    HeaderMutation {
        set_headers: set,
        remove_headers: remove,
    }
}

#[cfg(test)]
mod tests {
    use super::is_identity_encoding;

    #[test]
    fn only_identity_codings_leave_the_body_readable() {
        for v in ["", "identity", "IDENTITY", " identity , identity"] {
            assert!(is_identity_encoding(v), "{v:?}");
        }
        for v in [
            "gzip",
            "GZIP",
            "deflate",
            "br",
            "zstd",
            "gzip, identity",
            "identity,br",
            "x",
        ] {
            assert!(!is_identity_encoding(v), "{v:?}");
        }
    }
}
