//! The routing decision: request in, model + upstream + reason out.
//!
//! [`decide`] is a pure function of the request, the routing table and what the affinity store
//! knows about the request's state id; [`route`] adds the two effects around it (parse the body,
//! ask the store) and is the one code path shared by the ext_proc service and `explain`.
//!
//! Order of precedence for the upstream: learned affinity (where the state is) > FNV rendezvous
//! hash of the state id (deterministic fallback) > weighted spread of stateless requests. For the
//! model: explicit > classified category > default; affinity may override a *classified* model
//! (never an explicit one) to one the pinned cluster serves.

use serde::Serialize;

use crate::affinity::{AffinityStore, Candidate, Location, rendezvous};
use crate::classify::Classifier;
use crate::config::{RoutingTable, UnknownModelPolicy};
use crate::openai::body::{self, ParsedBody, StateRef};
use crate::openai::{ApiError, RequestKind, text};

/// Why the upstream (and model) were chosen; sent to Envoy as `x-router-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The classifier picked the model from a category.
    Category,
    /// `auto` matched no category, or an unknown model fell back to the default.
    Default,
    /// The client named a served model.
    Explicit,
    /// The store knew where the request's state lives.
    Affinity,
    /// The state id was hashed over the eligible clusters (not learned yet, or learning off).
    Hash,
    /// Not an API the router decides on; sent to the default model's clusters untouched.
    Passthrough,
}

impl Reason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Category => "category",
            Reason::Default => "default",
            Reason::Explicit => "explicit",
            Reason::Affinity => "affinity",
            Reason::Hash => "hash",
            Reason::Passthrough => "passthrough",
        }
    }
}

/// How a request naming a state id was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityOutcome {
    /// The store knew where the id lives, and the request goes there.
    Hit,
    /// The store did not know the id: placed by hash.
    Miss,
    /// The store named a cluster the routing YAML no longer has: placed by hash.
    StaleCluster,
}

/// A category's score for the explain output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CategoryScore {
    pub category: String,
    pub score: u32,
}

/// What the router decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The request kind's stable name.
    pub kind: &'static str,
    /// The model the upstream will see; `None` when the request names none (id paths).
    pub model: Option<String>,
    /// The Envoy cluster.
    pub cluster: String,
    /// The host inside the cluster, when affinity pins one.
    pub host: Option<String>,
    pub reason: Reason,
    /// The winning category, when classification picked the model.
    pub category: Option<String>,
    /// When affinity overrode the classifier: the model it had picked.
    pub classified_model: Option<String>,
    /// The state the request refers to, if any.
    pub state: Option<StateRef>,
    /// How a request with a state id was placed.
    pub affinity: Option<AffinityOutcome>,
    /// The answer will be an SSE stream creating state, whose id only the observer filter can
    /// learn; every other request can skip that filter.
    pub learn_from_stream: bool,
    /// The text that was classified (explain only; never logged by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every category's score, in priority order (empty if no classification ran).
    pub scores: Vec<CategoryScore>,
    /// The rewritten body, when the model value changed.
    #[serde(skip)]
    pub new_body: Option<Vec<u8>>,
}

/// Facts about a request that come from its headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta<'a> {
    pub kind: &'a RequestKind,
    /// Envoy's `x-request-id`: spreads stateless requests over weighted clusters, reproducibly.
    pub request_id: &'a str,
}

/// Parses the body (if the kind needs it), asks the store about the state id, and decides.
pub async fn route(
    table: &RoutingTable,
    meta: RequestMeta<'_>,
    body_bytes: Option<&[u8]>,
    store: &dyn AffinityStore,
) -> Result<Decision, ApiError> {
    let parsed = match (meta.kind.needs_body(), body_bytes) {
        (true, bytes) => {
            let bytes = bytes.unwrap_or_default();
            if bytes.len() > table.max_body_bytes() {
                return Err(ApiError::body_too_large(table.max_body_bytes()));
            }
            Some(body::parse(bytes)?)
        }
        (false, _) => None,
    };
    let state = state_of(meta.kind, parsed.as_ref());
    let pinned = match &state {
        Some(s) => store.lookup(s.id()).await,
        None => None,
    };
    decide(table, meta, parsed.as_ref(), state, pinned.as_ref())
}

/// The state id a request refers to: in its path, or in its body's state fields.
fn state_of(kind: &RequestKind, parsed: Option<&ParsedBody<'_>>) -> Option<StateRef> {
    match kind {
        RequestKind::ResponseById { id, .. } => Some(StateRef::Response(id.clone())),
        RequestKind::ConversationById { id } => Some(StateRef::Conversation(id.clone())),
        k if k.carries_state_fields() => parsed.and_then(|p| p.state.clone()),
        _ => None,
    }
}

/// The pure decision. `pinned` is what the affinity store knows about `state`.
pub fn decide(
    table: &RoutingTable,
    meta: RequestMeta<'_>,
    parsed: Option<&ParsedBody<'_>>,
    state: Option<StateRef>,
    pinned: Option<&Location>,
) -> Result<Decision, ApiError> {
    let mut decision = Decision {
        kind: meta.kind.name(),
        model: None,
        cluster: String::new(),
        host: None,
        reason: Reason::Passthrough,
        category: None,
        classified_model: None,
        state,
        affinity: None,
        learn_from_stream: false,
        text: None,
        scores: Vec::new(),
        new_body: None,
    };
    match meta.kind {
        RequestKind::ResponsesWebSocket => Err(ApiError::unsupported(
            "websocket_not_supported",
            "WebSocket mode of /v1/responses is not supported by this router; \
             use HTTP requests (with `stream: true` for streaming).",
        )),
        RequestKind::Other => {
            let default = &table.config().default_model;
            decision.cluster = spread(&table.candidates_for(default), meta.request_id)?;
            Ok(decision)
        }
        RequestKind::CreateConversation => {
            decision.reason = Reason::Hash;
            decision.cluster = spread(&table.all_candidates(), meta.request_id)?;
            Ok(decision)
        }
        RequestKind::ResponseById { .. } | RequestKind::ConversationById { .. } => {
            place_by_state(table, &mut decision, &table.all_candidates(), pinned)?;
            Ok(decision)
        }
        RequestKind::CreateResponse
        | RequestKind::InputTokens
        | RequestKind::Compact
        | RequestKind::ChatCompletions => {
            let parsed =
                parsed.ok_or_else(|| ApiError::invalid_json("the request body is empty"))?;
            decision.learn_from_stream = parsed.stream && meta.kind.creates_state();
            choose_model(table, meta.kind, parsed, &mut decision)?;
            let candidates = match &decision.model {
                Some(model) => table.candidates_for(model),
                None => table.all_candidates(),
            };
            if decision.state.is_some() {
                place_by_state(table, &mut decision, &candidates, pinned)?;
            } else {
                decision.cluster = spread(&candidates, meta.request_id)?;
            }
            if let (Some(model), Some(field)) = (&decision.model, &parsed.model)
                && *model != field.name
            {
                decision.new_body = Some(body::splice_model(parsed.bytes, &field.span, model));
            }
            Ok(decision)
        }
    }
}

/// Picks the model: explicit, classified or default. Sets `model`, `reason`, `category`, `scores`.
fn choose_model(
    table: &RoutingTable,
    kind: &RequestKind,
    parsed: &ParsedBody<'_>,
    decision: &mut Decision,
) -> Result<(), ApiError> {
    let Some(field) = &parsed.model else {
        if kind.requires_model() {
            return Err(ApiError::missing_field(
                "model",
                "you must provide a model parameter",
            ));
        }
        // `input_tokens` without a model: leave the body alone, route by state or default.
        decision.reason = Reason::Default;
        if decision.state.is_none() {
            decision.model = Some(table.config().default_model.clone());
        }
        return Ok(());
    };
    let requested = field.name.as_ref();
    if table.is_auto(requested) {
        let text = text::extract(parsed, table.text_policy())?;
        if text.trim().is_empty() {
            return Err(ApiError::invalid_field(
                "input",
                format!("model `{requested}` needs text to classify, but the request has none"),
            ));
        }
        let result = table.classifier().classify(&text);
        decision.scores = table
            .classifier()
            .categories()
            .iter()
            .zip(&result.scores)
            .map(|(c, &score)| CategoryScore {
                category: c.name.clone(),
                score,
            })
            .collect();
        decision.text = Some(text);
        match result
            .winner
            .and_then(|w| Some((w, table.category_model(w)?)))
        {
            Some((w, model)) => {
                decision.model = Some(model.to_owned());
                decision.reason = Reason::Category;
                decision.category = table
                    .classifier()
                    .categories()
                    .get(w)
                    .map(|c| c.name.clone());
            }
            None => {
                decision.model = Some(table.config().default_model.clone());
                decision.reason = Reason::Default;
            }
        }
    } else if table.serves(requested) {
        decision.model = Some(requested.to_owned());
        decision.reason = Reason::Explicit;
    } else {
        match table.unknown_model() {
            UnknownModelPolicy::Reject => return Err(ApiError::model_not_found(requested)),
            UnknownModelPolicy::Default => {
                decision.model = Some(table.config().default_model.clone());
                decision.reason = Reason::Default;
            }
        }
    }
    Ok(())
}

/// Places a request that refers to state: where the store says it lives, else by hash.
fn place_by_state(
    table: &RoutingTable,
    decision: &mut Decision,
    candidates: &[Candidate<'_>],
    pinned: Option<&Location>,
) -> Result<(), ApiError> {
    let Some(state) = decision.state.clone() else {
        return Err(ApiError::internal("placing by state without a state id"));
    };
    // A pin to a cluster the current config no longer has is stale: fall back to the hash.
    decision.affinity = Some(match pinned {
        None => AffinityOutcome::Miss,
        Some(p) if table.models_of(&p.cluster).is_empty() => AffinityOutcome::StaleCluster,
        Some(_) => AffinityOutcome::Hit,
    });
    if let Some(pin) = pinned.filter(|p| !table.models_of(&p.cluster).is_empty()) {
        let served = table.models_of(&pin.cluster);
        match decision.model.clone() {
            Some(model) if !served.contains(&model) => {
                if matches!(decision.reason, Reason::Category | Reason::Default) {
                    // The state outranks the classifier: keep a model the pinned cluster serves.
                    decision.classified_model = Some(model);
                    decision.model = served.first().cloned();
                } else {
                    return Err(ApiError::invalid_field(
                        "model",
                        format!(
                            "`{}` is stored on a backend that does not serve model `{model}`; \
                             continue it with one of: {}",
                            state.id(),
                            served.join(", ")
                        ),
                    ));
                }
            }
            _ => {}
        }
        decision.cluster = pin.cluster.clone();
        decision.host = pin.host.clone().filter(|_| table.pins_hosts(&pin.cluster));
        decision.reason = Reason::Affinity;
        return Ok(());
    }
    let idx = rendezvous(state.id(), candidates)
        .ok_or_else(|| ApiError::no_upstream("no cluster is configured for this request"))?;
    decision.cluster = candidates[idx].name.to_owned();
    decision.reason = Reason::Hash;
    Ok(())
}

/// Spreads a stateless request over weighted candidates, keyed by its request id.
fn spread(candidates: &[Candidate<'_>], request_id: &str) -> Result<String, ApiError> {
    rendezvous(request_id, candidates)
        .map(|i| candidates[i].name.to_owned())
        .ok_or_else(|| ApiError::no_upstream("no cluster is configured for this request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::NoStore;
    use crate::config::from_yaml;

    const YAML: &str = r#"
default_model: general-model
models:
  - name: general-model
    clusters: [{ name: general }, { name: general-b }]
  - name: code-model
    clusters: [{ name: code }]
  - name: math-model
    clusters: [{ name: code }]
clusters:
  - name: code
    pin_host: true
categories:
  - name: coding
    model: code-model
    keywords: [python, rust]
  - name: math
    model: math-model
    keywords: [integral]
"#;

    fn table() -> RoutingTable {
        from_yaml(YAML).unwrap()
    }

    fn run(
        method: &str,
        path: &str,
        body: &str,
        pinned: Option<Location>,
    ) -> Result<Decision, ApiError> {
        let t = table();
        let kind = RequestKind::classify(method, path, false);
        let meta = RequestMeta {
            kind: &kind,
            request_id: "req-1",
        };
        let parsed = if kind.needs_body() {
            Some(body::parse(body.as_bytes())?)
        } else {
            None
        };
        let state = state_of(&kind, parsed.as_ref());
        decide(&t, meta, parsed.as_ref(), state, pinned.as_ref())
    }

    fn post(body: &str) -> Decision {
        run("POST", "/v1/responses", body, None).unwrap()
    }

    #[test]
    fn auto_is_classified_and_spliced() {
        let d = post(r#"{"model":"auto","input":"write python"}"#);
        assert_eq!(
            (
                d.model.as_deref(),
                d.cluster.as_str(),
                d.reason,
                d.category.as_deref()
            ),
            (Some("code-model"), "code", Reason::Category, Some("coding"))
        );
        assert_eq!(
            d.new_body.unwrap(),
            br#"{"model":"code-model","input":"write python"}"#
        );
        assert_eq!(
            d.scores[0],
            CategoryScore {
                category: "coding".into(),
                score: 1
            }
        );
    }

    #[test]
    fn auto_without_match_goes_to_default() {
        let d = post(r#"{"model":"auto","input":"hello there"}"#);
        assert_eq!(
            (d.model.as_deref(), d.reason),
            (Some("general-model"), Reason::Default)
        );
        assert!(d.cluster == "general" || d.cluster == "general-b");
    }

    #[test]
    fn explicit_model_is_untouched() {
        let d = post(r#"{"model":"code-model","input":"hello"}"#);
        assert_eq!((d.cluster.as_str(), d.reason), ("code", Reason::Explicit));
        assert!(d.new_body.is_none());
        assert!(d.scores.is_empty(), "explicit models are not classified");
    }

    #[test]
    fn unknown_model_policy() {
        let err = run(
            "POST",
            "/v1/responses",
            r#"{"model":"gpt-x","input":"a"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(err.status, 404);
        let t = from_yaml(&format!("{YAML}\nunknown_model: default\n")).unwrap();
        let kind = RequestKind::CreateResponse;
        let bytes = br#"{"model":"gpt-x","input":"a"}"#;
        let parsed = body::parse(bytes).unwrap();
        let d = decide(
            &t,
            RequestMeta {
                kind: &kind,
                request_id: "r",
            },
            Some(&parsed),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            (d.model.as_deref(), d.reason),
            (Some("general-model"), Reason::Default)
        );
        assert_eq!(
            d.new_body.unwrap(),
            br#"{"model":"general-model","input":"a"}"#
        );
    }

    #[test]
    fn client_errors() {
        let status = |b: &str| run("POST", "/v1/responses", b, None).unwrap_err().status;
        assert_eq!(status(r#"{"input":"x"}"#), 400, "missing model");
        assert_eq!(status(r#"{"model":"auto"}"#), 400, "nothing to classify");
        assert_eq!(
            status(r#"{"model":"auto","input":[{"role":"assistant","content":"x"}]}"#),
            400
        );
        assert_eq!(status(r#"{"model":"auto","input":7}"#), 400);
        let ws = RequestKind::classify("GET", "/v1/responses", true);
        let err = decide(
            &table(),
            RequestMeta {
                kind: &ws,
                request_id: "",
            },
            None,
            None,
            None,
        )
        .unwrap_err();
        assert_eq!((err.status, err.code), (400, "websocket_not_supported"));
    }

    #[test]
    fn continuation_hashes_the_state_id_over_the_models_clusters() {
        let body = |id: &str| {
            format!(r#"{{"model":"general-model","previous_response_id":"{id}","input":"x"}}"#)
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let a = post(&body(&format!("resp_{i}")));
            let b = post(&body(&format!("resp_{i}")));
            assert_eq!(a.reason, Reason::Hash);
            assert_eq!(a.cluster, b.cluster, "deterministic");
            seen.insert(a.cluster);
        }
        assert_eq!(seen.len(), 2, "both general clusters are used: {seen:?}");
    }

    #[test]
    fn learned_affinity_outranks_hash_and_classification() {
        let pin = Location {
            cluster: "code".into(),
            host: Some("10.0.0.7:8000".into()),
        };
        // The classifier says general (no keywords) but the state lives on `code`.
        let d = run(
            "POST",
            "/v1/responses",
            r#"{"model":"auto","previous_response_id":"resp_1","input":"and then?"}"#,
            Some(pin.clone()),
        )
        .unwrap();
        assert_eq!(
            (d.cluster.as_str(), d.host.as_deref()),
            ("code", Some("10.0.0.7:8000"))
        );
        assert_eq!(d.reason, Reason::Affinity);
        assert_eq!(
            d.model.as_deref(),
            Some("code-model"),
            "a model the pinned cluster serves"
        );
        assert_eq!(d.classified_model.as_deref(), Some("general-model"));
        // A classified model the pinned cluster serves is kept.
        let d = run(
            "POST",
            "/v1/responses",
            r#"{"model":"auto","previous_response_id":"resp_1","input":"an integral"}"#,
            Some(pin.clone()),
        )
        .unwrap();
        assert_eq!(
            (d.model.as_deref(), d.classified_model),
            (Some("math-model"), None)
        );
        // An explicit model the pinned cluster does not serve is a clear client error.
        let err = run(
            "POST",
            "/v1/responses",
            r#"{"model":"general-model","previous_response_id":"resp_1","input":"x"}"#,
            Some(pin.clone()),
        )
        .unwrap_err();
        assert_eq!((err.status, err.param.as_deref()), (400, Some("model")));
        // A pin to a cluster the config no longer has is ignored.
        let stale = Location {
            cluster: "gone".into(),
            host: None,
        };
        let d = run("GET", "/v1/responses/resp_1", "", Some(stale)).unwrap();
        assert_eq!(d.reason, Reason::Hash);
        assert_eq!(d.affinity, Some(AffinityOutcome::StaleCluster));
        let d = run("GET", "/v1/responses/resp_1", "", None).unwrap();
        assert_eq!(d.affinity, Some(AffinityOutcome::Miss));
        let d = run("GET", "/v1/responses/resp_1", "", Some(pin)).unwrap();
        assert_eq!(d.affinity, Some(AffinityOutcome::Hit));
        assert_eq!(
            post(r#"{"model":"auto","input":"x"}"#).affinity,
            None,
            "no state, no outcome"
        );
    }

    #[test]
    fn id_paths_and_conversations() {
        let d = run("GET", "/v1/responses/resp_9/input_items", "", None).unwrap();
        assert_eq!(
            (d.reason, d.state),
            (Reason::Hash, Some(StateRef::Response("resp_9".into())))
        );
        let again = run("DELETE", "/v1/responses/resp_9", "", None).unwrap();
        assert_eq!(
            d.cluster, again.cluster,
            "every op on one id goes to one place"
        );
        let conv = run("GET", "/v1/conversations/conv_1/items", "", None).unwrap();
        let body = post(r#"{"model":"auto","conversation":{"id":"conv_1"},"input":"python"}"#);
        assert_eq!(conv.state, Some(StateRef::Conversation("conv_1".into())));
        assert_eq!(body.state, conv.state);
        let pinned = Location {
            cluster: "general".into(),
            host: Some("10.0.0.9:8000".into()),
        };
        let d = run("POST", "/v1/responses/resp_9/cancel", "", Some(pinned)).unwrap();
        assert_eq!(
            (d.cluster.as_str(), d.reason),
            ("general", Reason::Affinity)
        );
        assert_eq!(d.host, None, "`general` does not pin hosts");
    }

    #[test]
    fn input_tokens_may_omit_the_model() {
        let d = run(
            "POST",
            "/v1/responses/input_tokens",
            r#"{"input":"x"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (d.model.as_deref(), d.reason),
            (Some("general-model"), Reason::Default)
        );
        assert!(d.new_body.is_none());
        let d = run(
            "POST",
            "/v1/responses/input_tokens",
            r#"{"previous_response_id":"r","input":"x"}"#,
            None,
        )
        .unwrap();
        assert_eq!((d.model, d.reason), (None, Reason::Hash));
    }

    #[test]
    fn passthrough_goes_to_the_default_models_clusters() {
        let d = run("GET", "/v1/models", "", None).unwrap();
        assert_eq!(d.reason, Reason::Passthrough);
        assert!(d.cluster.starts_with("general"));
    }

    #[tokio::test]
    async fn route_enforces_the_body_limit_and_asks_the_store() {
        let t = from_yaml(&format!("{YAML}\nmax_body_bytes: 40\n")).unwrap();
        let kind = RequestKind::CreateResponse;
        let meta = RequestMeta {
            kind: &kind,
            request_id: "r",
        };
        let big = format!(r#"{{"model":"auto","input":"{}"}}"#, "x".repeat(64));
        let err = route(&t, meta, Some(big.as_bytes()), &NoStore)
            .await
            .unwrap_err();
        assert_eq!(err.status, 413);

        struct Fixed;
        #[tonic::async_trait]
        impl AffinityStore for Fixed {
            async fn lookup(&self, id: &str) -> Option<Location> {
                (id == "resp_known").then(|| Location {
                    cluster: "code".into(),
                    host: None,
                })
            }
            async fn record(&self, _: &str, _: Location) {}
        }
        let kind = RequestKind::classify("GET", "/v1/responses/resp_known", false);
        let d = route(
            &t,
            RequestMeta {
                kind: &kind,
                request_id: "r",
            },
            None,
            &Fixed,
        )
        .await
        .unwrap();
        assert_eq!((d.cluster.as_str(), d.reason), ("code", Reason::Affinity));
    }
}
