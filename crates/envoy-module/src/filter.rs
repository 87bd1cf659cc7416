//! One HTTP stream through the module: the same behaviour as the ext_proc service, decided by the
//! same core, carried out through Envoy's filter callbacks instead of ext_proc messages.
//!
//! - Request headers: routing headers a client sent are removed; the model list is answered
//!   locally; compressed or oversized bodies are refused up front; a request whose route depends
//!   on its body is held until the body is whole, every other one is decided at once.
//! - Request body: buffered (only for those requests), limited to `max_body_bytes`, decided on,
//!   and replaced when the model was rewritten (`content-length` fixed).
//! - The decision: the cluster header plus a route-cache clear, the pinned host as Envoy's
//!   upstream override (falling back to load balancing when the host is gone), the routing
//!   headers the upstream sees.
//! - Response: the id a state-creating request creates is read as the response passes (a JSON
//!   body's leading `id`, or the first SSE event) and recorded before the client has the answer:
//!   a JSON answer's chunks wait until its id is known; a stream's chunks are never held. No
//!   observer filter and no pending-id wait are needed: the filter sees the response itself, in
//!   order.
//! - Sharing (Redis): memory first; an id memory does not know is asked of the shared store off
//!   the worker thread while the request waits (the store's own budget bounds the wait). A
//!   learned id is written there before the client has the answer: a JSON answer's chunks wait
//!   for the write, as the ext_proc form's answer waits; a stream's end waits only if the write
//!   is still in flight then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use responses_router_core::affinity::Location;
use responses_router_core::config::RoutingTable;
use responses_router_core::learn::{Capture, Format, IdCapture};
use responses_router_core::routing::headers::{self, PinBy, ROUTING_HEADERS};
use responses_router_core::routing::{self, Decision, RequestHead, ResponseWatch};
use responses_router_core::{ApiError, RequestKind};

use crate::host::{Counter, Histogram, Host, Resumer};
use crate::router::Router;

/// `on_scheduled` event: the shared store answered a lookup.
pub const EVENT_LOOKED_UP: u64 = 1;
/// `on_scheduled` event: the shared store took a learned id.
pub const EVENT_RECORDED: u64 = 2;

/// The request headers the decision reads, in the order `on_request_headers` takes them.
const READ_HEADERS: [&str; 6] = [
    ":method",
    ":path",
    "upgrade",
    "x-request-id",
    "content-encoding",
    "content-length",
];

/// What Envoy should do after a headers hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersFlow {
    Continue,
    /// Hold the headers: the body is awaited, or the request was answered locally.
    Stop,
}

/// What Envoy should do after a body hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFlow {
    Continue,
    /// Keep buffering: the route depends on the whole body.
    Buffer,
    /// Stop without buffering: the request was answered locally.
    Stop,
}

/// A request held until its body is whole.
struct AwaitingBody {
    kind: RequestKind,
    /// Whether the client sent `content-length` (then it is corrected on a rewrite).
    declared_length: bool,
}

/// A request waiting for the shared store to say where its state lives.
struct LookingUp {
    kind: RequestKind,
    declared_length: bool,
    /// Filled on the store's thread: `Some(answer)` once it answered.
    answer: Arc<Mutex<Option<Option<Location>>>>,
}

/// The module's state for one stream.
pub struct Stream {
    router: Arc<Router>,
    /// The table in force when the stream started: a reload never changes a request halfway.
    table: Arc<RoutingTable>,
    request_id: String,
    awaiting: Option<AwaitingBody>,
    looking_up: Option<LookingUp>,
    watching: Option<ResponseWatch>,
    capture: Option<(Location, IdCapture)>,
    /// The learned id's write to the shared store, once started.
    sharing: Option<Sharing>,
    /// The response is held (Envoy buffers it) until that write is done.
    holding: bool,
    /// The scheduler that wakes this stream, once one was needed.
    resumer: Option<Arc<dyn Resumer>>,
}

/// A learned id being written to the shared store.
struct Sharing {
    /// Set by the store's thread when the write finished (or gave up), before it resumes us.
    written: Arc<AtomicBool>,
    sse: bool,
}

/// What routing made of a request. (Returned once per request and consumed at once: boxing the
/// decision would cost an allocation per request for nothing.)
#[allow(clippy::large_enum_variant)]
enum Routed {
    Decided(Decision),
    /// The shared store was asked where the state lives; `on_scheduled` finishes the decision.
    LookingUp,
}

impl Drop for Stream {
    /// On the stream's worker (Envoy destroys the filter there): no resume may reach it after.
    fn drop(&mut self) {
        if let Some(resumer) = &self.resumer {
            resumer.close();
        }
    }
}

impl Stream {
    /// A stream routed by `router`'s table in force now.
    pub fn new(router: Arc<Router>) -> Self {
        let table = router.table();
        Stream {
            router,
            table,
            request_id: String::new(),
            awaiting: None,
            looking_up: None,
            watching: None,
            capture: None,
            sharing: None,
            holding: false,
            resumer: None,
        }
    }

    pub fn on_request_headers(&mut self, host: &mut impl Host, end_of_stream: bool) -> HeadersFlow {
        let started = Instant::now();
        // One read of the header map for every header the decision needs and every routing
        // header a client may have sent.
        let mut names = [""; READ_HEADERS.len() + ROUTING_HEADERS.len()];
        names[..READ_HEADERS.len()].copy_from_slice(&READ_HEADERS);
        names[READ_HEADERS.len()..].copy_from_slice(&ROUTING_HEADERS);
        let values = host.request_header_values(&names);
        let [
            method,
            path,
            upgrade,
            request_id,
            head_encoding,
            content_length,
        ] = std::array::from_fn(|i| values[i].as_deref());
        let method = method.unwrap_or_default();
        let path = path.unwrap_or_default();
        let upgrade = upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        self.request_id = request_id.unwrap_or_default().to_owned();
        // No client header may choose an upstream: every routing header present goes before
        // anything else (so later, every routing header this stream does not set is absent).
        for (name, value) in ROUTING_HEADERS.iter().zip(&values[READ_HEADERS.len()..]) {
            if value.is_some() {
                host.remove_request_header(name);
            }
        }
        let kind = RequestKind::from_request(method, path, upgrade);
        match routing::answer_locally(&self.table, &kind) {
            Some(Ok(reply)) => {
                host.increment(Counter::Answered, &[kind.name()]);
                host.send_response(
                    200,
                    &[("content-type", "application/json")],
                    &reply.body,
                    "responses_router_answered",
                );
                return HeadersFlow::Stop;
            }
            Some(Err(error)) => return self.refuse(host, &error),
            None => {}
        }
        let head = RequestHead {
            content_encoding: head_encoding,
            content_length: content_length.and_then(|v| v.trim().parse().ok()),
        };
        if let Err(error) = routing::check_head(&self.table, &kind, head) {
            return self.refuse(host, &error);
        }
        if kind.needs_body() && !end_of_stream {
            self.awaiting = Some(AwaitingBody {
                kind,
                declared_length: content_length.is_some(),
            });
            return HeadersFlow::Stop;
        }
        // No body to wait for: decide now (a body-bearing kind with no body is a 400).
        let body = kind.needs_body().then_some(&[][..]);
        let flow = match self.route(host, &kind, false, body) {
            Ok(Routed::Decided(decision)) => {
                self.carry_out(host, &decision, false);
                HeadersFlow::Continue
            }
            Ok(Routed::LookingUp) => HeadersFlow::Stop,
            Err(error) => self.refuse(host, &error),
        };
        host.record(Histogram::DecisionMicros, micros(started));
        flow
    }

    pub fn on_request_body(&mut self, host: &mut impl Host, end_of_stream: bool) -> BodyFlow {
        if self.looking_up.is_some() {
            // Decided on the headers but waiting for the shared store: the request (and the body
            // it carries anyway) is held until `on_scheduled` lets it go, never sent undecided.
            return BodyFlow::Buffer;
        }
        if self.awaiting.is_none() {
            return BodyFlow::Continue;
        }
        let limit = self.table.max_body_bytes();
        if host.request_body_len() > limit {
            self.awaiting = None;
            self.refuse(host, &ApiError::body_too_large(limit));
            return BodyFlow::Stop;
        }
        if !end_of_stream {
            return BodyFlow::Buffer;
        }
        let Some(awaiting) = self.awaiting.take() else {
            return BodyFlow::Continue;
        };
        let started = Instant::now();
        let body = host.request_body();
        let flow = match self.route(host, &awaiting.kind, awaiting.declared_length, Some(&body)) {
            Ok(Routed::Decided(decision)) => {
                self.carry_out(host, &decision, awaiting.declared_length);
                BodyFlow::Continue
            }
            // Held (buffered) until the shared store answers.
            Ok(Routed::LookingUp) => BodyFlow::Buffer,
            Err(error) => {
                self.refuse(host, &error);
                BodyFlow::Stop
            }
        };
        host.record(Histogram::DecisionMicros, micros(started));
        flow
    }

    /// Trailers while the body is awaited are refused, as the ext_proc form refuses them; while
    /// the shared store is asked, they wait with the rest of the request.
    pub fn on_request_trailers(&mut self, host: &mut impl Host) -> HeadersFlow {
        if self.looking_up.is_some() {
            return HeadersFlow::Stop;
        }
        if self.awaiting.take().is_none() {
            return HeadersFlow::Continue;
        }
        self.refuse(
            host,
            &ApiError::unsupported(
                "trailers_not_supported",
                "request trailers are not supported on this endpoint",
            ),
        )
    }

    pub fn on_response_headers(
        &mut self,
        host: &mut impl Host,
        end_of_stream: bool,
    ) -> HeadersFlow {
        let Some(watching) = self.watching.take() else {
            return HeadersFlow::Continue;
        };
        let served_by = host.upstream_address();
        if watching.moved_host(served_by.as_deref()) {
            host.increment(Counter::Affinity, &["moved_host"]);
        }
        for (name, value) in &watching.decision_headers.set {
            host.set_response_header(name, value);
        }
        for name in &watching.decision_headers.remove {
            host.remove_response_header(name);
        }
        if watching.learn && !end_of_stream {
            let format = Format::of_response(
                host.response_header(":status").as_deref(),
                host.response_header("content-type").as_deref(),
                host.response_header("content-encoding").as_deref(),
            );
            if let Some(format) = format {
                let location = watching.location(host.upstream_cluster(), served_by);
                self.capture = Some((location, IdCapture::new(format)));
            }
        }
        HeadersFlow::Continue
    }

    /// Reads the created id as the body passes, and records it before the client has the
    /// answer. A JSON answer's chunks are held until its id is known (backends write it first,
    /// so usually at the first chunk) and, with a shared store, until it is written there (as
    /// the ext_proc form holds the answer): Envoy hands an upstream's body over before its end of
    /// stream, and a client reading a content-length body has its answer at the last byte, so
    /// holding only the end would let it continue before the write. A stream's chunks all pass
    /// at once and only its end waits, if the write is still in flight then (it rarely is; the
    /// store's 50 ms budget bounds it): a stream has no length, its client sees the end only
    /// with Envoy's. So a client that has the whole answer can continue through any Envoy.
    pub fn on_response_body(&mut self, host: &mut impl Host, end_of_stream: bool) -> BodyFlow {
        if let Some((location, capture)) = self.capture.as_mut() {
            match capture.feed(&host.response_chunk(), end_of_stream) {
                Capture::Pending if capture.format() == Format::Json => return BodyFlow::Buffer,
                Capture::Pending => {}
                Capture::GaveUp => self.capture = None,
                Capture::Found(id) => {
                    let sse = capture.format() == Format::EventStream;
                    let location = location.clone();
                    self.capture = None;
                    self.learned(host, &id, &location, sse);
                }
            }
        }
        let Some(sse) = self.sharing.as_ref().map(|sharing| sharing.sse) else {
            return BodyFlow::Continue;
        };
        if self.holding || (self.write_in_flight() && (!sse || end_of_stream)) {
            self.holding = true;
            return BodyFlow::Buffer;
        }
        BodyFlow::Continue
    }

    /// A learned id's shared write has started and not finished.
    fn write_in_flight(&self) -> bool {
        self.sharing
            .as_ref()
            .is_some_and(|sharing| !sharing.written.load(Ordering::Acquire))
    }

    /// Records `id`'s location in memory and, with a shared store, starts writing it there.
    fn learned(&mut self, host: &mut impl Host, id: &str, location: &Location, sse: bool) {
        self.router.store().record(id, location);
        host.increment(Counter::LearnedIds, &[if sse { "sse" } else { "json" }]);
        crate::log::debug(|| format!("learned {id} on {} ({:?})", location.cluster, location.host));
        let Some(remote) = self.router.remote().cloned() else {
            return;
        };
        let written = Arc::new(AtomicBool::new(false));
        let resumer = self.resumer(host);
        let done = Arc::clone(&written);
        remote.record(
            id,
            location,
            Box::new(move |()| {
                done.store(true, Ordering::Release);
                resumer.resume(EVENT_RECORDED);
            }),
        );
        self.sharing = Some(Sharing { written, sse });
    }

    /// Response trailers wait while the answer is held for its id's shared write (a JSON answer
    /// with trailers), and end a stream as its last chunk would: they wait for a write still in
    /// flight (an HTTP/2 upstream may end a stream with trailers instead of an empty last
    /// chunk). The write's completion lets them go with the rest.
    pub fn on_response_trailers(&mut self) -> HeadersFlow {
        if self.holding || self.write_in_flight() {
            self.holding = true;
            HeadersFlow::Stop
        } else {
            HeadersFlow::Continue
        }
    }

    /// Finishes what waited for another thread: a decision waiting for the shared store's lookup,
    /// or a JSON answer waiting for its id to be shared.
    pub fn on_scheduled(&mut self, host: &mut impl Host, event: u64) {
        match event {
            EVENT_LOOKED_UP => {
                let Some(looking_up) = self.looking_up.take() else {
                    return;
                };
                let answer = looking_up
                    .answer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .flatten();
                let body = looking_up.kind.needs_body().then(|| host.request_body());
                let prepared = routing::prepare(
                    &self.table,
                    &looking_up.kind,
                    &self.request_id,
                    body.as_deref(),
                );
                let decided = prepared.and_then(|prepared| {
                    if let (Some(location), Some(state)) = (&answer, prepared.state()) {
                        // Known from now on in this process too (memory first).
                        self.router.store().record(state.id(), location);
                    }
                    routing::decide(&self.table, &prepared, answer.as_ref())
                });
                match decided {
                    Ok(decision) => {
                        self.carry_out(host, &decision, looking_up.declared_length);
                        host.continue_request();
                    }
                    Err(error) => {
                        self.refuse(host, &error);
                    }
                }
            }
            // A write that ended before the answer's end needed it wakes nothing.
            EVENT_RECORDED if self.holding => {
                self.holding = false;
                host.continue_response();
            }
            _ => {}
        }
    }

    /// This stream's resumer, created on first use.
    fn resumer(&mut self, host: &mut impl Host) -> Arc<dyn Resumer> {
        Arc::clone(self.resumer.get_or_insert_with(|| host.resumer()))
    }

    /// Prepares the request, looks up the state it names (memory first, then the shared store,
    /// off the worker), and decides when it can.
    fn route(
        &mut self,
        host: &mut impl Host,
        kind: &RequestKind,
        declared_length: bool,
        body: Option<&[u8]>,
    ) -> Result<Routed, ApiError> {
        let prepared = routing::prepare(&self.table, kind, &self.request_id, body)?;
        let pinned = match prepared.state() {
            None => None,
            Some(state) => match self.router.store().lookup(state.id()) {
                Some(found) => Some(found),
                None => {
                    if let Some(remote) = self.router.remote().cloned() {
                        let id = state.id().to_owned();
                        let answer = Arc::new(Mutex::new(None));
                        let filled = Arc::clone(&answer);
                        let resumer = self.resumer(host);
                        self.looking_up = Some(LookingUp {
                            kind: kind.clone(),
                            declared_length,
                            answer,
                        });
                        remote.lookup(
                            &id,
                            Box::new(move |found| {
                                *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
                                resumer.resume(EVENT_LOOKED_UP);
                            }),
                        );
                        return Ok(Routed::LookingUp);
                    }
                    None
                }
            },
        };
        routing::decide(&self.table, &prepared, pinned.as_ref()).map(Routed::Decided)
    }

    /// Carries the decision out: routing headers, the pinned host, the rewritten body, a route
    /// re-pick; counts it and remembers what to watch on the response.
    fn carry_out(&mut self, host: &mut impl Host, decision: &Decision, declared_length: bool) {
        // The routing headers were all removed on arrival: they are added (nothing to look for,
        // nothing to remove), the others set.
        let changes = headers::request_headers(decision, declared_length, PinBy::OverrideHost);
        debug_assert!(changes.remove.iter().all(|h| ROUTING_HEADERS.contains(h)));
        for (name, value) in &changes.set {
            if ROUTING_HEADERS.contains(name) {
                host.add_request_header(name, value);
            } else {
                host.set_request_header(name, value);
            }
        }
        if let Some(body) = &decision.body {
            host.replace_request_body(body);
        }
        if let Some(pinned) = &decision.target.host {
            host.override_upstream_host(pinned);
        }
        host.clear_route_cache();
        host.increment(
            Counter::Decisions,
            &[
                decision.kind.name(),
                decision.reason().as_str(),
                decision.model().unwrap_or_default(),
                &decision.target.cluster,
                decision.category().unwrap_or_default(),
            ],
        );
        if let Some(outcome) = decision.affinity() {
            host.increment(Counter::Affinity, &[outcome.as_str()]);
        }
        crate::log::debug(|| {
            format!(
                "routed {} {}: model={} cluster={} reason={} request_id={}",
                decision.kind.name(),
                decision.category().unwrap_or_default(),
                decision.model().unwrap_or_default(),
                decision.target.cluster,
                decision.reason().as_str(),
                self.request_id
            )
        });
        self.watching = ResponseWatch::of(decision);
    }

    /// Answers with an OpenAI-style error; nothing reaches an upstream.
    fn refuse(&mut self, host: &mut impl Host, error: &ApiError) -> HeadersFlow {
        self.awaiting = None;
        host.increment(Counter::Refusals, &[error.code]);
        crate::log::info(&format!(
            "request refused: {} {}: {} (request_id={})",
            error.status, error.code, error.message, self.request_id
        ));
        refuse(host, error);
        HeadersFlow::Stop
    }
}

/// Runs one request-phase hook of `stream` under [`caught`]: a panic is counted and the request
/// is answered with the router's 500 error; the hook then returns `stopped`.
pub fn guarded_hook<H: Host, T>(
    what: &str,
    stream: &mut Stream,
    host: &mut H,
    stopped: T,
    hook: impl FnOnce(&mut Stream, &mut H) -> T,
) -> T {
    caught(what, || hook(stream, host)).unwrap_or_else(|| {
        host.increment(Counter::Panics, &[]);
        refuse(
            host,
            &ApiError::internal("the router failed on this request"),
        );
        stopped
    })
}

/// Runs `f` under `catch_unwind`, since a panic must never unwind into Envoy's C++ (that aborts
/// the process): `None`, and the panic logged, when it panicked.
pub fn caught<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            crate::log::error(&format!("panic caught in {what}: {why}"));
        })
        .ok()
}

/// Sends `error` as the client's answer.
pub fn refuse(host: &mut impl Host, error: &ApiError) {
    host.send_response(
        error.status,
        &[
            ("content-type", "application/json"),
            ("x-router-error", error.code),
        ],
        &error.to_json(),
        &format!("responses_router_{}", error.code),
    );
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::host::Host;
    use crate::shared::{Done, Remote};

    const YAML: &str = r#"
max_body_bytes: 200
default_model: general-model
expose_decision: true
models:
  - name: general-model
    clusters: [{ name: general }]
  - name: code-model
    clusters: [{ name: code }]
clusters:
  - name: code
    pin_host: true
categories:
  - name: coding
    model: code-model
    keywords: [python]
"#;

    /// Envoy as a unit test plays it: header maps, a body, and what the module asked for.
    #[derive(Default)]
    struct FakeHost {
        request: HashMap<String, String>,
        response: HashMap<String, String>,
        buffered: Vec<u8>,
        received: Vec<u8>,
        response_chunk: Vec<u8>,
        sent: Option<(u16, Vec<u8>)>,
        route_cleared: bool,
        override_host: Option<String>,
        upstream: Option<String>,
        cluster: Option<String>,
        counted: Vec<(Counter, Vec<String>)>,
        resumer: Option<Arc<FakeResumer>>,
        continued_request: bool,
        continued_response: bool,
    }

    /// Records the events a stream asked to be woken with.
    #[derive(Default)]
    struct FakeResumer {
        events: Mutex<Vec<u64>>,
        closed: std::sync::atomic::AtomicBool,
    }

    impl Resumer for FakeResumer {
        fn resume(&self, event: u64) {
            if !self.closed.load(std::sync::atomic::Ordering::Relaxed) {
                self.events.lock().unwrap().push(event);
            }
        }
        fn close(&self) {
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A shared store whose answers the test releases by hand, as the store's thread would.
    #[derive(Default)]
    struct FakeRemote {
        known: Mutex<HashMap<String, Location>>,
        lookups: Mutex<Vec<(String, Done<Option<Location>>)>>,
        records: Mutex<Vec<(String, Done<()>)>>,
    }

    impl Remote for FakeRemote {
        fn lookup(&self, id: &str, done: Done<Option<Location>>) {
            self.lookups.lock().unwrap().push((id.to_owned(), done));
        }
        fn record(&self, id: &str, location: &Location, done: Done<()>) {
            self.known
                .lock()
                .unwrap()
                .insert(id.to_owned(), location.clone());
            self.records.lock().unwrap().push((id.to_owned(), done));
        }
    }

    impl FakeRemote {
        /// Answers every pending lookup from what was recorded.
        fn answer_lookups(&self) {
            for (id, done) in self.lookups.lock().unwrap().drain(..) {
                done(self.known.lock().unwrap().get(&id).cloned());
            }
        }

        fn finish_records(&self) {
            for (_, done) in self.records.lock().unwrap().drain(..) {
                done(());
            }
        }
    }

    impl FakeHost {
        fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Self {
            let mut host = FakeHost::default();
            host.request.insert(":method".into(), method.into());
            host.request.insert(":path".into(), path.into());
            for (k, v) in headers {
                host.request.insert((*k).into(), (*v).into());
            }
            host
        }

        fn counted(&self, counter: Counter) -> Vec<Vec<String>> {
            self.counted
                .iter()
                .filter(|(c, _)| *c == counter)
                .map(|(_, labels)| labels.clone())
                .collect()
        }
    }

    impl Host for FakeHost {
        fn request_header_values(&self, names: &[&str]) -> Vec<Option<String>> {
            names
                .iter()
                .map(|n| self.request.get(*n).cloned())
                .collect()
        }
        fn set_request_header(&mut self, name: &str, value: &str) {
            self.request.insert(name.into(), value.into());
        }
        fn add_request_header(&mut self, name: &str, value: &str) {
            let old = self.request.insert(name.into(), value.into());
            assert!(old.is_none(), "{name} added to a request that has it");
        }
        fn remove_request_header(&mut self, name: &str) {
            self.request.remove(name);
        }
        fn response_header(&self, name: &str) -> Option<String> {
            self.response.get(name).cloned()
        }
        fn set_response_header(&mut self, name: &str, value: &str) {
            self.response.insert(name.into(), value.into());
        }
        fn remove_response_header(&mut self, name: &str) {
            self.response.remove(name);
        }
        fn request_body_len(&self) -> usize {
            self.buffered.len() + self.received.len()
        }
        fn request_body(&self) -> Vec<u8> {
            [self.buffered.as_slice(), self.received.as_slice()].concat()
        }
        fn replace_request_body(&mut self, body: &[u8]) {
            self.buffered.clear();
            self.received = body.to_vec();
        }
        fn response_chunk(&self) -> Vec<u8> {
            self.response_chunk.clone()
        }
        fn send_response(&mut self, status: u16, _: &[(&str, &str)], body: &[u8], _: &str) {
            self.sent = Some((status, body.to_vec()));
        }
        fn clear_route_cache(&mut self) {
            self.route_cleared = true;
        }
        fn override_upstream_host(&mut self, host: &str) -> bool {
            self.override_host = Some(host.into());
            true
        }
        fn upstream_address(&self) -> Option<String> {
            self.upstream.clone()
        }
        fn upstream_cluster(&self) -> Option<String> {
            self.cluster.clone()
        }
        fn increment(&mut self, counter: Counter, labels: &[&str]) {
            self.counted
                .push((counter, labels.iter().map(|l| (*l).to_owned()).collect()));
        }
        fn record(&mut self, _: Histogram, _: u64) {}
        fn resumer(&mut self) -> Arc<dyn Resumer> {
            let resumer = Arc::clone(self.resumer.get_or_insert_with(Default::default));
            resumer as Arc<dyn Resumer>
        }
        fn continue_request(&mut self) {
            self.continued_request = true;
        }
        fn continue_response(&mut self) {
            self.continued_response = true;
        }
    }

    fn router() -> Arc<Router> {
        let json = serde_json::json!({ "routing_yaml_inline": YAML }).to_string();
        Router::from_filter_config(json.as_bytes()).unwrap()
    }

    /// Sends a POST /v1/responses with `body` through a new stream, as Envoy would: headers, then
    /// the body in one frame.
    fn post(router: &Arc<Router>, body: &str) -> (Stream, FakeHost) {
        let mut stream = Stream::new(Arc::clone(router));
        let length = body.len().to_string();
        let mut host = FakeHost::request(
            "POST",
            "/v1/responses",
            &[
                ("content-length", &length),
                ("x-router-cluster", "general"),
                ("x-request-id", "req-1"),
            ],
        );
        assert_eq!(
            stream.on_request_headers(&mut host, false),
            HeadersFlow::Stop
        );
        assert!(
            !host.request.contains_key("x-router-cluster"),
            "a client's routing header is gone before anything else"
        );
        host.received = body.as_bytes().to_vec();
        assert_eq!(stream.on_request_body(&mut host, true), BodyFlow::Continue);
        (stream, host)
    }

    #[test]
    fn an_auto_request_is_classified_spliced_and_routed_on_its_body() {
        let (_, host) = post(&router(), r#"{"model":"auto","input":"debug my python"}"#);
        assert_eq!(host.request["x-router-cluster"], "code");
        assert_eq!(host.request["x-selected-model"], "code-model");
        let body = br#"{"model":"code-model","input":"debug my python"}"#;
        assert_eq!(host.request_body(), body);
        assert_eq!(host.request["content-length"], body.len().to_string());
        assert!(host.route_cleared);
        assert_eq!(
            host.counted(Counter::Decisions),
            [[
                "responses.create",
                "category",
                "code-model",
                "code",
                "coding"
            ]]
        );
    }

    #[test]
    fn a_panic_in_a_hook_is_answered_with_the_routers_500_and_counted() {
        let mut stream = Stream::new(router());
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        let flow = guarded_hook(
            "request_body",
            &mut stream,
            &mut host,
            BodyFlow::Stop,
            |_, _| panic!("a bug on this request"),
        );
        assert_eq!(flow, BodyFlow::Stop);
        let (status, body) = host.sent.clone().expect("the request is answered");
        assert_eq!(status, 500);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "router_error");
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(host.counted(Counter::Panics), [Vec::<String>::new()]);
        assert!(host.cluster.is_none() && host.upstream.is_none());

        // Without a panic the hook's own result comes back and nothing is sent.
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        let flow = guarded_hook(
            "request_body",
            &mut stream,
            &mut host,
            BodyFlow::Stop,
            |_, _| BodyFlow::Continue,
        );
        assert_eq!(flow, BodyFlow::Continue);
        assert!(host.sent.is_none() && host.counted(Counter::Panics).is_empty());
    }

    #[test]
    fn a_buffered_body_is_awaited_and_limited() {
        let router = router();
        let mut stream = Stream::new(Arc::clone(&router));
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        stream.on_request_headers(&mut host, false);
        host.received = vec![b' '; 150];
        assert_eq!(stream.on_request_body(&mut host, false), BodyFlow::Buffer);
        host.buffered = std::mem::take(&mut host.received);
        host.received = vec![b' '; 100];
        assert_eq!(stream.on_request_body(&mut host, false), BodyFlow::Stop);
        assert_eq!(host.sent.as_ref().map(|s| s.0), Some(413));
        assert_eq!(host.counted(Counter::Refusals), [["request_too_large"]]);
    }

    #[test]
    fn errors_are_openai_replies_and_nothing_is_routed() {
        let router = router();
        let (_, host) = {
            let mut stream = Stream::new(Arc::clone(&router));
            let mut host = FakeHost::request("POST", "/v1/responses", &[]);
            stream.on_request_headers(&mut host, false);
            host.received = br#"{"model":"gpt-9","input":"x"}"#.to_vec();
            assert_eq!(stream.on_request_body(&mut host, true), BodyFlow::Stop);
            (stream, host)
        };
        let (status, body) = host.sent.unwrap();
        assert_eq!(status, 404);
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "model_not_found");
        assert!(!host.route_cleared);
        let mut stream = Stream::new(Arc::clone(&router));
        let mut host = FakeHost::request("POST", "/v1/responses", &[("content-encoding", "gzip")]);
        assert_eq!(
            stream.on_request_headers(&mut host, false),
            HeadersFlow::Stop
        );
        assert_eq!(host.sent.map(|s| s.0), Some(415));
    }

    #[test]
    fn the_model_list_is_answered_locally() {
        let mut stream = Stream::new(router());
        let mut host = FakeHost::request("GET", "/v1/models", &[]);
        assert_eq!(
            stream.on_request_headers(&mut host, true),
            HeadersFlow::Stop
        );
        let (status, body) = host.sent.unwrap();
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, list["data"][0]["id"].as_str()),
            (200, Some("auto"))
        );
    }

    #[test]
    fn a_json_answer_teaches_where_its_id_lives_and_the_continuation_goes_there() {
        let router = router();
        let (mut stream, mut host) = answered(
            &router,
            r#"{"model":"auto","input":"python?"}"#,
            "application/json",
            Some("code"),
            Some("10.0.0.7:8000"),
        );
        assert_eq!(
            host.response["x-router-model"], "code-model",
            "the decision, exposed"
        );
        // Held (Envoy keeps the chunks) until the id is whole and recorded, then let go.
        for (chunk, end, flow) in [
            (&br#"{"id":"resp_"#[..], false, BodyFlow::Buffer),
            (&br#"1","object":"response"}"#[..], true, BodyFlow::Continue),
        ] {
            host.response_chunk = chunk.to_vec();
            assert_eq!(stream.on_response_body(&mut host, end), flow);
        }
        assert_eq!(host.counted(Counter::LearnedIds), [["json"]]);
        // The next turn, classified as general, goes where its state is, to its host.
        let (_, next) = post(
            &router,
            r#"{"model":"auto","previous_response_id":"resp_1","input":"and the capital of Peru?"}"#,
        );
        assert_eq!(next.request["x-router-cluster"], "code");
        assert_eq!(next.request["x-router-reason"], "affinity");
        assert_eq!(next.override_host.as_deref(), Some("10.0.0.7:8000"));
        assert_eq!(next.counted(Counter::Affinity), [["hit"]]);
    }

    #[test]
    fn a_json_answer_whose_id_comes_first_passes_at_once_without_a_shared_store() {
        let router = router();
        let (mut stream, mut host) = answered(
            &router,
            r#"{"model":"auto","input":"python?"}"#,
            "application/json",
            Some("code"),
            None,
        );
        host.response_chunk = br#"{"id":"resp_7","object":"response","output":[]}"#.to_vec();
        // Recorded in memory before the chunk goes on: nothing to hold.
        assert_eq!(
            stream.on_response_body(&mut host, false),
            BodyFlow::Continue
        );
        assert_eq!(
            router.store().lookup("resp_7").map(|l| l.cluster),
            Some("code".into())
        );
        host.response_chunk.clear();
        assert_eq!(stream.on_response_body(&mut host, true), BodyFlow::Continue);
    }

    #[test]
    fn a_json_answer_without_an_id_is_let_go_at_its_end() {
        let router = router();
        let (mut stream, mut host) = answered(
            &router,
            r#"{"model":"auto","input":"python?"}"#,
            "application/json",
            None,
            None,
        );
        host.response_chunk = br#"{"object":"#.to_vec();
        assert_eq!(stream.on_response_body(&mut host, false), BodyFlow::Buffer);
        host.response_chunk = br#""list"}"#.to_vec();
        assert_eq!(stream.on_response_body(&mut host, true), BodyFlow::Continue);
        assert!(host.counted(Counter::LearnedIds).is_empty());
    }

    #[test]
    fn an_sse_answer_is_learned_from_its_first_event_without_waiting() {
        let router = router();
        let (mut stream, mut host) = answered(
            &router,
            r#"{"model":"general-model","input":"hi","stream":true}"#,
            "text/event-stream",
            Some("general"),
            None,
        );
        host.response_chunk =
            b"event: response.created\ndata: {\"response\":{\"id\":\"resp_s\"}}\n\n".to_vec();
        assert_eq!(
            stream.on_response_body(&mut host, false),
            BodyFlow::Continue
        );
        assert_eq!(host.counted(Counter::LearnedIds), [["sse"]]);
        assert_eq!(
            router
                .store()
                .lookup("resp_s")
                .map(|l| l.cluster)
                .as_deref(),
            Some("general")
        );
    }

    /// Two Envoys sharing one store: what one learns, the other finds, asking off its worker.
    #[test]
    fn a_shared_store_is_asked_off_the_worker_and_a_json_answer_waits_for_its_write() {
        let remote = Arc::new(FakeRemote::default());
        let shared = || {
            let mut router = router();
            router.set_remote(Arc::clone(&remote) as Arc<dyn Remote>);
            router
        };
        let (a, b) = (shared(), shared());
        let (mut stream, mut host) = answered(
            &a,
            r#"{"model":"auto","input":"python?"}"#,
            "application/json",
            Some("code"),
            Some("10.0.0.7:8000"),
        );
        host.response_chunk = br#"{"id":"resp_9"}"#.to_vec();
        assert_eq!(
            stream.on_response_body(&mut host, true),
            BodyFlow::Buffer,
            "the last chunk waits for the shared write"
        );
        assert_eq!(
            stream.on_response_trailers(),
            HeadersFlow::Stop,
            "trailers wait with it"
        );
        remote.finish_records();
        let events = host
            .resumer
            .as_ref()
            .unwrap()
            .events
            .lock()
            .unwrap()
            .clone();
        assert_eq!(events, [EVENT_RECORDED]);
        stream.on_scheduled(&mut host, EVENT_RECORDED);
        assert!(host.continued_response);
        assert_eq!(stream.on_response_trailers(), HeadersFlow::Continue);

        // The other Envoy has never seen resp_9: its request waits for the shared store...
        let mut stream = Stream::new(Arc::clone(&b));
        let mut host = FakeHost::request("GET", "/v1/responses/resp_9", &[]);
        assert_eq!(
            stream.on_request_headers(&mut host, true),
            HeadersFlow::Stop
        );
        assert!(
            !host.route_cleared,
            "nothing decided before the store answered"
        );
        remote.answer_lookups();
        assert_eq!(
            host.resumer
                .as_ref()
                .unwrap()
                .events
                .lock()
                .unwrap()
                .clone(),
            [EVENT_LOOKED_UP]
        );
        // ...and goes where the state lives once it answered, now known locally too.
        stream.on_scheduled(&mut host, EVENT_LOOKED_UP);
        assert!(host.continued_request);
        assert_eq!(host.request["x-router-reason"], "affinity");
        assert_eq!(host.override_host.as_deref(), Some("10.0.0.7:8000"));
        assert!(
            !host.request.contains_key(headers::SESSION_HOST_HEADER),
            "pinned by Envoy's override host: no header carries the address upstream"
        );
        assert!(b.store().lookup("resp_9").is_some());
        // A stream that ends first is never woken.
        let mut stream = Stream::new(Arc::clone(&b));
        let mut host = FakeHost::request("GET", "/v1/responses/resp_unknown", &[]);
        assert_eq!(
            stream.on_request_headers(&mut host, true),
            HeadersFlow::Stop
        );
        let resumer = Arc::clone(host.resumer.as_ref().unwrap());
        drop(stream);
        remote.answer_lookups();
        assert!(resumer.events.lock().unwrap().is_empty());
    }

    /// A request decided on its headers (its kind needs no body) that still carries one: while the
    /// shared store is asked, neither its body nor its trailers may let it go undecided.
    #[test]
    fn a_body_that_arrives_during_the_lookup_is_held_with_the_request() {
        let remote = Arc::new(FakeRemote::default());
        let mut router = router();
        router.set_remote(Arc::clone(&remote) as Arc<dyn Remote>);
        let mut stream = Stream::new(router);
        let mut host = FakeHost::request("POST", "/v1/conversations/conv_1/items", &[]);
        assert_eq!(
            stream.on_request_headers(&mut host, false),
            HeadersFlow::Stop
        );
        host.received = br#"{"items":[]}"#.to_vec();
        assert_eq!(stream.on_request_body(&mut host, false), BodyFlow::Buffer);
        assert_eq!(stream.on_request_trailers(&mut host), HeadersFlow::Stop);
        assert!(host.sent.is_none(), "held, not refused");
        assert!(!host.route_cleared && !host.continued_request);
        remote.answer_lookups();
        stream.on_scheduled(&mut host, EVENT_LOOKED_UP);
        assert!(host.continued_request && host.route_cleared);
        assert_eq!(host.request["x-router-reason"], "hash");
        // Decided: whatever body is left passes.
        assert_eq!(stream.on_request_body(&mut host, true), BodyFlow::Continue);
    }

    /// `body` posted through `router` and answered 200 with `content_type`, served by `cluster`
    /// (as Envoy names it) and `upstream`: the stream after its response headers.
    fn answered(
        router: &Arc<Router>,
        body: &str,
        content_type: &str,
        cluster: Option<&str>,
        upstream: Option<&str>,
    ) -> (Stream, FakeHost) {
        let (mut stream, mut host) = post(router, body);
        host.response.insert(":status".into(), "200".into());
        host.response
            .insert("content-type".into(), content_type.into());
        host.cluster = cluster.map(str::to_owned);
        host.upstream = upstream.map(str::to_owned);
        stream.on_response_headers(&mut host, false);
        (stream, host)
    }

    /// A stream answered by a router sharing through `remote`, with response headers of
    /// `content_type`.
    fn shared_response(remote: &Arc<FakeRemote>, content_type: &str) -> (Stream, FakeHost) {
        let mut router = router();
        router.set_remote(Arc::clone(remote) as Arc<dyn Remote>);
        let body = r#"{"model":"general-model","input":"hi"}"#;
        answered(&router, body, content_type, Some("general"), None)
    }

    /// A stream whose first event names `id`: it passed at once, and the shared write started.
    fn stream_started(remote: &Arc<FakeRemote>, id: &str) -> (Stream, FakeHost) {
        let (mut stream, mut host) = shared_response(remote, "text/event-stream");
        host.response_chunk =
            format!("event: response.created\ndata: {{\"response\":{{\"id\":\"{id}\"}}}}\n\n")
                .into_bytes();
        assert_eq!(
            stream.on_response_body(&mut host, false),
            BodyFlow::Continue
        );
        (stream, host)
    }

    #[test]
    fn a_json_answer_is_held_whole_until_the_write_is_done() {
        let remote = Arc::new(FakeRemote::default());
        let (mut stream, mut host) = shared_response(&remote, "application/json");
        // Its id is read from the first chunk and its write starts there; every chunk is held,
        // so none of the answer reaches the client before the write is done.
        host.response_chunk = br#"{"id":"resp_j","object":"response","#.to_vec();
        assert_eq!(stream.on_response_body(&mut host, false), BodyFlow::Buffer);
        assert_eq!(remote.records.lock().unwrap()[0].0, "resp_j");
        host.response_chunk = br#""output":[]}"#.to_vec();
        assert_eq!(stream.on_response_body(&mut host, true), BodyFlow::Buffer);
        assert!(!host.continued_response);
        remote.finish_records();
        stream.on_scheduled(&mut host, EVENT_RECORDED);
        assert!(host.continued_response);
    }

    #[test]
    fn a_stream_passes_at_once_and_only_its_end_waits_for_a_write_in_flight() {
        let remote = Arc::new(FakeRemote::default());
        let (mut stream, mut host) = stream_started(&remote, "resp_s");
        host.response_chunk = b"event: response.output_text.delta\ndata: {}\n\n".to_vec();
        assert_eq!(
            stream.on_response_body(&mut host, false),
            BodyFlow::Continue
        );
        host.response_chunk = b"event: response.completed\ndata: {}\n\n".to_vec();
        assert_eq!(stream.on_response_body(&mut host, true), BodyFlow::Buffer);
        remote.finish_records();
        stream.on_scheduled(&mut host, EVENT_RECORDED);
        assert!(host.continued_response);

        // Written before the end: nothing waits, and the late wake-up changes nothing.
        let (mut stream, mut host) = stream_started(&remote, "resp_t");
        remote.finish_records();
        host.response_chunk = b"event: response.completed\ndata: {}\n\n".to_vec();
        assert_eq!(stream.on_response_body(&mut host, true), BodyFlow::Continue);
        stream.on_scheduled(&mut host, EVENT_RECORDED);
        assert!(!host.continued_response, "nothing was held");
    }

    #[test]
    fn a_stream_ended_by_trailers_waits_there_for_a_write_in_flight() {
        let remote = Arc::new(FakeRemote::default());
        let (mut stream, mut host) = stream_started(&remote, "resp_h2");
        // No chunk says end of stream: the trailers do.
        assert_eq!(stream.on_response_trailers(), HeadersFlow::Stop);
        assert!(!host.continued_response);
        remote.finish_records();
        stream.on_scheduled(&mut host, EVENT_RECORDED);
        assert!(host.continued_response);

        // Written before the trailers came: nothing waits.
        let (mut stream, _) = stream_started(&remote, "resp_h3");
        remote.finish_records();
        assert_eq!(stream.on_response_trailers(), HeadersFlow::Continue);
    }

    #[test]
    fn trailers_while_the_body_is_awaited_are_refused() {
        let mut stream = Stream::new(router());
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        stream.on_request_headers(&mut host, false);
        assert_eq!(stream.on_request_trailers(&mut host), HeadersFlow::Stop);
        assert_eq!(
            host.counted(Counter::Refusals),
            [["trailers_not_supported"]]
        );
    }
}
