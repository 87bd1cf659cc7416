//! The Responses API objects the simulator produces (Response, output message, usage) and the
//! lenient parse of a `CreateResponse` request body.
//!
//! The objects are typed so their key order and shape are stable, and they echo the request's
//! parameters back the way OpenAI and vLLM do, so SDKs and the router parse them like the real thing.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::SimError;

/// Lifecycle status of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Cancelled,
}

impl Status {
    /// Whether the response can still change (and so can be cancelled or waited for).
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::InProgress)
    }
}

/// The Response object (`object: "response"`, or `"response.compaction"` for `/compact`).
#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub status: Status,
    pub background: bool,
    pub completed_at: Option<u64>,
    pub error: Option<Value>,
    pub incomplete_details: Option<Value>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<ConversationRef>,
    pub store: bool,
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub params: EchoParams,
}

impl ResponseObject {
    /// The same response before generation: given status, no output, no usage.
    pub fn pending_snapshot(&self, status: Status) -> Self {
        Self {
            status,
            completed_at: None,
            output: Vec::new(),
            usage: None,
            ..self.clone()
        }
    }

    /// Concatenated output text (the SDK's `output_text`).
    pub fn output_text(&self) -> String {
        let mut s = String::new();
        for item in &self.output {
            if let OutputItem::Message { content, .. } = item {
                for part in content {
                    s.push_str(&part.text);
                }
            }
        }
        s
    }
}

/// `{"id", "object": "<kind>.deleted", "deleted": true}`, the answer to a DELETE.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

impl Deleted {
    pub fn new(id: String, object: &'static str) -> Self {
        Self {
            id,
            object,
            deleted: true,
        }
    }
}

/// `conversation: {"id": "conv_…"}` on a response.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationRef {
    pub id: String,
}

/// One item of `output`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The assistant's reply.
    Message {
        id: String,
        status: Status,
        role: &'static str,
        content: Vec<OutputText>,
    },
    /// The opaque item `/compact` returns in place of the compacted history.
    Compaction {
        id: String,
        encrypted_content: String,
    },
}

/// An `output_text` content part.
#[derive(Debug, Clone, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

/// Token usage.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: u64,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CachedTokens {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Usage with `cached` of the input tokens coming from the stored chain.
    pub fn new(input_tokens: u64, cached: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            input_tokens_details: CachedTokens {
                cached_tokens: cached,
            },
            output_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: input_tokens + output_tokens,
        }
    }
}

/// Request parameters a Response echoes back, with the API's defaults when absent.
#[derive(Debug, Clone, Serialize)]
pub struct EchoParams {
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub max_tool_calls: Value,
    pub metadata: Value,
    pub parallel_tool_calls: Value,
    pub prompt: Value,
    pub prompt_cache_key: Value,
    pub reasoning: Value,
    pub safety_identifier: Value,
    pub service_tier: Value,
    pub temperature: Value,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Value,
    pub top_logprobs: Value,
    pub top_p: Value,
    pub truncation: Value,
    pub user: Value,
}

impl EchoParams {
    /// Takes the echoed fields out of a request object (null or absent means the default).
    fn take(m: &mut Map<String, Value>) -> Self {
        let mut f = |key: &str, default: fn() -> Value| match m.remove(key) {
            None | Some(Value::Null) => default(),
            Some(v) => v,
        };
        Self {
            instructions: f("instructions", || Value::Null),
            max_output_tokens: f("max_output_tokens", || Value::Null),
            max_tool_calls: f("max_tool_calls", || Value::Null),
            metadata: f("metadata", || json!({})),
            parallel_tool_calls: f("parallel_tool_calls", || Value::Bool(true)),
            prompt: f("prompt", || Value::Null),
            prompt_cache_key: f("prompt_cache_key", || Value::Null),
            reasoning: f("reasoning", || json!({"effort": null, "summary": null})),
            safety_identifier: f("safety_identifier", || Value::Null),
            service_tier: f("service_tier", || Value::from("default")),
            temperature: f("temperature", || json!(1.0)),
            text: f("text", || json!({"format": {"type": "text"}})),
            tool_choice: f("tool_choice", || Value::from("auto")),
            tools: f("tools", || json!([])),
            top_logprobs: f("top_logprobs", || json!(0)),
            top_p: f("top_p", || json!(1.0)),
            truncation: f("truncation", || Value::from("disabled")),
            user: f("user", || Value::Null),
        }
    }

    /// Defaults only (for `/compact`, whose request has none of these).
    pub fn defaults() -> Self {
        Self::take(&mut Map::new())
    }
}

/// The fields of a `POST /v1/responses` (or `/input_tokens`, `/compact`) body the simulator acts on.
#[derive(Debug)]
pub struct CreateRequest {
    pub model: Option<String>,
    pub input: Value,
    pub previous_response_id: Option<String>,
    pub conversation: Option<String>,
    pub store: bool,
    pub stream: bool,
    pub background: bool,
    pub params: EchoParams,
}

impl CreateRequest {
    /// Parses leniently: any JSON object is accepted as long as the fields the simulator uses have
    /// the right types. Duplicate keys resolve last-wins, like Python's `json` in vLLM.
    pub fn parse(body: &[u8]) -> Result<Self, SimError> {
        let mut m = parse_object(body)?;
        Ok(Self {
            model: opt_string(&mut m, "model")?,
            input: m.remove("input").unwrap_or(Value::Null),
            previous_response_id: opt_string(&mut m, "previous_response_id")?,
            conversation: conversation_id(&mut m)?,
            store: opt_bool(&mut m, "store")?.unwrap_or(true),
            stream: opt_bool(&mut m, "stream")?.unwrap_or(false),
            background: opt_bool(&mut m, "background")?.unwrap_or(false),
            params: EchoParams::take(&mut m),
        })
    }
}

/// Parses a body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SimError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(SimError::bad(
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => Err(SimError::bad(
            format!("Invalid JSON in request body: {e}"),
            None,
        )),
    }
}

/// A field that must be a string when present and not null.
pub fn opt_string(
    m: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, SimError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SimError::bad(
            format!("'{key}' must be a string."),
            Some(key),
        )),
    }
}

/// A field that must be a boolean when present and not null.
pub fn opt_bool(m: &mut Map<String, Value>, key: &'static str) -> Result<Option<bool>, SimError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(SimError::bad(
            format!("'{key}' must be a boolean."),
            Some(key),
        )),
    }
}

/// `conversation` is `"conv_…"` or `{"id": "conv_…"}`.
fn conversation_id(m: &mut Map<String, Value>) -> Result<Option<String>, SimError> {
    match m.remove("conversation") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Object(mut o)) => match o.remove("id") {
            Some(Value::String(s)) => Ok(Some(s)),
            _ => Err(SimError::bad(
                "'conversation.id' must be a string.",
                Some("conversation"),
            )),
        },
        Some(_) => Err(SimError::bad(
            "'conversation' must be a string or an object with an 'id'.",
            Some("conversation"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_fields_and_defaults() {
        let r = CreateRequest::parse(
            br#"{"model":"m","input":"hi","conversation":{"id":"conv_1"},"stream":true,"temperature":0.2,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.conversation.as_deref(), Some("conv_1"));
        assert!(r.stream && r.store && !r.background);
        assert_eq!(r.params.temperature, json!(0.2));
        assert_eq!(r.params.tool_choice, json!("auto"));
    }

    #[test]
    fn parse_rejects_wrong_types_and_bad_json() {
        for body in [
            &br#"{"model":1}"#[..],
            br#"{"stream":"yes"}"#,
            br#"{"conversation":5}"#,
            br#"[1,2]"#,
            br#"{"model":"m""#,
            b"",
        ] {
            let e = CreateRequest::parse(body).unwrap_err();
            assert_eq!(
                e.status().as_u16(),
                400,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn duplicate_keys_resolve_last_wins_like_vllm() {
        let r = CreateRequest::parse(br#"{"model":"a","model":"b"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("b"));
    }

    #[test]
    fn response_serializes_with_api_shape() {
        let obj = ResponseObject {
            id: "resp_1".into(),
            object: "response",
            created_at: 5,
            status: Status::Completed,
            background: false,
            completed_at: Some(6),
            error: None,
            incomplete_details: None,
            model: "m".into(),
            output: vec![OutputItem::Message {
                id: "msg_1".into(),
                status: Status::Completed,
                role: "assistant",
                content: vec![OutputText::new("hello".into())],
            }],
            previous_response_id: None,
            conversation: None,
            store: true,
            usage: Some(Usage::new(3, 0, 2)),
            params: EchoParams::defaults(),
        };
        let v = serde_json::to_value(&obj).unwrap();
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["output"][0]["content"][0]["text"], "hello");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["tools"], json!([]));
        assert_eq!(v["previous_response_id"], Value::Null);
        assert_eq!(obj.output_text(), "hello");
    }
}
