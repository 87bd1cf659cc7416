//! Response id capture (`responses_router_core::learn::IdCapture`) on SSE streams split into arbitrary chunks.
//!
//! Input: one control byte, then chunk sizes, then the stream. The low 4 bits of the control byte
//! say how many chunk-size bytes follow (each size is `byte + 1`, used cyclically); bit 7 pads the
//! stream past the capture's 64 KiB read limit with further events. Asserted:
//! - the outcome (id found or given up) is the same whether the stream arrives whole or in the
//!   fuzzer's chunks, with or without the end-of-stream flag on the last chunk: Envoy's chunking
//!   must not decide whether a conversation's location is learned;
//! - a found id equals `response.id` of the first complete event (blank-line separated, `\n\n` or
//!   `\r\n\r\n`) whose `data:` lines join to a JSON object with an object `response` holding a
//!   non-empty string `id`, computed here by an independent reference; when no such event exists
//!   in the first 64 KiB, nothing is found.
//! - a JSON-mode capture of the same bytes agrees with the reference reading of a JSON body (its
//!   object's first `id` entry; after it the capture reads nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use responses_router_core::learn::{Capture, Format, IdCapture};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The capture's read limit for SSE (not exported; mirrored here on purpose: the target checks
/// that the limit does not depend on chunking).
const SSE_LIMIT: usize = 64 * 1024;

/// The `response` and `id` entries of a JSON object in order, duplicates kept, so the reference can
/// refuse them as serde's derived structs do. Other values are skipped unread, as the capture
/// skips them.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    if k == "response" || k == "id" {
                        let v = m.next_value::<&'de RawValue>()?;
                        out.push((k, v));
                    } else {
                        m.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Entries<'a> {
    /// The single value of `key`; an error when it is repeated.
    fn get(&self, key: &str) -> Result<Option<&'a RawValue>, ()> {
        let mut found = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| *v);
        match (found.next(), found.next()) {
            (_, Some(_)) => Err(()),
            (v, None) => Ok(v),
        }
    }

    /// The first value of `key` (a created response's id is its first `id` entry).
    fn first(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The first `id` entry of a JSON object, when it is a non-empty string.
fn first_id(object: &Entries<'_>) -> Option<String> {
    let id: String = serde_json::from_str(object.first("id")?.get()).ok()?;
    (!id.is_empty()).then_some(id)
}

/// `response.id` of one event's data: objects only, no duplicate `response`; the response's
/// first `id` entry.
fn reference_id_of_data(data: &str) -> Option<String> {
    let top: Entries<'_> = serde_json::from_str(data).ok()?;
    let response = top.get("response").ok()??;
    if response.get() == "null" {
        return None;
    }
    first_id(&serde_json::from_str(response.get()).ok()?)
}

/// The reference: events end at the first `\n\n` or `\r\n\r\n`, scanning byte by byte.
fn reference_sse(stream: &[u8]) -> Option<String> {
    let stream = &stream[..stream.len().min(SSE_LIMIT)];
    let mut start = 0;
    let mut i = 0;
    while i < stream.len() {
        let sep = if stream[i..].starts_with(b"\n\n") {
            2
        } else if stream[i..].starts_with(b"\r\n\r\n") {
            4
        } else {
            i += 1;
            continue;
        };
        let event = &stream[start..i];
        start = i + sep;
        i = start;
        let Ok(text) = std::str::from_utf8(event) else {
            continue;
        };
        let data: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if let Some(id) = reference_id_of_data(&data.join("\n")) {
            return Some(id);
        }
    }
    None
}

/// Feeds `chunks` until the capture decides; the last chunk carries `end`.
fn run(chunks: &[&[u8]], sse: bool, end: bool) -> Capture {
    let mut capture = IdCapture::new(if sse { Format::EventStream } else { Format::Json });
    for (i, chunk) in chunks.iter().enumerate() {
        match capture.feed(chunk, end && i + 1 == chunks.len()) {
            Capture::Pending => continue,
            decided => return decided,
        }
    }
    Capture::Pending
}

fn split<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut k = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(k % sizes.len().max(1))
            .map_or(rest.len(), |&b| b as usize + 1);
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
        k += 1;
    }
    // Envoy may also send an empty final chunk carrying only end_of_stream.
    chunks.push(&[]);
    chunks
}

fn check(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(control & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let mut stream = stream.to_vec();
    if control & 0x80 != 0 {
        // Filler events carrying an id, running past the limit: one starting within it may be
        // learned and those beyond it never, whether the stream comes in one chunk or many.
        while stream.len() <= SSE_LIMIT {
            stream
                .extend_from_slice(b"\n\nevent: x\ndata: {\"response\":{\"id\":\"resp_padding\"}}");
            stream.extend_from_slice(&[b' '; 1024]);
        }
    }
    let expected = reference_sse(&stream);
    let chunks = split(&stream, sizes);
    let whole: &[&[u8]] = &[&stream];

    for (name, outcome) in [
        ("whole, end", run(whole, true, true)),
        ("whole, open", run(whole, true, false)),
        ("chunks, end", run(&chunks, true, true)),
        ("chunks, open", run(&chunks, true, false)),
    ] {
        match (&expected, outcome) {
            (Some(id), Capture::Found(got)) => assert_eq!(&got, id, "{name}"),
            (Some(id), other) => panic!("{name}: expected {id:?}, got {other:?}"),
            (None, Capture::Found(got)) => panic!("{name}: found {got:?} where none is"),
            // Without an end flag the capture may keep waiting; with it, it must decide.
            (None, Capture::Pending) => assert!(name.ends_with("open"), "{name}: undecided"),
            (None, Capture::GaveUp) => {}
        }
    }

    // JSON mode: the first `id` entry of the body's object. The capture stops reading there, so
    // for a body that is broken (or has a bad `id`) after it, only consistency is checked: an id
    // it finds is a non-empty string the body spells.
    if stream.len() <= 1 << 20 {
        let valid = serde_json::from_slice::<Entries<'_>>(&stream).ok();
        let expected = valid.as_ref().and_then(first_id);
        for outcome in [run(whole, false, true), run(&chunks, false, true)] {
            match (&expected, outcome) {
                (Some(id), Capture::Found(got)) => assert_eq!(&got, id),
                (None, Capture::GaveUp) => {}
                (None, Capture::Found(got)) if valid.is_none() => {
                    let spelled = serde_json::to_string(&got).expect("a string serializes");
                    assert!(!got.is_empty(), "JSON mode: an empty id");
                    assert!(
                        stream.windows(spelled.len()).any(|w| w == spelled.as_bytes())
                            || got.chars().any(|c| c == '/' || !c.is_ascii() || c.is_ascii_control()),
                        "JSON mode: {got:?} is not in the body"
                    );
                }
                (e, o) => panic!("JSON mode: expected {e:?}, got {o:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
