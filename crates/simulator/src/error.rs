//! The simulator's error type and its wire form.
//!
//! Bodies follow vLLM (`{"error":{"message","type","param","code"}}` with the integer HTTP status
//! as `code`), because the point of the simulator is that clients and the router see exactly what a
//! real vLLM replica would send, in particular the 404 for a response id this replica never stored.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a simulator handler can refuse a request with.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Unknown (never stored, deleted, evicted or `store: false`) response id, in a path or in
    /// `previous_response_id`; vLLM reports both with `param: "response_id"`.
    #[error("Response with id '{0}' not found.")]
    ResponseNotFound(String),
    /// A model this replica does not serve.
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// Unknown conversation id; `param` says where it came from (body or path).
    #[error("Conversation with id '{id}' not found.")]
    ConversationNotFound { id: String, param: &'static str },
    /// Unknown item id inside a known conversation.
    #[error("Item with id '{0}' not found.")]
    ItemNotFound(String),
    /// Malformed JSON or a field of the wrong type.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// A request body over [`super::state::MAX_BODY_BYTES`].
    #[error("Request body exceeds the simulator's limit of {0} bytes.")]
    PayloadTooLarge(usize),
    /// The request body could not be read from the connection.
    #[error("Could not read the request body: {0}")]
    BodyRead(String),
    /// No such endpoint.
    #[error("Not Found: {method} {path}")]
    RouteNotFound { method: String, path: String },
}

impl SimError {
    /// Shorthand for a 400 about one field.
    pub fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param,
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ResponseNotFound(_)
            | Self::ModelNotFound(_)
            | Self::ConversationNotFound { .. }
            | Self::ItemNotFound(_)
            | Self::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest { .. } | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn kind_and_param(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::ResponseNotFound(_) => ("invalid_request_error", Some("response_id")),
            Self::ModelNotFound(_) => ("NotFoundError", Some("model")),
            Self::ConversationNotFound { param, .. } => ("invalid_request_error", Some(*param)),
            Self::ItemNotFound(_) => ("invalid_request_error", Some("item_id")),
            Self::BadRequest { param, .. } => ("BadRequestError", *param),
            Self::BodyRead(_) => ("BadRequestError", None),
            Self::PayloadTooLarge(_) => ("invalid_request_error", None),
            Self::RouteNotFound { .. } => ("NotFoundError", None),
        }
    }

    /// The JSON error body, keys in vLLM's order (message, type, param, code).
    pub fn body(&self) -> ErrorBody {
        let (kind, param) = self.kind_and_param();
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code: self.status().as_u16(),
            },
        }
    }
}

/// `{"error": {...}}` envelope; typed so the key order is stable on the wire.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inner error object.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: u16,
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_not_found_body_is_vllms_exactly() {
        let e = SimError::ResponseNotFound("resp_abc".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            serde_json::to_string(&e.body()).unwrap(),
            r#"{"error":{"message":"Response with id 'resp_abc' not found.","type":"invalid_request_error","param":"response_id","code":404}}"#
        );
    }

    #[test]
    fn model_not_found_body_matches_contract() {
        let e = SimError::ModelNotFound("gpt-x".into());
        assert_eq!(
            serde_json::to_string(&e.body()).unwrap(),
            r#"{"error":{"message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
        );
    }
}
