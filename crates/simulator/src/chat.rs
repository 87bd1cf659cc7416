//! `POST /v1/chat/completions` (JSON and `data:`-framed SSE ending in `[DONE]`) and
//! `GET /v1/models`.
//!
//! Chat is stateless, so the "turn" is read from the history the client sends (one plus the number
//! of assistant messages): the same visible proof of carried context the Responses API gets from
//! its store.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::SimError;
use super::input::{echo_snippet, estimate_tokens, text_chars};
use super::object::{opt_bool, opt_string, parse_object};
use super::sse::{Frame, split_chunks, sse_response};
use super::state::{SimState, new_id, now_secs};

type St = State<Arc<SimState>>;

#[derive(Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// One `chat.completion.chunk`.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a ChatUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

fn data_frame<T: Serialize>(value: &T, delayed: bool) -> Frame {
    let mut v = b"data: ".to_vec();
    // Serializing plain structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut v, value);
    v.extend_from_slice(b"\n\n");
    Frame {
        bytes: Bytes::from(v),
        delayed,
        terminal: false,
    }
}

/// Text of the last user message of a chat history.
fn last_user_message(messages: &[Value]) -> Option<&str> {
    messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .find_map(|m| match m.get("content")? {
            Value::String(s) => Some(s.as_str()),
            Value::Array(parts) => parts
                .iter()
                .rev()
                .find_map(|p| p.get("text").and_then(Value::as_str)),
            _ => None,
        })
}

/// `POST /v1/chat/completions`.
pub async fn completions(State(st): St, body: Bytes) -> Result<Response, SimError> {
    let mut m = parse_object(&body)?;
    let model = st.resolve_model(opt_string(&mut m, "model")?.as_deref())?;
    let stream = opt_bool(&mut m, "stream")?.unwrap_or(false);
    let include_usage = m
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let messages = match m.remove("messages") {
        Some(Value::Array(a)) => a,
        _ => {
            return Err(SimError::bad(
                "'messages' is required and must be an array.",
                Some("messages"),
            ));
        }
    };
    let assistant_turns = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count();
    let text = format!(
        "[{}/{}] turn {}: {}",
        st.config.instance,
        model,
        assistant_turns + 1,
        echo_snippet(last_user_message(&messages))
    );
    let prompt_tokens = estimate_tokens(messages.iter().map(text_chars).sum());
    let completion_tokens = estimate_tokens(text.chars().count());
    let usage = ChatUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = new_id("chatcmpl-");
    let created = now_secs();

    if !stream {
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null, "tool_calls": []},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
            "system_fingerprint": null,
        }))
        .into_response());
    }

    let chunk = |delta: Delta<'_>, finish_reason, delayed| {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        let c = Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: &choices,
            usage: None,
        };
        data_frame(&c, delayed)
    };
    let pieces = split_chunks(&text, st.config.stream_chunks);
    let mut frames = Vec::with_capacity(pieces.len() + 4);
    frames.push(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
        false,
    ));
    for piece in pieces {
        frames.push(chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
            true,
        ));
    }
    frames.push(chunk(Delta::default(), Some("stop"), false));
    if include_usage {
        let c = Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices: &[],
            usage: Some(&usage),
        };
        frames.push(data_frame(&c, false));
    }
    frames.push(Frame {
        bytes: Bytes::from_static(b"data: [DONE]\n\n"),
        delayed: false,
        terminal: true,
    });
    Ok(sse_response(frames, st.config.chunk_delay, None))
}

/// `GET /v1/models`: the models this replica serves, in vLLM's list shape.
pub async fn models(State(st): St) -> Response {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
        root: &'a str,
        parent: Option<&'a str>,
        permission: [(); 0],
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let created = now_secs();
    let data = st
        .config
        .models
        .iter()
        .map(|m| Model {
            id: m,
            object: "model",
            created,
            owned_by: "vllm",
            root: m,
            parent: None,
            permission: [],
        })
        .collect();
    Json(List {
        object: "list",
        data,
    })
    .into_response()
}
