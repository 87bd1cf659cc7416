//! Request kinds from `:method` + `:path`.
//!
//! The kind decides whether the router needs the body (only for requests whose body can change the
//! route) and which id in the path names the state the request must reach. Query strings and one
//! trailing slash are ignored, as Envoy and the model servers ignore them; anything unrecognised is
//! [`RequestKind::Other`] and passes through unbuffered.

/// What an incoming request is, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// `POST /v1/responses`: classify, rewrite the model, follow `previous_response_id`.
    CreateResponse,
    /// `POST /v1/responses/input_tokens`: like a create, but `model` is optional.
    InputTokens,
    /// `POST /v1/responses/compact`: like a create; produces a new stored response.
    Compact,
    /// `POST /v1/chat/completions`: classify `messages`, rewrite the model; stateless.
    ChatCompletions,
    /// `GET|DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`: go where `id` lives.
    ResponseById { id: String, op: ResponseOp },
    /// `POST /v1/conversations`: creates conversation state on whichever backend serves it.
    CreateConversation,
    /// `/v1/conversations/{id}[/items[/{item_id}]]`: go where the conversation lives.
    ConversationById { id: String },
    /// `GET /v1/models`: answered by the router from the routing config.
    ListModels,
    /// `GET /v1/models/{id}` (the id may contain `/`, as served model names often do): answered by
    /// the router from the routing config.
    RetrieveModel { id: String },
    /// `Upgrade: websocket` on `/v1/responses`: the frames are invisible to ext_proc, so it is refused.
    ResponsesWebSocket,
    /// Anything else (e.g. `GET /v1/files`): routed to the default cluster, body untouched.
    Other,
}

/// The operation on a stored response, kept for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOp {
    Get,
    Delete,
    Cancel,
    InputItems,
}

impl RequestKind {
    /// The kind of a request, from its method, path and whether it asks for a websocket upgrade.
    pub fn from_request(method: &str, path: &str, websocket_upgrade: bool) -> RequestKind {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.strip_suffix('/').unwrap_or(path);
        let Some(rest) = path.strip_prefix("/v1/") else {
            return RequestKind::Other;
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let method = method.to_ascii_uppercase();
        let m = method.as_str();
        match (m, segments.as_slice()) {
            ("GET", ["responses"]) if websocket_upgrade => RequestKind::ResponsesWebSocket,
            (_, ["responses"]) if websocket_upgrade => RequestKind::ResponsesWebSocket,
            ("POST", ["responses"]) => RequestKind::CreateResponse,
            ("POST", ["responses", "input_tokens"]) => RequestKind::InputTokens,
            ("POST", ["responses", "compact"]) => RequestKind::Compact,
            ("POST", ["chat", "completions"]) => RequestKind::ChatCompletions,
            ("GET", ["responses", id]) => Self::by_id(id, ResponseOp::Get),
            ("DELETE", ["responses", id]) => Self::by_id(id, ResponseOp::Delete),
            ("POST", ["responses", id, "cancel"]) => Self::by_id(id, ResponseOp::Cancel),
            ("GET", ["responses", id, "input_items"]) => Self::by_id(id, ResponseOp::InputItems),
            ("POST", ["conversations"]) => RequestKind::CreateConversation,
            ("GET", ["models"]) if !websocket_upgrade => RequestKind::ListModels,
            ("GET", ["models", id @ ..]) if !websocket_upgrade => {
                let id = id.join("/");
                if valid_id(&id) && !id.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                    RequestKind::RetrieveModel { id }
                } else {
                    RequestKind::Other
                }
            }
            (_, ["conversations", id, ..]) if segments.len() <= 4 && valid_id(id) => {
                RequestKind::ConversationById {
                    id: (*id).to_owned(),
                }
            }
            _ => RequestKind::Other,
        }
    }

    fn by_id(id: &str, op: ResponseOp) -> RequestKind {
        if valid_id(id) {
            RequestKind::ResponseById {
                id: id.to_owned(),
                op,
            }
        } else {
            RequestKind::Other
        }
    }

    /// Whether the routing decision needs the request body.
    pub fn needs_body(&self) -> bool {
        matches!(
            self,
            RequestKind::CreateResponse
                | RequestKind::InputTokens
                | RequestKind::Compact
                | RequestKind::ChatCompletions
        )
    }

    /// Whether a request of this kind must name a model (`input_tokens` may omit it).
    pub fn requires_model(&self) -> bool {
        matches!(
            self,
            RequestKind::CreateResponse | RequestKind::Compact | RequestKind::ChatCompletions
        )
    }

    /// Whether the body may carry `previous_response_id` / `conversation` (chat is stateless).
    pub fn carries_state_fields(&self) -> bool {
        matches!(
            self,
            RequestKind::CreateResponse | RequestKind::InputTokens | RequestKind::Compact
        )
    }

    /// Whether a successful response creates state whose id later requests will name (a response
    /// or a conversation): the router learns where such responses were served.
    pub fn creates_state(&self) -> bool {
        matches!(
            self,
            RequestKind::CreateResponse | RequestKind::Compact | RequestKind::CreateConversation
        )
    }

    /// A short stable name for logs, metrics and the explain output.
    pub fn name(&self) -> &'static str {
        match self {
            RequestKind::CreateResponse => "responses.create",
            RequestKind::InputTokens => "responses.input_tokens",
            RequestKind::Compact => "responses.compact",
            RequestKind::ChatCompletions => "chat.completions",
            RequestKind::ResponseById { op, .. } => match op {
                ResponseOp::Get => "responses.get",
                ResponseOp::Delete => "responses.delete",
                ResponseOp::Cancel => "responses.cancel",
                ResponseOp::InputItems => "responses.input_items",
            },
            RequestKind::CreateConversation => "conversations.create",
            RequestKind::ConversationById { .. } => "conversations.by_id",
            RequestKind::ListModels => "models.list",
            RequestKind::RetrieveModel { .. } => "models.retrieve",
            RequestKind::ResponsesWebSocket => "responses.websocket",
            RequestKind::Other => "other",
        }
    }
}

/// Ids in paths are opaque, but one that is empty, has percent-escapes, dot segments or control
/// characters is not an id any backend minted: such a path is not treated as id-bearing (it passes
/// through to the default cluster, which answers 404), so it cannot steer a pin.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, path: &str) -> RequestKind {
        RequestKind::from_request(method, path, false)
    }

    #[test]
    fn body_bearing_kinds() {
        assert_eq!(kind("POST", "/v1/responses"), RequestKind::CreateResponse);
        assert_eq!(kind("post", "/v1/responses/"), RequestKind::CreateResponse);
        assert_eq!(
            kind("POST", "/v1/responses?beta=true"),
            RequestKind::CreateResponse
        );
        assert_eq!(
            kind("POST", "/v1/responses/input_tokens"),
            RequestKind::InputTokens
        );
        assert_eq!(kind("POST", "/v1/responses/compact"), RequestKind::Compact);
        assert_eq!(
            kind("POST", "/v1/chat/completions"),
            RequestKind::ChatCompletions
        );
        assert_eq!(
            kind("POST", "/v1/chat/completions/?x=1"),
            RequestKind::ChatCompletions
        );
        for k in [
            "POST /v1/responses",
            "POST /v1/responses/input_tokens",
            "POST /v1/chat/completions",
        ] {
            let (m, p) = k.split_once(' ').unwrap();
            assert!(kind(m, p).needs_body(), "{k}");
        }
    }

    #[test]
    fn id_bearing_kinds() {
        let id = |op| RequestKind::ResponseById {
            id: "resp_1".into(),
            op,
        };
        assert_eq!(kind("GET", "/v1/responses/resp_1"), id(ResponseOp::Get));
        assert_eq!(
            kind("GET", "/v1/responses/resp_1?stream=true"),
            id(ResponseOp::Get)
        );
        assert_eq!(
            kind("DELETE", "/v1/responses/resp_1/"),
            id(ResponseOp::Delete)
        );
        assert_eq!(
            kind("POST", "/v1/responses/resp_1/cancel"),
            id(ResponseOp::Cancel)
        );
        assert_eq!(
            kind("GET", "/v1/responses/resp_1/input_items"),
            id(ResponseOp::InputItems)
        );
        let conv = RequestKind::ConversationById {
            id: "conv_9".into(),
        };
        for (m, p) in [
            ("GET", "/v1/conversations/conv_9"),
            ("POST", "/v1/conversations/conv_9"),
            ("DELETE", "/v1/conversations/conv_9"),
            ("GET", "/v1/conversations/conv_9/items"),
            ("POST", "/v1/conversations/conv_9/items"),
            ("GET", "/v1/conversations/conv_9/items/msg_1"),
            ("DELETE", "/v1/conversations/conv_9/items/msg_1"),
        ] {
            assert_eq!(kind(m, p), conv, "{m} {p}");
            assert!(!kind(m, p).needs_body());
        }
        assert_eq!(
            kind("POST", "/v1/conversations"),
            RequestKind::CreateConversation
        );
    }

    #[test]
    fn everything_else_passes_through() {
        for (m, p) in [
            ("POST", "/v1/models"),
            ("DELETE", "/v1/models/ft:m"),
            ("GET", "/v1/models/a//b"),
            ("GET", "/v1/models/a/../b"),
            ("GET", "/v1/files"),
            ("GET", "/v1/responses"),
            ("PUT", "/v1/responses/resp_1"),
            ("POST", "/v1/responses/resp_1"),
            ("POST", "/v2/responses"),
            ("POST", "/V1/RESPONSES"),
            ("POST", "/v1/responses/resp_1/cancel/extra"),
            ("GET", "/v1/responses/%2F..%2Fx"),
            ("GET", "/v1/responses/.."),
            ("GET", "/v1/responses//input_items"),
            ("GET", "/v1/responses/a\u{1}b"),
            ("GET", "/v1/conversations/c/items/i/extra"),
            ("GET", "/healthz"),
            ("GET", ""),
        ] {
            assert_eq!(kind(m, p), RequestKind::Other, "{m} {p}");
            assert!(!kind(m, p).needs_body());
        }
    }

    #[test]
    fn model_listing_and_retrieval_are_the_routers() {
        assert_eq!(kind("GET", "/v1/models"), RequestKind::ListModels);
        assert_eq!(kind("GET", "/v1/models/?x=1"), RequestKind::ListModels);
        assert_eq!(
            kind("GET", "/v1/models/code-model"),
            RequestKind::RetrieveModel {
                id: "code-model".into()
            }
        );
        assert_eq!(
            kind("GET", "/v1/models/meta-llama/Llama-3.1-8B-Instruct"),
            RequestKind::RetrieveModel {
                id: "meta-llama/Llama-3.1-8B-Instruct".into()
            }
        );
        assert!(!kind("GET", "/v1/models").needs_body());
    }

    #[test]
    fn websocket_upgrade_is_its_own_kind() {
        assert_eq!(
            RequestKind::from_request("GET", "/v1/responses", true),
            RequestKind::ResponsesWebSocket
        );
        assert_eq!(
            RequestKind::from_request("GET", "/v1/models", true),
            RequestKind::Other
        );
    }

    #[test]
    fn state_fields_and_model_requirements() {
        assert!(RequestKind::CreateResponse.requires_model());
        assert!(!RequestKind::InputTokens.requires_model());
        assert!(RequestKind::InputTokens.carries_state_fields());
        assert!(!RequestKind::ChatCompletions.carries_state_fields());
    }
}
