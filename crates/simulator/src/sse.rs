//! Server-sent events: the Responses API event sequence for a response, and a streaming body that
//! sends each frame the moment it is produced (optionally pausing before text chunks).
//!
//! The event sequence is the real one (`response.created` first, carrying the response id, so a
//! router watching the stream can learn the id before generation ends), with a 0-based, monotonic
//! `sequence_number` on every event. Frames are produced lazily by the body stream, never buffered
//! into one write, so a slow `--chunk-delay-ms` stream is visibly incremental on the wire.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;

use super::object::{OutputItem, OutputText, ResponseObject, Status};

/// One SSE frame, ready to write.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Bytes,
    /// Pause `--chunk-delay-ms` before sending (text chunks: simulated token latency).
    pub delayed: bool,
    /// The frame that ends generation (`response.completed`): the stored response is finalized
    /// just before it goes out, so a client that reads it can immediately continue the chain.
    pub terminal: bool,
}

impl Frame {
    fn now(bytes: Bytes) -> Self {
        Self {
            bytes,
            delayed: false,
            terminal: false,
        }
    }
}

/// `{"type": kind, "sequence_number": n, ...body}`.
#[derive(Serialize)]
struct Event<'a, B: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    response: &'a ResponseObject,
}

#[derive(Serialize)]
struct ItemBody<'a> {
    output_index: usize,
    item: &'a OutputItem,
}

#[derive(Serialize)]
struct PartBody<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    part: &'a OutputText,
}

#[derive(Serialize)]
struct DeltaBody<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
    logprobs: &'a [Value],
}

#[derive(Serialize)]
struct TextDoneBody<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    text: &'a str,
    logprobs: &'a [Value],
}

/// Serializes one `event: <type>\ndata: <json>\n\n` frame.
fn event_bytes<B: Serialize>(kind: &str, seq: u64, body: B) -> Bytes {
    let mut buf = BytesMut::with_capacity(128).writer();
    let _ = std::io::Write::write_all(&mut buf, b"event: ");
    let _ = std::io::Write::write_all(&mut buf, kind.as_bytes());
    let _ = std::io::Write::write_all(&mut buf, b"\ndata: ");
    let event = Event {
        kind,
        sequence_number: seq,
        body,
    };
    // Serializing these plain structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut buf, &event);
    let _ = std::io::Write::write_all(&mut buf, b"\n\n");
    buf.into_inner().freeze()
}

/// Builds events with consecutive sequence numbers.
struct Sequencer {
    next: u64,
    frames: Vec<Frame>,
}

impl Sequencer {
    fn push<B: Serialize>(&mut self, kind: &str, body: B) -> &mut Frame {
        let seq = self.next;
        self.next += 1;
        self.frames.push(Frame::now(event_bytes(kind, seq, body)));
        let last = self.frames.len() - 1;
        &mut self.frames[last]
    }
}

/// The full event sequence of `response` (its final state), with each message's text split into
/// `chunks` deltas. A completed response ends with `response.completed`; a cancelled or still
/// pending one ends after its last known event (there is no `response.cancelled` event).
pub fn response_frames(response: &ResponseObject, chunks: usize) -> Vec<Frame> {
    let mut s = Sequencer {
        next: 0,
        frames: Vec::with_capacity(8 + chunks),
    };
    let opening = response.pending_snapshot(Status::InProgress);
    s.push("response.created", ResponseBody { response: &opening });
    s.push("response.in_progress", ResponseBody { response: &opening });

    for (output_index, item) in response.output.iter().enumerate() {
        match item {
            OutputItem::Message {
                id, role, content, ..
            } => {
                let started = OutputItem::Message {
                    id: id.clone(),
                    status: Status::InProgress,
                    role,
                    content: Vec::new(),
                };
                s.push(
                    "response.output_item.added",
                    ItemBody {
                        output_index,
                        item: &started,
                    },
                );
                for (content_index, part) in content.iter().enumerate() {
                    let empty = OutputText::new(String::new());
                    s.push(
                        "response.content_part.added",
                        PartBody {
                            item_id: id,
                            output_index,
                            content_index,
                            part: &empty,
                        },
                    );
                    for delta in split_chunks(&part.text, chunks) {
                        s.push(
                            "response.output_text.delta",
                            DeltaBody {
                                item_id: id,
                                output_index,
                                content_index,
                                delta,
                                logprobs: &[],
                            },
                        )
                        .delayed = true;
                    }
                    s.push(
                        "response.output_text.done",
                        TextDoneBody {
                            item_id: id,
                            output_index,
                            content_index,
                            text: &part.text,
                            logprobs: &[],
                        },
                    );
                    s.push(
                        "response.content_part.done",
                        PartBody {
                            item_id: id,
                            output_index,
                            content_index,
                            part,
                        },
                    );
                }
            }
            OutputItem::Compaction { .. } => {
                s.push(
                    "response.output_item.added",
                    ItemBody { output_index, item },
                );
            }
        }
        s.push("response.output_item.done", ItemBody { output_index, item });
    }
    if response.status == Status::Completed {
        s.push("response.completed", ResponseBody { response })
            .terminal = true;
    }
    s.frames
}

/// Splits `text` into exactly `n` (at least 1) consecutive pieces of near-equal length in
/// characters; pieces are empty only when the text has fewer than `n` characters.
pub fn split_chunks(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let total = text.chars().count();
    let (base, extra) = (total / n, total % n);
    let mut out = Vec::with_capacity(n);
    let mut bounds = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()));
    let mut start = 0;
    // Walk the char boundaries once, cutting after `base (+1)` characters per piece.
    let _ = bounds.next();
    for i in 0..n {
        let take = base + usize::from(i < extra);
        let mut end = start;
        for _ in 0..take {
            end = bounds.next().unwrap_or(text.len());
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// Runs once when a stream finishes generating, or is dropped early (client went away).
pub struct OnFinish(Option<Box<dyn FnOnce() + Send>>);

impl OnFinish {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for OnFinish {
    fn drop(&mut self) {
        self.fire();
    }
}

/// A `text/event-stream` response that yields `frames` one by one, sleeping `delay` before each
/// delayed frame, and firing `on_finish` just before the terminal frame.
pub fn sse_response(frames: Vec<Frame>, delay: Duration, on_finish: Option<OnFinish>) -> Response {
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), on_finish),
        move |(mut frames, mut on_finish)| async move {
            let frame = frames.next()?;
            if frame.delayed && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let (true, Some(f)) = (frame.terminal, on_finish.as_mut()) {
                f.fire();
            }
            Some((Ok::<Bytes, Infallible>(frame.bytes), (frames, on_finish)))
        },
    );
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{EchoParams, Usage};

    fn sample() -> ResponseObject {
        ResponseObject {
            id: "resp_x".into(),
            object: "response",
            created_at: 1,
            status: Status::Completed,
            background: false,
            completed_at: Some(2),
            error: None,
            incomplete_details: None,
            model: "m".into(),
            output: vec![OutputItem::Message {
                id: "msg_x".into(),
                status: Status::Completed,
                role: "assistant",
                content: vec![OutputText::new("héllo wörld".into())],
            }],
            previous_response_id: None,
            conversation: None,
            store: true,
            usage: Some(Usage::new(1, 0, 3)),
            params: EchoParams::defaults(),
        }
    }

    #[test]
    fn split_is_exact_and_lossless() {
        for n in [1, 2, 3, 4, 7, 11, 40] {
            let parts = split_chunks("héllo wörld", n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), "héllo wörld");
        }
        assert_eq!(split_chunks("abcd", 0), vec!["abcd"]);
        assert_eq!(split_chunks("abcde", 2), vec!["abc", "de"]);
    }

    #[test]
    fn frames_follow_the_real_sequence() {
        let frames = response_frames(&sample(), 3);
        let kinds: Vec<String> = frames
            .iter()
            .map(|f| {
                let s = std::str::from_utf8(&f.bytes).unwrap();
                s.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(frames.iter().filter(|f| f.delayed).count(), 3);
        assert!(frames.last().unwrap().terminal);
        assert_eq!(frames.iter().filter(|f| f.terminal).count(), 1);
    }

    #[test]
    fn cancelled_response_has_no_completed_event() {
        let mut r = sample();
        r.status = Status::Cancelled;
        r.output.clear();
        let frames = response_frames(&r, 3);
        assert_eq!(frames.len(), 2);
        assert!(!frames.iter().any(|f| f.terminal));
    }
}
