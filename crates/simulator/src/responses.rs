//! `/v1/responses` handlers: create (JSON, SSE, background), retrieve (JSON or SSE replay), delete,
//! cancel, input_items, input_tokens and compact.
//!
//! Every id-bearing request is answered from this instance's own store only, so a request routed to
//! the wrong replica gets vLLM's 404, which is the failure the router exists to prevent. Validation
//! (model, previous response, conversation) happens before any streaming starts, as in vLLM.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::SimError;
use super::input::{
    ListQuery, echo_snippet, estimate_tokens, last_user_text, normalize_items, paginate, text_chars,
};
use super::object::{
    ConversationRef, CreateRequest, Deleted, EchoParams, OutputItem, OutputText, ResponseObject,
    Status, Usage,
};
use super::sse::{OnFinish, response_frames, sse_response};
use super::state::{SimState, StoredResponse, approx_size, new_id, now_secs};

type St = State<Arc<SimState>>;
type QueryPairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// Fixed per-entry overhead added to the store's byte estimate of a response.
const RESPONSE_OVERHEAD: usize = 1024;
/// Longest a `GET ?stream=true` waits for a pending background response to finish.
const REPLAY_WAIT: Duration = Duration::from_secs(30);

/// What a new response continues from: turn number and tokens of the context so far.
#[derive(Debug, Clone, Copy, Default)]
struct Prior {
    turn: u32,
    tokens: u64,
}

/// Looks up `previous_response_id` in this instance's store (404 if absent).
fn prior_of(st: &SimState, previous: Option<&str>) -> Result<Prior, SimError> {
    let Some(id) = previous else {
        return Ok(Prior::default());
    };
    st.responses
        .with(id, |s| Prior {
            turn: s.turn,
            tokens: s.object.usage.map_or(0, |u| u.total_tokens),
        })
        .ok_or_else(|| SimError::ResponseNotFound(id.to_owned()))
}

fn conversation_missing(id: &str) -> SimError {
    SimError::ConversationNotFound {
        id: id.to_owned(),
        param: "conversation",
    }
}

/// Characters of text the model would read for this request (input plus instructions).
fn prompt_chars(req: &CreateRequest) -> usize {
    text_chars(&req.input) + text_chars(&req.params.instructions)
}

/// `POST /v1/responses`.
pub async fn create(State(st): St, body: Bytes) -> Result<Response, SimError> {
    let req = CreateRequest::parse(&body)?;
    let model = st.resolve_model(req.model.as_deref())?;
    if req.background && !req.store {
        return Err(SimError::bad(
            "background can only be used when `store` is true",
            Some("background"),
        ));
    }
    if req.previous_response_id.is_some() && req.conversation.is_some() {
        return Err(SimError::bad(
            "Mutually exclusive parameters: provide only one of 'previous_response_id' or 'conversation'.",
            None,
        ));
    }
    let mut prior = prior_of(&st, req.previous_response_id.as_deref())?;
    if let Some(conv) = &req.conversation {
        // Count the turn and record the new input in one critical section.
        let items = normalize_items(&req.input, |_, p| new_id(p));
        prior = st
            .conversations
            .update(conv, |c, size| {
                let p = Prior {
                    turn: c.responses,
                    tokens: estimate_tokens(c.items.iter().map(text_chars).sum()),
                };
                c.responses = c.responses.saturating_add(1);
                c.append(items);
                *size = c.approx_size();
                p
            })
            .ok_or_else(|| conversation_missing(conv))?;
    }

    let turn = prior.turn.saturating_add(1);
    let text = format!(
        "[{}/{}] turn {}: {}",
        st.config.instance,
        model,
        turn,
        echo_snippet(last_user_text(&req.input))
    );
    let input_tokens = estimate_tokens(prompt_chars(&req)) + prior.tokens;
    let output_tokens = estimate_tokens(text.chars().count());
    let now = now_secs();
    let id = new_id("resp_");
    let message = OutputItem::Message {
        id: new_id("msg_"),
        status: Status::Completed,
        role: "assistant",
        content: vec![OutputText::new(text)],
    };
    if let Some(conv) = &req.conversation
        && let Ok(item) = serde_json::to_value(&message)
    {
        st.conversations.update(conv, |c, size| {
            c.append([item]);
            *size = c.approx_size();
        });
    }
    let done = ResponseObject {
        id: id.clone(),
        object: "response",
        created_at: now,
        status: Status::Completed,
        background: req.background,
        completed_at: Some(now),
        error: None,
        incomplete_details: None,
        model,
        output: vec![message],
        previous_response_id: req.previous_response_id,
        conversation: req.conversation.map(|id| ConversationRef { id }),
        store: req.store,
        usage: Some(Usage::new(input_tokens, prior.tokens, output_tokens)),
        params: req.params,
    };
    let input = Arc::new(req.input);
    let size = RESPONSE_OVERHEAD + approx_size(&input) + 2 * done.output_text().len();
    let store_as = |status: Status| StoredResponse {
        object: Arc::new(done.pending_snapshot(status)),
        input: input.clone(),
        turn,
    };

    if req.stream {
        let on_finish = if done.store {
            st.responses
                .insert(id.clone(), store_as(Status::InProgress), size);
            let (st, done) = (st.clone(), Arc::new(done.clone()));
            Some(OnFinish::new(move || finalize(&st, done)))
        } else {
            None
        };
        let frames = response_frames(&done, st.config.stream_chunks);
        return Ok(sse_response(frames, st.config.chunk_delay, on_finish));
    }

    if req.background {
        let queued = done.pending_snapshot(Status::Queued);
        st.responses
            .insert(id.clone(), store_as(Status::Queued), size);
        let delay = st.config.background_delay;
        let done = Arc::new(done);
        tokio::spawn(async move {
            set_status(&st, &id, Status::InProgress);
            tokio::time::sleep(delay).await;
            finalize(&st, done);
        });
        return Ok(Json(queued).into_response());
    }

    let response = Json(&done).into_response();
    if done.store {
        st.responses.insert(
            id,
            StoredResponse {
                object: Arc::new(done),
                input,
                turn,
            },
            size,
        );
    }
    Ok(response)
}

/// Replaces a still-pending stored response by its final state (unless it was cancelled).
fn finalize(st: &SimState, done: Arc<ResponseObject>) {
    st.responses.update(&done.id.clone(), |s, _| {
        if s.object.status.is_pending() {
            let mut obj = done;
            Arc::make_mut(&mut obj).completed_at = Some(now_secs());
            s.object = obj;
        }
    });
}

fn set_status(st: &SimState, id: &str, status: Status) {
    st.responses.update(id, |s, _| {
        if s.object.status.is_pending() {
            Arc::make_mut(&mut s.object).status = status;
        }
    });
}

fn stored_object(st: &SimState, id: &str) -> Result<Arc<ResponseObject>, SimError> {
    st.responses
        .with(id, |s| s.object.clone())
        .ok_or_else(|| SimError::ResponseNotFound(id.to_owned()))
}

/// `GET /v1/responses/{id}`; with `?stream=true` replays the event sequence (after
/// `starting_after`, if given) once the response has finished.
pub async fn retrieve(
    State(st): St,
    Path(id): Path<String>,
    query: QueryPairs,
) -> Result<Response, SimError> {
    let pairs = query.map(|Query(q)| q).unwrap_or_default();
    let stream = pairs
        .iter()
        .any(|(k, v)| k == "stream" && (v == "true" || v == "1"));
    let mut obj = stored_object(&st, &id)?;
    if !stream {
        return Ok(Json(&*obj).into_response());
    }
    let starting_after = pairs
        .iter()
        .find(|(k, _)| k == "starting_after")
        .and_then(|(_, v)| v.parse::<u64>().ok());
    let deadline = tokio::time::Instant::now() + st.config.background_delay + REPLAY_WAIT;
    while obj.status.is_pending() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        obj = stored_object(&st, &id)?;
    }
    let mut frames = response_frames(&obj, st.config.stream_chunks);
    if let Some(after) = starting_after {
        let skip = usize::try_from(after.saturating_add(1)).unwrap_or(usize::MAX);
        frames.drain(..skip.min(frames.len()));
    }
    Ok(sse_response(frames, Duration::ZERO, None))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(State(st): St, Path(id): Path<String>) -> Result<Response, SimError> {
    st.responses
        .remove(&id)
        .ok_or_else(|| SimError::ResponseNotFound(id.clone()))?;
    Ok(Json(Deleted::new(id, "response.deleted")).into_response())
}

/// `POST /v1/responses/{id}/cancel`: only a queued or in-progress response can be cancelled
/// (vLLM's rule); cancelling a cancelled one returns it unchanged.
pub async fn cancel(State(st): St, Path(id): Path<String>) -> Result<Response, SimError> {
    let result = st
        .responses
        .update(&id, |s, _| match s.object.status {
            Status::Queued | Status::InProgress => {
                let obj = Arc::make_mut(&mut s.object);
                obj.status = Status::Cancelled;
                obj.completed_at = None;
                Ok(s.object.clone())
            }
            Status::Cancelled => Ok(s.object.clone()),
            Status::Completed => Err(SimError::bad("Cannot cancel a synchronous response.", None)),
        })
        .ok_or_else(|| SimError::ResponseNotFound(id.clone()))??;
    Ok(Json(&*result).into_response())
}

/// `GET /v1/responses/{id}/input_items`: the stored input as items, newest first by default.
pub async fn input_items(
    State(st): St,
    Path(id): Path<String>,
    query: QueryPairs,
) -> Result<Response, SimError> {
    let input = st
        .responses
        .with(&id, |s| s.input.clone())
        .ok_or_else(|| SimError::ResponseNotFound(id.clone()))?;
    // Ids are derived from the response id, so repeated listings agree.
    let seed = id.strip_prefix("resp_").unwrap_or(&id);
    let items = normalize_items(&input, |i, p| format!("{p}{seed}_{i}"));
    let q = ListQuery::from_pairs(&query.map(|Query(q)| q).unwrap_or_default());
    Ok(Json(paginate(items.iter(), &q)).into_response())
}

/// `POST /v1/responses/input_tokens`: estimated input tokens, including the stored chain.
pub async fn input_tokens(State(st): St, body: Bytes) -> Result<Response, SimError> {
    let req = CreateRequest::parse(&body)?;
    if let Some(m) = &req.model {
        st.resolve_model(Some(m))?;
    }
    let mut prior = prior_of(&st, req.previous_response_id.as_deref())?;
    if let Some(conv) = &req.conversation {
        prior.tokens = st
            .conversations
            .with(conv, |c| {
                estimate_tokens(c.items.iter().map(text_chars).sum())
            })
            .ok_or_else(|| conversation_missing(conv))?;
    }
    let tokens = estimate_tokens(prompt_chars(&req)) + prior.tokens;
    #[derive(serde::Serialize)]
    struct InputTokens {
        object: &'static str,
        input_tokens: u64,
    }
    Ok(Json(InputTokens {
        object: "response.input_tokens",
        input_tokens: tokens,
    })
    .into_response())
}

/// `POST /v1/responses/compact`: a stored `response.compaction` whose single output item stands
/// for the whole chain; continuing from it keeps counting turns where the chain left off.
pub async fn compact(State(st): St, body: Bytes) -> Result<Response, SimError> {
    let req = CreateRequest::parse(&body)?;
    let model = st.resolve_model(req.model.as_deref())?;
    let prior = prior_of(&st, req.previous_response_id.as_deref())?;
    let now = now_secs();
    let id = new_id("resp_");
    let input_tokens = estimate_tokens(prompt_chars(&req)) + prior.tokens;
    let encrypted_content = format!(
        "sim-compaction:{}:{}:turns={}",
        st.config.instance,
        new_id(""),
        prior.turn
    );
    let output_tokens = estimate_tokens(encrypted_content.len());
    let obj = ResponseObject {
        id: id.clone(),
        object: "response.compaction",
        created_at: now,
        status: Status::Completed,
        background: false,
        completed_at: Some(now),
        error: None,
        incomplete_details: None,
        model,
        output: vec![OutputItem::Compaction {
            id: new_id("cmp_"),
            encrypted_content,
        }],
        previous_response_id: req.previous_response_id,
        conversation: None,
        store: true,
        usage: Some(Usage::new(input_tokens, prior.tokens, output_tokens)),
        params: EchoParams {
            instructions: req.params.instructions,
            ..EchoParams::defaults()
        },
    };
    let response = Json(&obj).into_response();
    let input = Arc::new(req.input);
    let size = RESPONSE_OVERHEAD + approx_size(&input);
    st.responses.insert(
        id,
        StoredResponse {
            object: Arc::new(obj),
            input,
            turn: prior.turn,
        },
        size,
    );
    Ok(response)
}
