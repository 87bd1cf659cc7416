//! The one owner of Envoy's ext_proc protocol for a stream.
//!
//! Envoy sends a request's phases in order and, unless the filter runs in observability mode,
//! waits for exactly one reply of the matching kind to each. [`Driver`] keeps that contract: it
//! checks the order (body before headers, headers twice, anything after an error reply end the
//! stream with a gRPC error instead of a guess, and Envoy applies its failure mode), buffers a
//! request body the route depends on (also when Envoy streams it in pieces), enforces the body
//! limit while it does, turns the hooks' typed actions into replies and mode overrides, and sends
//! nothing at all in observability mode. What happens to a request is decided by the [`Hooks`]:
//! routing (`super::routing`) and learning from streams (`super::observe`).

use std::collections::HashMap;
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, ProcessingRequest, ProcessingResponse, processing_request::Request,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use responses_router_core::ApiError;
use responses_router_core::routing::headers::HeaderChanges;

use super::envoy as msg;

/// Envoy sent something the protocol does not allow at this point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ext_proc protocol violation: {0}")]
pub struct ProtocolViolation(pub &'static str);

impl From<ProtocolViolation> for tonic::Status {
    fn from(v: ProtocolViolation) -> Self {
        tonic::Status::invalid_argument(v.to_string())
    }
}

/// How Envoy should send a body to the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Whole, once; Envoy holds it until the router answers.
    Buffered,
    /// In pieces as they arrive; Envoy does not wait (the observer's static mode).
    Streamed,
}

/// Whether the router wants to see the response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// The response does not concern the router.
    Nothing,
    /// Send the response headers.
    Response,
}

/// What to do with request headers.
#[derive(Debug)]
pub enum OnRequestHeaders {
    /// Decided on the headers: forward with these changes, and re-pick the route.
    Forward {
        headers: HeaderChanges,
        watch: Watch,
    },
    /// The decision needs the body ([`BodyMode::Buffered`]): the routing headers are stripped
    /// meanwhile, and the request waits until the whole body has arrived.
    NeedBody { watch: Watch },
    /// Answer with this error; nothing reaches an upstream.
    Refuse(ApiError),
    /// Answer with a 200 and this JSON body (the router answers the request itself).
    Respond { body: Vec<u8> },
    /// Acknowledge without changes and keep the stream (an observer that wants the response).
    Continue,
    /// Nothing on this stream concerns the router (an observer closes it).
    Done,
}

/// What to do with a whole, buffered request body.
#[derive(Debug)]
pub enum OnRequestBody {
    /// Forward with these header changes and, when the body changed, the new body.
    Forward {
        headers: HeaderChanges,
        body: Option<Vec<u8>>,
    },
    /// Answer with this error; nothing reaches an upstream.
    Refuse(ApiError),
}

/// What to do with the response headers: change them, then read the body or be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnResponseHeaders {
    /// Response headers to set or remove (nothing in observability mode, which cannot change).
    pub headers: HeaderChanges,
    /// Read the response body, sent in this mode; `None`: nothing more to learn from it.
    pub body: Option<BodyMode>,
}

impl OnResponseHeaders {
    /// Leave the headers and read the body in `mode`.
    pub fn read(mode: BodyMode) -> Self {
        OnResponseHeaders {
            headers: HeaderChanges::default(),
            body: Some(mode),
        }
    }

    /// Leave the headers; nothing more to learn from this response.
    pub fn done() -> Self {
        OnResponseHeaders {
            headers: HeaderChanges::default(),
            body: None,
        }
    }
}

/// What to do after a response body chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnResponseBody {
    /// Keep sending.
    More,
    /// Nothing more to learn from this response.
    Done,
}

/// A headers message as the hooks see it.
pub struct Headers<'a> {
    map: Option<&'a HeaderMap>,
    attributes: &'a HashMap<String, Struct>,
    /// Nothing follows the headers in this direction (no body).
    pub end_of_stream: bool,
}

impl<'a> Headers<'a> {
    /// A header's value (names are lower-case in Envoy's map), preferring `raw_value`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        msg::header(self.map, name)
    }

    /// A string attribute Envoy attached (`request_attributes`/`response_attributes`), whatever
    /// key it is grouped under.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .values()
            .find_map(|s| match s.fields.get(name)?.kind.as_ref()? {
                Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
                _ => None,
            })
    }
}

/// What a stream does with each phase. The driver calls at most one hook per message, in
/// protocol order.
pub trait Hooks: Send {
    /// The request headers arrived.
    fn on_request_headers(
        &mut self,
        headers: &Headers<'_>,
    ) -> impl Future<Output = OnRequestHeaders> + Send;

    /// The whole request body arrived (only after [`OnRequestHeaders::NeedBody`]).
    fn on_request_body(&mut self, body: &[u8]) -> impl Future<Output = OnRequestBody> + Send;

    /// The response headers arrived.
    fn on_response_headers(
        &mut self,
        headers: &Headers<'_>,
    ) -> impl Future<Output = OnResponseHeaders> + Send;

    /// A response body chunk arrived (`end_of_stream` on the last).
    fn on_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> impl Future<Output = OnResponseBody> + Send;

    /// The request is being answered with `error` (by a hook, or by the driver itself: body over
    /// the limit, trailers while buffering), for counting and logging.
    fn refused(&mut self, error: &ApiError);
}

/// What the service does after a message.
#[derive(Debug)]
pub enum Outcome {
    /// Send this reply (boxed: it is large, and moves through the service's channel).
    Reply(Box<ProcessingResponse>),
    /// Send nothing (observability mode) and wait for the next message.
    Silent,
    /// Close the stream: nothing more is wanted (observability mode).
    Close,
}

/// Where the request side of the stream is.
enum RequestSide {
    /// Nothing seen yet.
    AwaitingHeaders,
    /// The route depends on the body; chunks accumulate until end of stream.
    Buffering(Buffer),
    /// Headers (and any body) handled; later messages are only acknowledged.
    Forwarded,
    /// An error reply ended the request; Envoy sends nothing more.
    Finished,
}

struct Buffer {
    body: Vec<u8>,
    /// Chunks already answered with "drop" (STREAMED mode): the final reply must carry them all.
    withheld_chunks: usize,
}

/// Drives one ext_proc stream through `H`.
pub struct Driver<H> {
    hooks: H,
    /// Observability mode: Envoy ignores replies, so none are sent.
    observing: bool,
    max_body_bytes: usize,
    request: RequestSide,
    response_headers_seen: bool,
    /// The response's hooks said they are done: later response messages are only acknowledged.
    response_done: bool,
}

impl<H: Hooks> Driver<H> {
    /// A driver for a stream Envoy waits on (the routing filter), buffering bodies up to
    /// `max_body_bytes`.
    pub fn replying(hooks: H, max_body_bytes: usize) -> Self {
        Driver {
            hooks,
            observing: false,
            max_body_bytes,
            request: RequestSide::AwaitingHeaders,
            response_headers_seen: false,
            response_done: false,
        }
    }

    /// A driver for an observability-mode stream: no replies; the stream closes when the hooks
    /// are done.
    pub fn observing(hooks: H) -> Self {
        Driver {
            observing: true,
            ..Self::replying(hooks, 0)
        }
    }

    /// The hooks, for inspection.
    #[cfg(test)]
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// Handles one message from Envoy.
    pub async fn handle(
        &mut self,
        mut message: ProcessingRequest,
    ) -> Result<Outcome, ProtocolViolation> {
        if matches!(self.request, RequestSide::Finished) {
            return Err(ProtocolViolation(
                "message after the request was answered with an error",
            ));
        }
        let attributes = std::mem::take(&mut message.attributes);
        let outcome = match message.request {
            Some(Request::RequestHeaders(h)) => {
                let headers = Headers {
                    map: h.headers.as_ref(),
                    attributes: &attributes,
                    end_of_stream: h.end_of_stream,
                };
                self.on_request_headers(&headers).await?
            }
            Some(Request::RequestBody(b)) => Outcome::Reply(Box::new(
                self.on_request_body(b.body, b.end_of_stream).await?,
            )),
            Some(Request::RequestTrailers(_)) => {
                Outcome::Reply(Box::new(self.on_request_trailers()?))
            }
            Some(Request::ResponseHeaders(h)) => {
                if std::mem::replace(&mut self.response_headers_seen, true) {
                    return Err(ProtocolViolation("response headers twice"));
                }
                let headers = Headers {
                    map: h.headers.as_ref(),
                    attributes: &attributes,
                    end_of_stream: h.end_of_stream,
                };
                let action = self.hooks.on_response_headers(&headers).await;
                self.response_done = action.body.is_none();
                let common = msg::common(mutation(&action.headers), None, false);
                match action.body {
                    Some(mode) => Outcome::Reply(Box::new(msg::response_headers_reply(
                        common,
                        Some(response_mode(mode)),
                    ))),
                    None => self.done(msg::response_headers_reply(common, None)),
                }
            }
            Some(Request::ResponseBody(b)) => {
                if !self.response_done {
                    let action = self.hooks.on_response_body(&b.body, b.end_of_stream).await;
                    self.response_done = action == OnResponseBody::Done;
                }
                if self.response_done {
                    self.done(msg::response_body_reply())
                } else {
                    Outcome::Reply(Box::new(msg::response_body_reply()))
                }
            }
            Some(Request::ResponseTrailers(_)) => {
                Outcome::Reply(Box::new(msg::response_trailers_reply()))
            }
            None => return Err(ProtocolViolation("message without a request")),
        };
        Ok(match outcome {
            Outcome::Reply(_) if self.observing => Outcome::Silent,
            outcome => outcome,
        })
    }

    /// The hooks want nothing more: an observer closes its stream, a replying stream answers and
    /// acknowledges whatever Envoy still sends.
    fn done(&self, reply: ProcessingResponse) -> Outcome {
        if self.observing {
            Outcome::Close
        } else {
            Outcome::Reply(Box::new(reply))
        }
    }

    async fn on_request_headers(
        &mut self,
        headers: &Headers<'_>,
    ) -> Result<Outcome, ProtocolViolation> {
        if !matches!(self.request, RequestSide::AwaitingHeaders) {
            return Err(ProtocolViolation("request headers twice"));
        }
        self.request = RequestSide::Forwarded;
        let reply = match self.hooks.on_request_headers(headers).await {
            OnRequestHeaders::Forward { headers, watch } => msg::request_headers_reply(
                msg::common(mutation(&headers), None, true),
                (watch == Watch::Response).then(|| request_mode(None, watch)),
            ),
            OnRequestHeaders::NeedBody { watch } => {
                self.request = RequestSide::Buffering(Buffer {
                    body: Vec::new(),
                    withheld_chunks: 0,
                });
                msg::request_headers_reply(
                    msg::common(
                        mutation(&HeaderChanges::strip_routing_headers()),
                        None,
                        false,
                    ),
                    Some(request_mode(Some(BodyMode::Buffered), watch)),
                )
            }
            OnRequestHeaders::Refuse(error) => self.refuse(&error),
            OnRequestHeaders::Respond { body } => {
                self.request = RequestSide::Finished;
                msg::json_reply(200, body)
            }
            OnRequestHeaders::Continue => msg::request_headers_reply(Default::default(), None),
            OnRequestHeaders::Done => {
                return Ok(self.done(msg::request_headers_reply(Default::default(), None)));
            }
        };
        Ok(Outcome::Reply(Box::new(reply)))
    }

    async fn on_request_body(
        &mut self,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<ProcessingResponse, ProtocolViolation> {
        let buffer = match &mut self.request {
            RequestSide::Buffering(b) => b,
            RequestSide::Forwarded => return Ok(msg::request_body_reply(Default::default())),
            RequestSide::AwaitingHeaders => {
                return Err(ProtocolViolation("request body before headers"));
            }
            RequestSide::Finished => {
                return Err(ProtocolViolation("request body after an error reply"));
            }
        };
        if buffer.body.len().saturating_add(chunk.len()) > self.max_body_bytes {
            return Ok(self.refuse(&ApiError::body_too_large(self.max_body_bytes)));
        }
        if buffer.body.is_empty() && end_of_stream {
            buffer.body = chunk;
        } else {
            buffer.body.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            // Only STREAMED-mode Envoy sends partial chunks: hold each back so the upstream
            // receives the (possibly rewritten) body once, whole, with the final reply.
            buffer.withheld_chunks += 1;
            return Ok(msg::request_body_reply(msg::common(
                HeaderMutation::default(),
                Some(msg::clear_body()),
                false,
            )));
        }
        let RequestSide::Buffering(buffer) =
            std::mem::replace(&mut self.request, RequestSide::Forwarded)
        else {
            return Err(ProtocolViolation("request body after the decision"));
        };
        Ok(match self.hooks.on_request_body(&buffer.body).await {
            OnRequestBody::Forward { headers, body } => {
                let body = match body {
                    Some(body) => Some(body),
                    None if buffer.withheld_chunks > 0 => Some(buffer.body),
                    None => None,
                };
                msg::request_body_reply(msg::common(
                    mutation(&headers),
                    body.map(msg::replace_body),
                    true,
                ))
            }
            OnRequestBody::Refuse(error) => self.refuse(&error),
        })
    }

    fn on_request_trailers(&mut self) -> Result<ProcessingResponse, ProtocolViolation> {
        match std::mem::replace(&mut self.request, RequestSide::Forwarded) {
            RequestSide::Buffering(_) => Ok(self.refuse(&ApiError::unsupported(
                "trailers_not_supported",
                "request trailers are not supported on this endpoint",
            ))),
            RequestSide::AwaitingHeaders => {
                Err(ProtocolViolation("request trailers before headers"))
            }
            side => {
                self.request = side;
                Ok(msg::request_trailers_reply())
            }
        }
    }

    fn refuse(&mut self, error: &ApiError) -> ProcessingResponse {
        self.hooks.refused(error);
        self.request = RequestSide::Finished;
        msg::error_reply(error)
    }
}

/// The mode the router asks for on request headers. Every field is set because a `mode_override`
/// replaces the whole mode (an unset header mode means SEND).
fn request_mode(body: Option<BodyMode>, watch: Watch) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: match watch {
            Watch::Response => HeaderSendMode::Send,
            Watch::Nothing => HeaderSendMode::Skip,
        } as i32,
        request_body_mode: body_send_mode(body) as i32,
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// The mode the router asks for on response headers, to read the response body: for a JSON
/// answer, Envoy holds the (small) body until the router has recorded its id, so the client cannot
/// continue the conversation before the router knows where it lives.
fn response_mode(body: BodyMode) -> ProcessingMode {
    ProcessingMode {
        response_body_mode: body_send_mode(Some(body)) as i32,
        ..request_mode(None, Watch::Response)
    }
}

fn body_send_mode(body: Option<BodyMode>) -> BodySendMode {
    match body {
        None => BodySendMode::None,
        Some(BodyMode::Buffered) => BodySendMode::Buffered,
        Some(BodyMode::Streamed) => BodySendMode::Streamed,
    }
}

/// The header mutation for `changes` (values only in `raw_value`, as Envoy requires).
fn mutation(changes: &HeaderChanges) -> HeaderMutation {
    HeaderMutation {
        set_headers: changes
            .set
            .iter()
            .map(|(name, value)| msg::set_header(name, value))
            .collect(),
        remove_headers: changes.remove.iter().map(|h| (*h).to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::ext_proc::v3::{
        HttpBody, HttpHeaders, HttpTrailers, processing_response::Response,
    };

    /// Records what the driver asked and answers from a script.
    #[derive(Default)]
    struct Script {
        need_body: bool,
        refuse_headers: bool,
        read_response: Option<BodyMode>,
        bodies: Vec<Vec<u8>>,
        refused: Vec<&'static str>,
        response_chunks: usize,
    }

    impl Hooks for Script {
        async fn on_request_headers(&mut self, _: &Headers<'_>) -> OnRequestHeaders {
            if self.refuse_headers {
                OnRequestHeaders::Refuse(ApiError::invalid_json("no"))
            } else if self.need_body {
                OnRequestHeaders::NeedBody {
                    watch: Watch::Response,
                }
            } else {
                OnRequestHeaders::Forward {
                    headers: HeaderChanges {
                        set: vec![("x-router-cluster", "c".into())],
                        remove: vec![],
                    },
                    watch: Watch::Nothing,
                }
            }
        }

        async fn on_request_body(&mut self, body: &[u8]) -> OnRequestBody {
            self.bodies.push(body.to_vec());
            OnRequestBody::Forward {
                headers: HeaderChanges::default(),
                body: None,
            }
        }

        async fn on_response_headers(&mut self, _: &Headers<'_>) -> OnResponseHeaders {
            OnResponseHeaders {
                headers: HeaderChanges {
                    set: vec![("x-router-model", "m".into())],
                    remove: vec![],
                },
                body: self.read_response,
            }
        }

        async fn on_response_body(&mut self, _: &[u8], end: bool) -> OnResponseBody {
            self.response_chunks += 1;
            if end {
                OnResponseBody::Done
            } else {
                OnResponseBody::More
            }
        }

        fn refused(&mut self, error: &ApiError) {
            self.refused.push(error.code);
        }
    }

    fn request_headers(end_of_stream: bool) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![HeaderValue {
                        key: ":path".into(),
                        raw_value: b"/v1/responses".to_vec(),
                        ..Default::default()
                    }],
                }),
                end_of_stream,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn request_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(Request::RequestBody(HttpBody {
                body: bytes.to_vec(),
                end_of_stream,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn response_headers() -> ProcessingRequest {
        ProcessingRequest {
            request: Some(Request::ResponseHeaders(HttpHeaders::default())),
            ..Default::default()
        }
    }

    fn response_body(end_of_stream: bool) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(Request::ResponseBody(HttpBody {
                body: b"x".to_vec(),
                end_of_stream,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn reply(outcome: Result<Outcome, ProtocolViolation>) -> ProcessingResponse {
        match outcome {
            Ok(Outcome::Reply(r)) => *r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn decided_on_headers_forwards_with_a_route_repick() {
        let mut d = Driver::replying(Script::default(), 100);
        let r = reply(d.handle(request_headers(true)).await);
        let Some(Response::RequestHeaders(h)) = r.response else {
            panic!("not a headers reply: {r:?}")
        };
        let common = h.response.unwrap();
        assert!(common.clear_route_cache);
        assert_eq!(common.header_mutation.unwrap().set_headers.len(), 1);
        assert!(r.mode_override.is_none(), "no response watch, no override");
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_withheld_then_sent_whole_once() {
        let hooks = Script {
            need_body: true,
            ..Default::default()
        };
        let mut d = Driver::replying(hooks, 100);
        let r = reply(d.handle(request_headers(false)).await);
        let mode = r.mode_override.unwrap();
        assert_eq!(mode.request_body_mode, BodySendMode::Buffered as i32);
        assert_eq!(mode.response_header_mode, HeaderSendMode::Send as i32);
        let r = reply(d.handle(request_body(b"ab", false)).await);
        let Some(Response::RequestBody(b)) = r.response else {
            panic!("not a body reply")
        };
        assert!(b.response.unwrap().body_mutation.is_some(), "chunk dropped");
        let r = reply(d.handle(request_body(b"cd", true)).await);
        assert_eq!(d.hooks().bodies, [b"abcd".to_vec()]);
        let Some(Response::RequestBody(b)) = r.response else {
            panic!("not a body reply")
        };
        let common = b.response.unwrap();
        assert!(common.clear_route_cache);
        assert!(
            common.body_mutation.is_some(),
            "withheld chunks are sent whole"
        );
    }

    #[tokio::test]
    async fn over_the_limit_while_buffering_is_a_413_and_ends_the_stream() {
        let hooks = Script {
            need_body: true,
            ..Default::default()
        };
        let mut d = Driver::replying(hooks, 3);
        reply(d.handle(request_headers(false)).await);
        let r = reply(d.handle(request_body(b"abcd", true)).await);
        let Some(Response::ImmediateResponse(ir)) = r.response else {
            panic!("not an error reply")
        };
        assert_eq!(ir.status.unwrap().code, 413);
        assert_eq!(d.hooks().refused, ["request_too_large"]);
        assert!(d.handle(response_headers()).await.is_err());
    }

    #[tokio::test]
    async fn protocol_order_is_enforced() {
        let mut d = Driver::replying(Script::default(), 100);
        assert!(d.handle(request_body(b"x", true)).await.is_err());
        let mut d = Driver::replying(Script::default(), 100);
        let trailers = ProcessingRequest {
            request: Some(Request::RequestTrailers(HttpTrailers::default())),
            ..Default::default()
        };
        assert!(d.handle(trailers.clone()).await.is_err());
        let mut d = Driver::replying(Script::default(), 100);
        reply(d.handle(request_headers(true)).await);
        assert!(d.handle(request_headers(true)).await.is_err());
        let mut d = Driver::replying(Script::default(), 100);
        reply(d.handle(request_headers(true)).await);
        reply(d.handle(response_headers()).await);
        assert!(d.handle(response_headers()).await.is_err());
        assert!(
            d.handle(ProcessingRequest::default()).await.is_err(),
            "an empty message"
        );
        let mut d = Driver::replying(
            Script {
                refuse_headers: true,
                ..Default::default()
            },
            100,
        );
        reply(d.handle(request_headers(true)).await);
        assert!(d.handle(trailers).await.is_err(), "after an error reply");
    }

    #[tokio::test]
    async fn trailers_while_buffering_are_refused() {
        let hooks = Script {
            need_body: true,
            ..Default::default()
        };
        let mut d = Driver::replying(hooks, 100);
        reply(d.handle(request_headers(false)).await);
        let trailers = ProcessingRequest {
            request: Some(Request::RequestTrailers(HttpTrailers::default())),
            ..Default::default()
        };
        let r = reply(d.handle(trailers).await);
        assert!(matches!(r.response, Some(Response::ImmediateResponse(_))));
        assert_eq!(d.hooks().refused, ["trailers_not_supported"]);
    }

    #[tokio::test]
    async fn reading_the_response_body_overrides_the_mode() {
        let hooks = Script {
            read_response: Some(BodyMode::Buffered),
            ..Default::default()
        };
        let mut d = Driver::replying(hooks, 100);
        reply(d.handle(request_headers(true)).await);
        let r = reply(d.handle(response_headers()).await);
        assert_eq!(
            r.mode_override.as_ref().unwrap().response_body_mode,
            BodySendMode::Buffered as i32
        );
        let Some(Response::ResponseHeaders(h)) = r.response else {
            panic!("not a response-headers reply")
        };
        let set = h.response.unwrap().header_mutation.unwrap().set_headers;
        assert_eq!(set[0].header.as_ref().unwrap().key, "x-router-model");
        let r = reply(d.handle(response_body(true)).await);
        assert!(matches!(r.response, Some(Response::ResponseBody(_))));
        assert_eq!(d.hooks().response_chunks, 1);
    }

    #[tokio::test]
    async fn an_observer_never_replies_and_closes_when_done() {
        let hooks = Script {
            read_response: Some(BodyMode::Streamed),
            ..Default::default()
        };
        let mut d = Driver::observing(hooks);
        assert!(matches!(
            d.handle(response_headers()).await,
            Ok(Outcome::Silent)
        ));
        assert!(matches!(
            d.handle(response_body(false)).await,
            Ok(Outcome::Silent)
        ));
        assert!(matches!(
            d.handle(response_body(true)).await,
            Ok(Outcome::Close)
        ));
        let mut d = Driver::observing(Script::default());
        assert!(
            matches!(d.handle(response_headers()).await, Ok(Outcome::Close)),
            "nothing to read: closed at once"
        );
    }
}
