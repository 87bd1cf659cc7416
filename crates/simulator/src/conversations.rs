//! `/v1/conversations` handlers: a per-instance conversation store that `POST /v1/responses` with
//! `conversation` appends to.
//!
//! vLLM itself has no conversations API; the simulator offers OpenAI's so the router's stable-key
//! (conversation id) routing can be exercised end to end: a conversation created on one replica is
//! a 404 on every other one.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::SimError;
use super::input::{ListPage, ListQuery, normalize_items, paginate};
use super::object::{Deleted, parse_object};
use super::state::{Conversation, SimState, approx_size, new_id, now_secs};

type St = State<Arc<SimState>>;
type QueryPairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn missing(id: &str) -> SimError {
    SimError::ConversationNotFound {
        id: id.to_owned(),
        param: "conversation_id",
    }
}

/// An empty body is allowed where every field is optional.
fn optional_object(body: &[u8]) -> Result<Map<String, Value>, SimError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Map::new())
    } else {
        parse_object(body)
    }
}

/// `items` of a request: a JSON array of input items (anything else is a 400).
fn take_items(m: &mut Map<String, Value>) -> Result<Vec<Value>, SimError> {
    match m.remove("items") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v @ Value::Array(_)) => Ok(normalize_items(&v, |_, p| new_id(p))),
        Some(_) => Err(SimError::bad("'items' must be an array.", Some("items"))),
    }
}

fn take_metadata(m: &mut Map<String, Value>) -> Result<Option<Value>, SimError> {
    match m.remove("metadata") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(json!({}))),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(SimError::bad(
            "'metadata' must be an object.",
            Some("metadata"),
        )),
    }
}

/// `POST /v1/conversations`.
pub async fn create(State(st): St, body: Bytes) -> Result<Response, SimError> {
    let mut m = optional_object(&body)?;
    let items = take_items(&mut m)?;
    let metadata = take_metadata(&mut m)?.unwrap_or_else(|| json!({}));
    let mut conv = Conversation {
        id: new_id("conv_"),
        created_at: now_secs(),
        metadata,
        items: VecDeque::new(),
        responses: 0,
        items_bytes: 0,
    };
    conv.append(items);
    let body = conv.to_json();
    let size = conv.approx_size();
    st.conversations.insert(conv.id.clone(), conv, size);
    Ok(Json(body).into_response())
}

/// `GET /v1/conversations/{id}`.
pub async fn retrieve(State(st): St, Path(id): Path<String>) -> Result<Response, SimError> {
    let body = st
        .conversations
        .with(&id, Conversation::to_json)
        .ok_or_else(|| missing(&id))?;
    Ok(Json(body).into_response())
}

/// `POST /v1/conversations/{id}`: replaces the metadata.
pub async fn update(
    State(st): St,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, SimError> {
    let mut m = optional_object(&body)?;
    let metadata = take_metadata(&mut m)?;
    let body = st
        .conversations
        .update(&id, |c, size| {
            if let Some(md) = metadata {
                c.metadata = md;
            }
            *size = c.approx_size();
            c.to_json()
        })
        .ok_or_else(|| missing(&id))?;
    Ok(Json(body).into_response())
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(State(st): St, Path(id): Path<String>) -> Result<Response, SimError> {
    st.conversations.remove(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(Deleted::new(id, "conversation.deleted")).into_response())
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    State(st): St,
    Path(id): Path<String>,
    query: QueryPairs,
) -> Result<Response, SimError> {
    let q = ListQuery::from_pairs(&query.map(|Query(q)| q).unwrap_or_default());
    let page = st
        .conversations
        .with(&id, |c| paginate(c.items.iter(), &q))
        .ok_or_else(|| missing(&id))?;
    Ok(Json(page).into_response())
}

/// `POST /v1/conversations/{id}/items`: appends and returns the added items.
pub async fn add_items(
    State(st): St,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, SimError> {
    let mut m = parse_object(&body)?;
    let items = take_items(&mut m)?;
    let added = items.clone();
    st.conversations
        .update(&id, |c, size| {
            c.append(items);
            *size = c.approx_size();
        })
        .ok_or_else(|| missing(&id))?;
    let page = ListPage {
        object: "list",
        first_id: id_of(added.first()),
        last_id: id_of(added.last()),
        has_more: false,
        data: added,
    };
    Ok(Json(page).into_response())
}

fn id_of(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(
    State(st): St,
    Path((id, item_id)): Path<(String, String)>,
) -> Result<Response, SimError> {
    let item = st
        .conversations
        .with(&id, |c| {
            c.items
                .iter()
                .find(|v| v.get("id").and_then(Value::as_str) == Some(item_id.as_str()))
                .cloned()
        })
        .ok_or_else(|| missing(&id))?
        .ok_or_else(|| SimError::ItemNotFound(item_id.clone()))?;
    Ok(Json(item).into_response())
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: returns the conversation.
pub async fn delete_item(
    State(st): St,
    Path((id, item_id)): Path<(String, String)>,
) -> Result<Response, SimError> {
    let body = st
        .conversations
        .update(&id, |c, size| {
            let pos = c
                .items
                .iter()
                .position(|v| v.get("id").and_then(Value::as_str) == Some(item_id.as_str()))?;
            let removed = c.items.remove(pos)?;
            c.items_bytes = c.items_bytes.saturating_sub(approx_size(&removed));
            *size = c.approx_size();
            Some(c.to_json())
        })
        .ok_or_else(|| missing(&id))?
        .ok_or_else(|| SimError::ItemNotFound(item_id.clone()))?;
    Ok(Json(body).into_response())
}
