//! What every request goes through, and the simulator's own introspection endpoints.
//!
//! The middleware reads the body once, records its sha256 and raw bytes (so a test can prove the
//! router changed nothing but `model`), and stamps `x-simulator-instance` (which replica answered)
//! and `x-received-body-sha256` on every response, errors and 404s included.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SimError;
use super::state::{MAX_BODY_BYTES, SimState, sha256_hex};

/// Which simulator instance answered.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-simulator-instance");
/// Hex sha256 of the exact request body bytes received.
pub const BODY_SHA256_HEADER: HeaderName = HeaderName::from_static("x-received-body-sha256");

/// Middleware: buffer and fingerprint the body, then stamp the response headers.
pub async fn observe(State(st): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let declared = headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING);
    let declared_len = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return stamp(
            SimError::PayloadTooLarge(MAX_BODY_BYTES).into_response(),
            &st,
            None,
        );
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let err = if too_large {
                SimError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                SimError::BodyRead(e.to_string())
            };
            return stamp(err.into_response(), &st, None);
        }
    };
    let digest = (declared || !bytes.is_empty()).then(|| sha256_hex(&bytes));
    if let Some(d) = &digest {
        st.requests.push(d.clone(), bytes.clone());
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    stamp(response, &st, digest.as_deref())
}

fn stamp(mut response: Response, st: &SimState, digest: Option<&str>) -> Response {
    let h = response.headers_mut();
    h.insert(INSTANCE_HEADER, st.instance_header.clone());
    if let Some(v) = digest.and_then(|d| HeaderValue::from_str(d).ok()) {
        h.insert(BODY_SHA256_HEADER, v);
    }
    response
}

/// `GET /_simulator/requests/{sha256}`: the raw bytes of a recently received body.
pub async fn request_body(State(st): State<Arc<SimState>>, Path(digest): Path<String>) -> Response {
    match st.requests.get(&digest) {
        Some(bytes) => ([(CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"error": {
                "message": format!("No recent request body with sha256 '{digest}'."),
                "type": "NotFoundError",
                "param": "sha256",
                "code": 404,
            }})),
        )
            .into_response(),
    }
}

/// `GET /_simulator/health`: liveness plus what this instance is and holds.
pub async fn health(State(st): State<Arc<SimState>>) -> Response {
    Json(json!({
        "status": "ok",
        "instance": st.config.instance,
        "models": st.config.models,
        "stored_responses": st.responses.len(),
        "conversations": st.conversations.len(),
    }))
    .into_response()
}

/// Any other path: an OpenAI-style 404 (the router's pass-through paths land here too).
pub async fn not_found(method: Method, uri: Uri) -> SimError {
    SimError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
