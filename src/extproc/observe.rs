//! Learning where state lives, from the response path, without ever holding a stream back.
//!
//! Requests that create state (`POST /v1/responses`, `/compact`, `/v1/conversations`) teach the
//! router where the new id lives, in one of two ways:
//! - a JSON response is learned by the routing stream itself (`super::stream`): it asks Envoy to
//!   hold the small body until the id is recorded, so a client can never continue the
//!   conversation before the router knows where it is;
//! - an SSE stream must never wait, so a second ext_proc filter in *observability mode*
//!   ([`Observer`]) gets copies of the response headers (with the `xds.cluster_name` and
//!   `upstream.address` attributes) and body chunks, reads `response.id` from the first event
//!   (`response.created`), records it, and closes its stream so Envoy stops copying the rest.
//!   Envoy never waits on it.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, processing_request::Request,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use serde::Deserialize;

use super::CLUSTER_HEADER;
use super::envoy::header;
use super::pending::PendingIds;
use crate::affinity::{AffinityStore, Location};
use crate::openai::RequestKind;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::LearnSource;

/// Most bytes of SSE read while looking for the first event that names the response.
const SSE_LIMIT: usize = 64 * 1024;
/// Most bytes of a JSON response buffered to read its `id`.
const JSON_LIMIT: usize = 8 * 1024 * 1024;

/// What the capture made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// The id of the created response or conversation.
    Found(String),
    /// Not yet: feed more.
    Pending,
    /// The body has no usable id (an error body, over the limit, not JSON).
    GaveUp,
}

/// Finds the id of a created response or conversation in a response body, chunk by chunk.
#[derive(Debug)]
pub struct IdCapture {
    sse: bool,
    buf: Vec<u8>,
    /// Where to resume scanning for an SSE event boundary.
    scanned: usize,
}

#[derive(Deserialize)]
struct WithId<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    response: Option<&'a serde_json::value::RawValue>,
}

/// The non-empty string `id` of a JSON object. serde's derived structs also accept an array (fields
/// by position), which is no response or conversation object, so anything but an object is refused.
fn object_id(json: &[u8]) -> Option<String> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let id = serde_json::from_slice::<WithId<'_>>(json).ok()?.id?;
    (!id.is_empty()).then(|| id.into_owned())
}

impl IdCapture {
    /// A capture for an SSE (`text/event-stream`) or JSON body.
    pub fn new(sse: bool) -> Self {
        IdCapture {
            sse,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// Feeds one body chunk; `end` marks the last one.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Capture {
        if self.sse {
            // The first SSE_LIMIT bytes are read however Envoy chunks the stream: a chunk running
            // past the limit still has its first bytes scanned, so an id in the first event is
            // learned from one large chunk as it is from many small ones.
            let room = SSE_LIMIT.saturating_sub(self.buf.len());
            let over = chunk.len() > room;
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            return match self.scan_events(end && !over) {
                Capture::Pending if over => Capture::GaveUp,
                decided => decided,
            };
        }
        // A JSON body is only read whole, so one over the limit has no usable id.
        if self.buf.len() + chunk.len() > JSON_LIMIT {
            return Capture::GaveUp;
        }
        self.buf.extend_from_slice(chunk);
        if !end {
            return Capture::Pending;
        }
        match object_id(&self.buf) {
            Some(id) => Capture::Found(id),
            None => Capture::GaveUp,
        }
    }

    /// Looks at each complete SSE event for one whose data carries `response.id`.
    fn scan_events(&mut self, end: bool) -> Capture {
        loop {
            let rest = &self.buf[self.scanned..];
            let Some((len, sep)) = event_end(rest) else {
                return if end {
                    Capture::GaveUp
                } else {
                    Capture::Pending
                };
            };
            let event = &rest[..len];
            self.scanned += len + sep;
            if let Some(id) = response_id_of_event(event) {
                return Capture::Found(id);
            }
        }
    }
}

/// Length of the first complete event in `bytes` and of its blank-line separator (`\n\n` or
/// `\r\n\r\n`, whichever starts first). One pass over the line feeds: searching for each separator
/// through the whole buffer made every event cost the rest of the buffer.
fn event_end(bytes: &[u8]) -> Option<(usize, usize)> {
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if bytes.get(i + 1) == Some(&b'\n') {
            return Some((i, 2));
        }
        if i > 0 && bytes[i - 1] == b'\r' && bytes.get(i + 1..i + 3) == Some(&b"\r\n"[..]) {
            return Some((i - 1, 4));
        }
    }
    None
}

fn response_id_of_event(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    let data = data.join("\n");
    if !data.trim_start().starts_with('{') {
        return None;
    }
    let event: Event<'_> = serde_json::from_str(&data).ok()?;
    object_id(event.response?.get().as_bytes())
}

/// Whether the observer wants more messages of this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Learned what there was to learn (or nothing can be): close the stream.
    Done,
}

/// One observability-mode stream.
pub struct Observer {
    store: Arc<dyn AffinityStore>,
    metrics: Arc<Metrics>,
    /// Where the routing stream announced this response, when learning is on.
    pending: Option<Arc<PendingIds>>,
    request_id: String,
    routed_cluster: Option<String>,
    location: Option<Location>,
    capture: Option<IdCapture>,
}

impl Observer {
    /// An observer recording into `store`; with learning on, it tells `pending` when it is done
    /// with a streamed response.
    pub fn new(
        store: Arc<dyn AffinityStore>,
        metrics: Arc<Metrics>,
        pending: Option<Arc<PendingIds>>,
    ) -> Self {
        Observer {
            store,
            metrics,
            pending,
            request_id: String::new(),
            routed_cluster: None,
            location: None,
            capture: None,
        }
    }

    /// Takes one message; no reply is ever sent in observability mode.
    pub async fn handle(&mut self, message: ProcessingRequest) -> Step {
        match message.request {
            Some(Request::RequestHeaders(h)) => {
                let map = h.headers.as_ref();
                let kind = RequestKind::classify(
                    header(map, ":method").unwrap_or_default(),
                    header(map, ":path").unwrap_or_default(),
                    false,
                );
                if !kind.creates_state() {
                    return Step::Done;
                }
                self.request_id = header(map, "x-request-id").unwrap_or_default().to_owned();
                self.routed_cluster = header(map, CLUSTER_HEADER).map(str::to_owned);
                Step::Continue
            }
            Some(Request::ResponseHeaders(h)) => {
                // Envoy is configured not to send the observer the request headers (a message
                // per request saved); the request's method, path and id come as attributes.
                let attributes = &message.attributes;
                if self.request_id.is_empty() {
                    let kind = RequestKind::classify(
                        &attribute(attributes, "request.method").unwrap_or_default(),
                        &attribute(attributes, "request.path").unwrap_or_default(),
                        false,
                    );
                    if !kind.creates_state() {
                        return Step::Done;
                    }
                    self.request_id = attribute(attributes, "request.id").unwrap_or_default();
                }
                let map = h.headers.as_ref();
                let ok = header(map, ":status").is_some_and(|s| s.starts_with('2'));
                let encoded = header(map, "content-encoding")
                    .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
                if !ok || encoded || h.end_of_stream {
                    return Step::Done;
                }
                let cluster = attribute(attributes, "xds.cluster_name")
                    .or_else(|| self.routed_cluster.clone());
                let Some(cluster) = cluster else {
                    return Step::Done;
                };
                self.location = Some(Location {
                    cluster,
                    host: attribute(attributes, "upstream.address"),
                });
                // JSON responses are learned by the routing stream itself, before the client sees
                // them; the observer only watches streams, which must never wait.
                if !header(map, "content-type").is_some_and(|c| c.contains("text/event-stream")) {
                    return Step::Done;
                }
                self.capture = Some(IdCapture::new(true));
                Step::Continue
            }
            Some(Request::ResponseBody(b)) => {
                let (Some(capture), Some(location)) =
                    (self.capture.as_mut(), self.location.as_ref())
                else {
                    return Step::Done;
                };
                match capture.feed(&b.body, b.end_of_stream) {
                    Capture::Pending => Step::Continue,
                    Capture::GaveUp => Step::Done,
                    Capture::Found(id) => {
                        tracing::debug!(%id, cluster = %location.cluster, host = ?location.host, "learned");
                        self.store.record(&id, location.clone()).await;
                        self.metrics.learned(LearnSource::Sse);
                        Step::Done
                    }
                }
            }
            Some(_) => Step::Continue,
            None => Step::Done,
        }
    }
}

impl Drop for Observer {
    /// However the stream ends (id recorded, given up, closed by Envoy), a streamed response it
    /// watched is no longer pending.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.as_ref().filter(|_| self.capture.is_some())
            && !self.request_id.is_empty()
        {
            pending.close(&self.request_id);
        }
    }
}

/// A string attribute Envoy attached (`response_attributes`), whatever key it is grouped under.
pub(crate) fn attribute(
    attributes: &std::collections::HashMap<String, Struct>,
    name: &str,
) -> Option<String> {
    attributes
        .values()
        .find_map(|s| match s.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_id_when_the_body_ends() {
        let mut c = IdCapture::new(false);
        assert_eq!(
            c.feed(br#"{"id":"resp_1","object":"#, false),
            Capture::Pending
        );
        assert_eq!(
            c.feed(br#""response","output":[{"id":"msg_1"}]}"#, true),
            Capture::Found("resp_1".into())
        );
        let mut c = IdCapture::new(false);
        assert_eq!(
            c.feed(br#"{"object":"conversation","id":"conv_\u0041"}"#, true),
            Capture::Found("conv_A".into())
        );
        let mut c = IdCapture::new(false);
        assert_eq!(
            c.feed(br#"{"error":{"message":"x"}}"#, true),
            Capture::GaveUp
        );
        let mut c = IdCapture::new(false);
        assert_eq!(c.feed(b"not json", true), Capture::GaveUp);
    }

    #[test]
    fn sse_id_from_the_first_event_split_anywhere() {
        let stream = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_s\",\"status\":\"in_progress\"}}\n\n",
            "event: response.in_progress\ndata: {}\n\n"
        )
        .as_bytes();
        for split in 1..stream.len() {
            let mut c = IdCapture::new(true);
            let first = c.feed(&stream[..split], false);
            let found = if first == Capture::Pending {
                c.feed(&stream[split..], false)
            } else {
                first
            };
            assert_eq!(found, Capture::Found("resp_s".into()), "split at {split}");
        }
    }

    #[test]
    fn sse_skips_events_without_a_response_and_handles_crlf() {
        let stream = b": keep-alive\r\n\r\nevent: response.queued\r\ndata: {\"response\":{\"id\":\"resp_q\"}}\r\n\r\n";
        assert_eq!(
            IdCapture::new(true).feed(stream, false),
            Capture::Found("resp_q".into())
        );
        let chat = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\ndata: [DONE]\n\n";
        assert_eq!(IdCapture::new(true).feed(chat, true), Capture::GaveUp);
    }

    #[test]
    fn limits_bound_the_buffer() {
        let mut c = IdCapture::new(true);
        assert_eq!(c.feed(&vec![b'x'; SSE_LIMIT + 1], false), Capture::GaveUp);
        let mut c = IdCapture::new(false);
        assert_eq!(c.feed(&vec![b' '; JSON_LIMIT + 1], true), Capture::GaveUp);
    }

    /// Found by the `sse_id_capture` fuzz target: a first chunk larger than the limit used to be
    /// refused unread, while the same bytes in small chunks were learned.
    #[test]
    fn sse_id_found_whatever_the_chunking_when_the_stream_outgrows_the_limit() {
        let mut stream =
            b"event: response.created\ndata: {\"response\":{\"id\":\"resp_big\"}}\n\n".to_vec();
        while stream.len() <= SSE_LIMIT {
            stream.extend_from_slice(
                b"event: response.output_text.delta\ndata: {\"delta\":\"x\"}\n\n",
            );
        }
        let found = Capture::Found("resp_big".into());
        assert_eq!(IdCapture::new(true).feed(&stream, false), found);
        let mut c = IdCapture::new(true);
        let outcomes: Vec<Capture> = stream.chunks(7).map(|ch| c.feed(ch, false)).collect();
        assert_eq!(
            outcomes.iter().find(|o| **o != Capture::Pending),
            Some(&found)
        );
        // Only the first SSE_LIMIT bytes are read: an id beyond them is not learned, in one chunk
        // or in many.
        let mut late = vec![b' '; SSE_LIMIT - 10];
        late.extend_from_slice(b"\n\ndata: {\"response\":{\"id\":\"resp_late\"}}\n\n");
        assert_eq!(IdCapture::new(true).feed(&late, true), Capture::GaveUp);
        let mut c = IdCapture::new(true);
        let outcomes: Vec<Capture> = late.chunks(1000).map(|ch| c.feed(ch, false)).collect();
        assert!(outcomes.contains(&Capture::GaveUp), "{outcomes:?}");
        assert!(!outcomes.iter().any(|o| matches!(o, Capture::Found(_))));
    }

    /// Found by the fuzz targets: serde's derived structs read an array as a struct (fields by
    /// position), so `[{"id":..}]` used to yield an id. Only an object names a response.
    #[test]
    fn ids_only_from_objects() {
        for stream in [
            &b"data: [{\"id\":\"resp_a\"}]\n\n"[..],
            b"data: {\"response\":[\"resp_a\"]}\n\n",
        ] {
            assert_eq!(IdCapture::new(true).feed(stream, true), Capture::GaveUp);
        }
        assert_eq!(
            IdCapture::new(false).feed(b"[\"resp_a\"]", true),
            Capture::GaveUp
        );
        assert_eq!(
            IdCapture::new(false).feed(b" \n{\"id\":\"resp_a\"}", true),
            Capture::Found("resp_a".into())
        );
    }
}
