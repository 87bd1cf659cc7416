//! Envoy ext_proc message plumbing: header access and `ProcessingResponse` builders, used by the
//! stream driver (`super::driver`).
//!
//! Two Envoy rules shape this file: header values arrive in `raw_value` (bytes) with `value` empty,
//! and a mutation must set only `raw_value` (setting both fails the request with a 500).

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, TrailersResponse, body_mutation, processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

use responses_router_core::ApiError;

/// Looks up a header (names are lower-case in Envoy's map), preferring `raw_value`.
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let h = headers?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))?;
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

/// A header to set, overwriting any value the request already has.
pub fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Continue with these header changes (and optionally a body and a route re-pick).
pub fn common(
    mutation: HeaderMutation,
    body: Option<BodyMutation>,
    clear_route_cache: bool,
) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(mutation),
        body_mutation: body,
        clear_route_cache,
        ..Default::default()
    }
}

/// Replaces the whole body (BUFFERED) or this chunk (STREAMED).
pub fn replace_body(bytes: Vec<u8>) -> BodyMutation {
    BodyMutation {
        mutation: Some(body_mutation::Mutation::Body(bytes)),
    }
}

/// Drops this chunk (STREAMED mode, while the router withholds the body until its end).
pub fn clear_body() -> BodyMutation {
    BodyMutation {
        mutation: Some(body_mutation::Mutation::ClearBody(true)),
    }
}

/// Reply to a request-headers message.
pub fn request_headers_reply(
    response: CommonResponse,
    mode: Option<ProcessingMode>,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(response),
        })),
        mode_override: mode,
        ..Default::default()
    }
}

/// Reply to a request-body message.
pub fn request_body_reply(response: CommonResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
            response: Some(response),
        })),
        ..Default::default()
    }
}

/// Plain "continue" replies for the phases the router only watches.
pub fn request_trailers_reply() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestTrailers(TrailersResponse::default())),
        ..Default::default()
    }
}

/// Reply to a response-headers message, with header changes, optionally changing how the
/// response body is sent.
pub fn response_headers_reply(
    response: CommonResponse,
    mode: Option<ProcessingMode>,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse {
            response: Some(response),
        })),
        mode_override: mode,
        ..Default::default()
    }
}

/// Reply to a response-body chunk.
pub fn response_body_reply() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseBody(BodyResponse::default())),
        ..Default::default()
    }
}

/// Reply to response trailers.
pub fn response_trailers_reply() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseTrailers(TrailersResponse::default())),
        ..Default::default()
    }
}

/// Ends the request with an OpenAI-style error; nothing reaches an upstream.
pub fn error_reply(error: &ApiError) -> ProcessingResponse {
    immediate(
        error.status,
        vec![
            set_header("content-type", "application/json"),
            set_header("x-router-error", error.code),
        ],
        error.to_json(),
        format!("responses_router_{}", error.code),
    )
}

/// Answers the request with `status` and a JSON body the router made; nothing reaches an upstream.
pub fn json_reply(status: u16, body: Vec<u8>) -> ProcessingResponse {
    immediate(
        status,
        vec![set_header("content-type", "application/json")],
        body,
        "responses_router_answered".to_owned(),
    )
}

fn immediate(
    status: u16,
    headers: Vec<HeaderValueOption>,
    body: Vec<u8>,
    details: String,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: Some(HeaderMutation {
                set_headers: headers,
                ..Default::default()
            }),
            body,
            details,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_raw_value_first_and_sets_only_raw_value() {
        let map = HeaderMap {
            headers: vec![
                HeaderValue {
                    key: ":path".into(),
                    raw_value: b"/v1/responses".to_vec(),
                    ..Default::default()
                },
                HeaderValue {
                    key: "x-old".into(),
                    value: "legacy".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(header(Some(&map), ":path"), Some("/v1/responses"));
        assert_eq!(header(Some(&map), "X-Old"), Some("legacy"));
        assert_eq!(header(Some(&map), "missing"), None);
        let set = set_header("x-router-cluster", "code").header.unwrap();
        assert!(set.value.is_empty());
        assert_eq!(set.raw_value, b"code");
    }

    #[test]
    fn error_reply_is_openai_json() {
        let reply = error_reply(&ApiError::model_not_found("nope"));
        let Some(Response::ImmediateResponse(ir)) = reply.response else {
            panic!("not immediate")
        };
        assert_eq!(ir.status.unwrap().code, 404);
        let v: serde_json::Value = serde_json::from_slice(&ir.body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        let ct = &ir.headers.unwrap().set_headers[0];
        assert_eq!(ct.header.as_ref().unwrap().raw_value, b"application/json");
    }
}
