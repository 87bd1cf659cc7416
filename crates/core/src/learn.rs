//! Reading the id a response creates, as the response passes by, without holding it back.
//!
//! A request that creates state (`POST /v1/responses`, `/compact`, `/v1/conversations`) is answered
//! either with a JSON object whose `id` names the new response or conversation, or with an SSE
//! stream whose first event (`response.created`) carries `response.id`. [`IdCapture`] is fed the
//! body chunk by chunk, however the proxy splits it, and says when it has found the id, when it
//! needs more, and when there is none to find. Front-ends then record where the response was
//! served; for SSE only the first bytes are read, so a stream is never held.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Most bytes of SSE read while looking for the first event that names the response.
const SSE_LIMIT: usize = 64 * 1024;
/// Most bytes of a JSON response buffered to read its `id`.
const JSON_LIMIT: usize = 8 * 1024 * 1024;
/// Up to this many bytes, a JSON body is read at each chunk, so an `id` written first is found
/// before the body ends; past them it is read once, at its end (no re-parse per chunk).
const JSON_EARLY_LIMIT: usize = 16 * 1024;

/// How a response body carries the id it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object, read whole.
    Json,
    /// Server-sent events (`text/event-stream`); the first event names the response.
    EventStream,
}

impl Format {
    /// What the response headers let the router read: a 2xx, uncompressed JSON or SSE body.
    /// Anything else (errors, compressed or other bodies) teaches nothing.
    pub fn of_response(
        status: Option<&str>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Option<Format> {
        let ok = status.is_some_and(|s| s.starts_with('2'));
        let encoded = content_encoding.is_some_and(|e| !crate::openai::is_identity_encoding(e));
        if !ok || encoded {
            return None;
        }
        let content_type = content_type?;
        if content_type.contains("text/event-stream") {
            Some(Format::EventStream)
        } else if content_type.contains("json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

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
    format: Format,
    buf: Vec<u8>,
    /// Where to resume scanning for an SSE event boundary.
    scanned: usize,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    response: Option<&'a serde_json::value::RawValue>,
}

/// The `id` of a JSON object: its first top-level `id` entry, which must be a non-empty string.
/// The entries before it are parsed (a body that is not an object, or is broken before its id,
/// teaches nothing); the rest is not read: backends write `id` first, and a created response can be
/// large, so reading on would cost every created response a scan of its whole body. (serde's
/// derived structs would also accept an array, read by position: only an object counts here.)
fn object_id(json: &[u8]) -> Option<String> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    // Stopping at the id leaves the object unfinished, which serde_json reports as an error once
    // the visitor returns: the id is in `found` by then.
    let _ = serde_json::Deserializer::from_slice(json).deserialize_map(FirstId(&mut found));
    found.filter(|id: &String| !id.is_empty())
}

/// Reads a JSON object's entries up to its first `id`.
struct FirstId<'f>(&'f mut Option<String>);

impl<'de> Visitor<'de> for FirstId<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<IsId>()? {
            if key.0 {
                *self.0 = Some(map.next_value::<Cow<'de, str>>()?.into_owned());
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Whether an object key is `id` (escaped spellings included), without allocating.
struct IsId(bool);

impl<'de> Deserialize<'de> for IsId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IsId, E> {
                Ok(IsId(v == "id"))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl IdCapture {
    /// A capture for a body in `format`.
    pub fn new(format: Format) -> Self {
        IdCapture {
            format,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The body format this capture reads.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Feeds one body chunk; `end` marks the last one.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Capture {
        if self.format == Format::EventStream {
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
        // Backends write `id` first: once its entry is whole it is the id the whole body would
        // give (nothing after it is read), so a front-end that passes chunks on knows it before
        // the client has the body.
        if !end && self.buf.len() > JSON_EARLY_LIMIT {
            return Capture::Pending;
        }
        match object_id(&self.buf) {
            Some(id) => Capture::Found(id),
            None if end => Capture::GaveUp,
            None => Capture::Pending,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_that_can_be_learned_from() {
        let of = Format::of_response;
        assert_eq!(
            of(Some("200"), Some("application/json"), None),
            Some(Format::Json)
        );
        assert_eq!(
            of(
                Some("201"),
                Some("text/event-stream; charset=utf-8"),
                Some("identity")
            ),
            Some(Format::EventStream)
        );
        assert_eq!(of(Some("404"), Some("application/json"), None), None);
        assert_eq!(
            of(Some("200"), Some("application/json"), Some("gzip")),
            None
        );
        assert_eq!(of(Some("200"), Some("text/plain"), None), None);
        assert_eq!(of(None, Some("application/json"), None), None);
        // The same reading of `content-encoding` as for requests: only identity codings are plain.
        for plain in ["", "IDENTITY", "identity, identity"] {
            assert_eq!(
                of(Some("200"), Some("application/json"), Some(plain)),
                Some(Format::Json),
                "{plain:?}"
            );
        }
        assert_eq!(
            of(
                Some("200"),
                Some("application/json"),
                Some("identity, gzip")
            ),
            None
        );
    }

    #[test]
    fn a_json_id_is_the_first_id_entry_and_the_rest_is_not_read() {
        let found = |body: &[u8]| IdCapture::new(Format::Json).feed(body, true);
        assert_eq!(
            found(br#"{"object":"response","id":"resp_2","output":[{"id":"msg_1"}]}"#),
            Capture::Found("resp_2".into())
        );
        assert_eq!(
            found(br#"{"id":"resp_1", "output": [ unparsed rest"#),
            Capture::Found("resp_1".into()),
            "what follows the id is not read"
        );
        assert_eq!(found(br#"{"bad": x, "id":"resp_1"}"#), Capture::GaveUp);
        assert_eq!(found(br#"{"id":7,"id":"resp_1"}"#), Capture::GaveUp);
        assert_eq!(found(br#"{"id":""}"#), Capture::GaveUp);
        assert_eq!(
            found(br#"{"\u0069d":"resp_e"}"#),
            Capture::Found("resp_e".into())
        );
    }

    #[test]
    fn a_json_id_is_found_once_its_entry_is_whole_or_when_the_body_ends() {
        let mut c = IdCapture::new(Format::Json);
        assert_eq!(c.feed(br#"{"id":"resp_"#, false), Capture::Pending);
        assert_eq!(
            c.feed(br#"1","object":"#, false),
            Capture::Found("resp_1".into()),
            "before the body ends"
        );
        let mut c = IdCapture::new(Format::Json);
        assert_eq!(
            c.feed(br#"{"object":"response","output":[{"id":"msg_1"}],"#, false),
            Capture::Pending
        );
        assert_eq!(
            c.feed(br#""id":"resp_2"}"#, true),
            Capture::Found("resp_2".into())
        );
        // Past the first bytes, the body is read once, at its end.
        let mut c = IdCapture::new(Format::Json);
        let padding = format!(r#"{{"output":"{}","#, "x".repeat(JSON_EARLY_LIMIT));
        assert_eq!(c.feed(padding.as_bytes(), false), Capture::Pending);
        assert_eq!(c.feed(br#""id":"resp_3"}"#, false), Capture::Pending);
        assert_eq!(c.feed(b"", true), Capture::Found("resp_3".into()));
        let mut c = IdCapture::new(Format::Json);
        assert_eq!(
            c.feed(br#"{"object":"conversation","id":"conv_\u0041"}"#, true),
            Capture::Found("conv_A".into())
        );
        let mut c = IdCapture::new(Format::Json);
        assert_eq!(
            c.feed(br#"{"error":{"message":"x"}}"#, true),
            Capture::GaveUp
        );
        let mut c = IdCapture::new(Format::Json);
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
            let mut c = IdCapture::new(Format::EventStream);
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
            IdCapture::new(Format::EventStream).feed(stream, false),
            Capture::Found("resp_q".into())
        );
        let chat = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\ndata: [DONE]\n\n";
        assert_eq!(
            IdCapture::new(Format::EventStream).feed(chat, true),
            Capture::GaveUp
        );
    }

    #[test]
    fn limits_bound_the_buffer() {
        let mut c = IdCapture::new(Format::EventStream);
        assert_eq!(c.feed(&vec![b'x'; SSE_LIMIT + 1], false), Capture::GaveUp);
        let mut c = IdCapture::new(Format::Json);
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
        assert_eq!(
            IdCapture::new(Format::EventStream).feed(&stream, false),
            found
        );
        let mut c = IdCapture::new(Format::EventStream);
        let outcomes: Vec<Capture> = stream.chunks(7).map(|ch| c.feed(ch, false)).collect();
        assert_eq!(
            outcomes.iter().find(|o| **o != Capture::Pending),
            Some(&found)
        );
        // Only the first SSE_LIMIT bytes are read: an id beyond them is not learned, in one chunk
        // or in many.
        let mut late = vec![b' '; SSE_LIMIT - 10];
        late.extend_from_slice(b"\n\ndata: {\"response\":{\"id\":\"resp_late\"}}\n\n");
        assert_eq!(
            IdCapture::new(Format::EventStream).feed(&late, true),
            Capture::GaveUp
        );
        let mut c = IdCapture::new(Format::EventStream);
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
            assert_eq!(
                IdCapture::new(Format::EventStream).feed(stream, true),
                Capture::GaveUp
            );
        }
        assert_eq!(
            IdCapture::new(Format::Json).feed(b"[\"resp_a\"]", true),
            Capture::GaveUp
        );
        assert_eq!(
            IdCapture::new(Format::Json).feed(b" \n{\"id\":\"resp_a\"}", true),
            Capture::Found("resp_a".into())
        );
    }
}
