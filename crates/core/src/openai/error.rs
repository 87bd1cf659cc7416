//! OpenAI-shaped errors: the one place where a routing failure becomes a status code and a body.
//!
//! Clients use the official SDKs, which turn `{"error":{"message","type","param","code"}}` plus the
//! HTTP status into typed exceptions (`BadRequestError`, `NotFoundError`, ...). Every refusal the
//! router makes goes through [`ApiError`] so the SDK raises the right class.

use serde::Serialize;

/// Why a request was refused; decides status, `type` and `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed JSON, wrong field types, nothing to classify: 400.
    InvalidRequest,
    /// The explicit model is not served by any configured cluster: 404.
    ModelNotFound,
    /// The body is larger than `max_body_bytes`: 413.
    BodyTooLarge,
    /// No cluster can take the request: 503.
    NoUpstream,
    /// The router itself failed (a bug or a broken Envoy stream): 500.
    Internal,
}

/// An error destined for the client, as OpenAI would phrase it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {}: {message}", self.code)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    pub code: &'static str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>, param: Option<&str>) -> Self {
        let (status, code) = match kind {
            ErrorKind::InvalidRequest => (400, "invalid_request"),
            ErrorKind::ModelNotFound => (404, "model_not_found"),
            ErrorKind::BodyTooLarge => (413, "request_too_large"),
            ErrorKind::NoUpstream => (503, "no_upstream_available"),
            ErrorKind::Internal => (500, "router_error"),
        };
        ApiError {
            kind,
            status,
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    /// The body is not the JSON object the endpoint takes.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::InvalidRequest, message, None);
        e.code = "invalid_json";
        e
    }

    /// One field is wrong; `param` names it as OpenAI does.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::InvalidRequest, message, Some(param));
        e.code = "invalid_value";
        e
    }

    /// A required field is absent.
    pub fn missing_field(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::InvalidRequest, message, Some(param));
        e.code = "missing_required_parameter";
        e
    }

    /// An explicit model nobody serves.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model"),
        )
    }

    /// The body exceeds the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            ErrorKind::BodyTooLarge,
            format!("The request body exceeds the maximum of {limit} bytes."),
            None,
        )
    }

    /// No configured cluster can serve the request.
    pub fn no_upstream(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NoUpstream, message, None)
    }

    /// A fault inside the router or its stream with Envoy.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message, None)
    }

    /// A request the router refuses for what it is, not for its content (e.g. websocket mode).
    pub fn unsupported(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::InvalidRequest, message, None);
        e.code = code;
        e
    }

    /// A request body in a `content-encoding` the router does not read (gzip, br, ...): 415.
    /// The router routes on the body's text, so it cannot route what it cannot read.
    pub fn unsupported_content_encoding(encoding: &str) -> Self {
        let mut e = Self::new(
            ErrorKind::InvalidRequest,
            format!(
                "Request bodies with content-encoding `{encoding}` are not supported; \
                 send the JSON body uncompressed."
            ),
            None,
        );
        e.status = 415;
        e.code = "unsupported_content_encoding";
        e
    }

    /// OpenAI's `type` field for this error.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidRequest | ErrorKind::ModelNotFound | ErrorKind::BodyTooLarge => {
                "invalid_request_error"
            }
            ErrorKind::NoUpstream | ErrorKind::Internal => "server_error",
        }
    }

    /// The JSON body sent to the client.
    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.error_type(),
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        // Serializing plain strings cannot fail; keep a valid body if it ever did.
        serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"router_error"}}"#
                .to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_and_statuses() {
        let e = ApiError::invalid_field("model", "`model` must be a string");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert_eq!(v["error"]["message"], "`model` must be a string");

        assert_eq!(ApiError::model_not_found("x").status, 404);
        assert_eq!(ApiError::body_too_large(1).status, 413);
        let e = ApiError::unsupported_content_encoding("gzip");
        assert_eq!((e.status, e.code), (415, "unsupported_content_encoding"));
        assert_eq!(e.error_type(), "invalid_request_error");
        let e = ApiError::no_upstream("none");
        assert_eq!(e.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["param"].is_null());
    }
}
