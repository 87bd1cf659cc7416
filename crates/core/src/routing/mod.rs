//! The routing decision: request in, model + upstream + reason out.
//!
//! A front-end drives it in steps, so that it can do any I/O (a shared store) between them:
//! 1. on the request headers, [`RequestKind::from_request`] says what the request is and whether
//!    the route depends on the body, [`answer_locally`] answers what the router answers itself
//!    (the model list), and [`check_head`] refuses what can be refused up front;
//! 2. [`prepare`] reads the body (if the kind needs it) and names the state the request refers to
//!    ([`Prepared::state`]);
//! 3. the front-end asks its store where that state lives;
//! 4. [`decide`] is a pure function of the prepared request, the routing table and what the store
//!    said. [`route`] runs steps 2-4 with an in-process store.
//!
//! Order of precedence for the upstream: learned affinity (where the state is) > FNV rendezvous
//! hash of the state id (deterministic fallback) > weighted spread of stateless requests. For the
//! model: explicit > classified category > default; affinity may override a *classified* model
//! (never an explicit one) to one the pinned cluster serves.

mod decision;
pub mod headers;
mod models;
mod response;

pub use decision::{
    AffinityOutcome, CategoryScore, Decision, Expect, Explanation, HashCause, ModelChoice,
    ModelReason, Placement, Reason, Target, Watch,
};

pub use models::{LocalReply, answer_locally};
pub use response::ResponseWatch;

use crate::affinity::{AffinityStore, Candidate, Location, rendezvous};
use crate::classify::Classifier;
use crate::config::{RoutingTable, UnknownModelPolicy};
use crate::openai::body::{self, ParsedBody, StateRef};
use crate::openai::{ApiError, RequestKind, text};

/// What the request headers say, as far as routing cares.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// `content-encoding`, if any.
    pub content_encoding: Option<&'a str>,
    /// `content-length`, if present and a number.
    pub content_length: Option<usize>,
}

/// Refuses on the headers what the body could only confirm: a compressed body the router cannot
/// read (415), or a declared length over the limit (413, before the body is shipped).
pub fn check_head(
    table: &RoutingTable,
    kind: &RequestKind,
    head: RequestHead<'_>,
) -> Result<(), ApiError> {
    if !kind.needs_body() {
        return Ok(());
    }
    if let Some(encoding) = head
        .content_encoding
        .filter(|e| !crate::openai::is_identity_encoding(e))
    {
        // The route depends on the body's text: a compressed body would be parsed as garbage
        // (or, in a bad case, forwarded with `model: "auto"` unrouted). Refuse it up front.
        return Err(ApiError::unsupported_content_encoding(encoding));
    }
    if head
        .content_length
        .is_some_and(|n| n > table.max_body_bytes())
    {
        return Err(ApiError::body_too_large(table.max_body_bytes()));
    }
    Ok(())
}

/// The response to a request of `kind` must be watched to learn where its new state lives.
fn learns_from(table: &RoutingTable, kind: &RequestKind) -> bool {
    kind.creates_state() && table.learns()
}

/// Whether the response headers of a request of `kind` will be wanted, as far as the headers
/// can tell (a front-end that decides on the body must ask for them before it has decided).
pub fn watches_response(table: &RoutingTable, kind: &RequestKind) -> bool {
    learns_from(table, kind) || table.exposes_decision()
}

/// A request read and ready to decide: its kind, its parsed body and the state it names.
#[derive(Debug)]
pub struct Prepared<'a> {
    kind: &'a RequestKind,
    request_id: &'a str,
    body: Option<ParsedBody<'a>>,
    state: Option<StateRef>,
}

impl Prepared<'_> {
    /// The state the request refers to (in its path, or its body's state fields): the id to
    /// look up before deciding.
    pub fn state(&self) -> Option<&StateRef> {
        self.state.as_ref()
    }
}

/// Reads the body (if the kind needs it; `None` counts as empty) and finds the state id.
/// `request_id` (Envoy's `x-request-id`) spreads stateless requests over weighted clusters,
/// reproducibly.
pub fn prepare<'a>(
    table: &RoutingTable,
    kind: &'a RequestKind,
    request_id: &'a str,
    body: Option<&'a [u8]>,
) -> Result<Prepared<'a>, ApiError> {
    let body = if kind.needs_body() {
        let bytes = body.unwrap_or_default();
        if bytes.len() > table.max_body_bytes() {
            return Err(ApiError::body_too_large(table.max_body_bytes()));
        }
        Some(body::parse(bytes)?)
    } else {
        None
    };
    let state = match kind {
        RequestKind::ResponseById { id, .. } => Some(StateRef::Response(id.clone())),
        RequestKind::ConversationById { id } => Some(StateRef::Conversation(id.clone())),
        k if k.carries_state_fields() => body.as_ref().and_then(|p| p.state.clone()),
        _ => None,
    };
    Ok(Prepared {
        kind,
        request_id,
        body,
        state,
    })
}

/// Prepares, asks an in-process `store` about the state id, and decides.
pub fn route(
    table: &RoutingTable,
    kind: &RequestKind,
    request_id: &str,
    body: Option<&[u8]>,
    store: &dyn AffinityStore,
) -> Result<Decision, ApiError> {
    let prepared = prepare(table, kind, request_id, body)?;
    let pinned = prepared.state().and_then(|s| store.lookup(s.id()));
    decide(table, &prepared, pinned.as_ref())
}

/// The pure decision. `pinned` is what the affinity store knows about the prepared request's state.
pub fn decide(
    table: &RoutingTable,
    request: &Prepared<'_>,
    pinned: Option<&Location>,
) -> Result<Decision, ApiError> {
    decide_inner(table, request, pinned, None)
}

/// The decision and what classification saw, for `explain` and the Explain API.
pub fn explain(
    table: &RoutingTable,
    request: &Prepared<'_>,
    pinned: Option<&Location>,
) -> Result<(Decision, Explanation), ApiError> {
    let mut explanation = Explanation::default();
    let decision = decide_inner(table, request, pinned, Some(&mut explanation))?;
    Ok((decision, explanation))
}

fn decide_inner(
    table: &RoutingTable,
    request: &Prepared<'_>,
    pinned: Option<&Location>,
    explanation: Option<&mut Explanation>,
) -> Result<Decision, ApiError> {
    let kind = request.kind;
    let parsed = match kind {
        RequestKind::ResponsesWebSocket => {
            return Err(ApiError::unsupported(
                "websocket_not_supported",
                "WebSocket mode of /v1/responses is not supported by this router; \
                 use HTTP requests (with `stream: true` for streaming).",
            ));
        }
        // The model listing is answered by the front-end ([`answer_locally`]); a front-end that does
        // not, passes it through like any other path.
        RequestKind::Other | RequestKind::ListModels | RequestKind::RetrieveModel { .. } => {
            let candidates = table.candidates_for(table.default_model());
            let target = spread(&candidates, request.request_id)?;
            return Ok(build(
                table,
                kind,
                target,
                None,
                Placement::Passthrough,
                None,
                false,
            ));
        }
        RequestKind::CreateConversation => {
            let target = spread(&table.all_candidates(), request.request_id)?;
            return Ok(build(
                table,
                kind,
                target,
                None,
                Placement::Spread,
                None,
                false,
            ));
        }
        RequestKind::ResponseById { .. } | RequestKind::ConversationById { .. } => None,
        RequestKind::CreateResponse
        | RequestKind::InputTokens
        | RequestKind::Compact
        | RequestKind::ChatCompletions => Some(
            request
                .body
                .as_ref()
                .ok_or_else(|| ApiError::invalid_json("the request body is empty"))?,
        ),
    };
    let model = match parsed {
        Some(parsed) => choose_model(table, kind, parsed, request.state.is_some(), explanation)?,
        None => None,
    };
    let candidates = match &model {
        Some(choice) => table.candidates_for(&choice.model),
        None => table.all_candidates(),
    };
    let (target, placement, model) = match &request.state {
        Some(state) => place_by_state(table, state, &candidates, pinned, model)?,
        None => (
            spread(&candidates, request.request_id)?,
            Placement::Spread,
            model,
        ),
    };
    let new_body = match (parsed, &model) {
        (Some(parsed), Some(choice)) => parsed
            .model
            .as_ref()
            .filter(|field| field.name != choice.model)
            .map(|field| body::splice_model(parsed.bytes, &field.span, &choice.model)),
        _ => None,
    };
    let stream = parsed.is_some_and(|p| p.stream);
    Ok(build(
        table, kind, target, model, placement, new_body, stream,
    ))
}

/// Assembles a decision, deriving what to watch on the response.
fn build(
    table: &RoutingTable,
    kind: &RequestKind,
    target: Target,
    model: Option<ModelChoice>,
    placement: Placement,
    body: Option<Vec<u8>>,
    stream: bool,
) -> Decision {
    let learn =
        learns_from(table, kind).then_some(if stream { Expect::Stream } else { Expect::Json });
    let decision_headers = table.exposes_decision();
    let watch = if learn.is_some() || decision_headers || target.host.is_some() {
        Watch::Response {
            learn,
            decision_headers,
        }
    } else {
        Watch::Nothing
    };
    Decision {
        kind: kind.clone(),
        target,
        model,
        placement,
        body,
        watch,
    }
}

/// Picks the model: explicit, classified or default. `None` only for a request that may omit the
/// model (`input_tokens`) and names state: it goes where the state is, unchanged.
fn choose_model(
    table: &RoutingTable,
    kind: &RequestKind,
    parsed: &ParsedBody<'_>,
    names_state: bool,
    explanation: Option<&mut Explanation>,
) -> Result<Option<ModelChoice>, ApiError> {
    let default = || {
        Some(ModelChoice {
            model: table.default_model().to_owned(),
            reason: ModelReason::Default,
            classified: None,
        })
    };
    let Some(field) = &parsed.model else {
        if kind.requires_model() {
            return Err(ApiError::missing_field(
                "model",
                "you must provide a model parameter",
            ));
        }
        // `input_tokens` without a model: leave the body alone, route by state or default.
        return Ok(if names_state { None } else { default() });
    };
    let requested = field.name.as_ref();
    if table.is_auto(requested) {
        let text = text::extract(&parsed.text, table.text_policy())?;
        if text.trim().is_empty() {
            return Err(ApiError::invalid_field(
                "input",
                format!("model `{requested}` needs text to classify, but the request has none"),
            ));
        }
        let classifier = table.classifier();
        let result = classifier.classify(&text);
        let winner = result.winner.and_then(|w| {
            let model = table.category_model(w)?;
            let category = classifier.categories().get(w)?;
            Some(ModelChoice {
                model: model.to_owned(),
                reason: ModelReason::Category(category.name.clone()),
                classified: None,
            })
        });
        if let Some(explanation) = explanation {
            let semantic = classifier.semantic();
            explanation.scores = classifier
                .categories()
                .iter()
                .enumerate()
                .zip(&result.scores)
                .map(|((i, c), &score)| CategoryScore {
                    category: c.name.clone(),
                    score,
                    similarity: result.similarities.get(i).copied().flatten(),
                    min_similarity: semantic.and_then(|s| s.min_similarity(i)),
                    combined: result.combined.get(i).copied(),
                })
                .collect();
            explanation.text = Some(text);
        }
        return Ok(winner.or_else(default));
    }
    if table.serves(requested) {
        return Ok(Some(ModelChoice {
            model: requested.to_owned(),
            reason: ModelReason::Explicit,
            classified: None,
        }));
    }
    match table.unknown_model() {
        UnknownModelPolicy::Reject => Err(ApiError::model_not_found(requested)),
        UnknownModelPolicy::Default => Ok(default()),
    }
}

/// Places a request that refers to state: where the store says it lives, else by hash.
fn place_by_state(
    table: &RoutingTable,
    state: &StateRef,
    candidates: &[Candidate<'_>],
    pinned: Option<&Location>,
    model: Option<ModelChoice>,
) -> Result<(Target, Placement, Option<ModelChoice>), ApiError> {
    // A pin to a cluster the current config no longer has is stale: fall back to the hash.
    let cause = match pinned {
        None => HashCause::Unknown,
        Some(pin) if table.models_of(&pin.cluster).is_empty() => HashCause::StaleCluster,
        Some(pin) => {
            let model = keep_a_served_model(table, state, pin, model)?;
            let target = Target {
                cluster: pin.cluster.clone(),
                host: pin.host.clone().filter(|_| table.pins_hosts(&pin.cluster)),
            };
            return Ok((target, Placement::Pinned(state.clone()), model));
        }
    };
    let target = spread(candidates, state.id())?;
    Ok((target, Placement::Hashed(state.clone(), cause), model))
}

/// The state outranks the classifier: a classified (or default) model the pinned cluster does not
/// serve is replaced by one it does; an explicit one is the client's error.
fn keep_a_served_model(
    table: &RoutingTable,
    state: &StateRef,
    pin: &Location,
    model: Option<ModelChoice>,
) -> Result<Option<ModelChoice>, ApiError> {
    let served = table.models_of(&pin.cluster);
    let choice = match model {
        Some(choice) if !served.contains(&choice.model) => choice,
        kept => return Ok(kept),
    };
    if choice.reason == ModelReason::Explicit {
        return Err(ApiError::invalid_field(
            "model",
            format!(
                "`{}` is stored on a backend that does not serve model `{}`; \
                 continue it with one of: {}",
                state.id(),
                choice.model,
                served.join(", ")
            ),
        ));
    }
    Ok(served.first().map(|model| ModelChoice {
        model: model.clone(),
        reason: choice.reason,
        classified: Some(choice.model),
    }))
}

/// Spreads requests over weighted candidates by `key`: a stateless request's id, or a state id
/// the store does not know (so every replica hashes it alike).
fn spread(candidates: &[Candidate<'_>], key: &str) -> Result<Target, ApiError> {
    rendezvous(key, candidates)
        .map(|i| Target {
            cluster: candidates[i].name.to_owned(),
            host: None,
        })
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
        from_yaml(YAML).unwrap().table
    }

    fn run_explained(
        method: &str,
        path: &str,
        body: &str,
        pinned: Option<Location>,
    ) -> Result<(Decision, Explanation), ApiError> {
        let t = table();
        let kind = RequestKind::from_request(method, path, false);
        let prepared = prepare(&t, &kind, "req-1", Some(body.as_bytes()))?;
        explain(&t, &prepared, pinned.as_ref())
    }

    fn run(
        method: &str,
        path: &str,
        body: &str,
        pinned: Option<Location>,
    ) -> Result<Decision, ApiError> {
        run_explained(method, path, body, pinned).map(|(d, _)| d)
    }

    fn post(body: &str) -> Decision {
        run("POST", "/v1/responses", body, None).unwrap()
    }

    #[test]
    fn auto_is_classified_and_spliced() {
        let (d, explanation) = run_explained(
            "POST",
            "/v1/responses",
            r#"{"model":"auto","input":"write python"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (
                d.model(),
                d.target.cluster.as_str(),
                d.reason(),
                d.category()
            ),
            (Some("code-model"), "code", Reason::Category, Some("coding"))
        );
        assert_eq!(
            d.body.unwrap(),
            br#"{"model":"code-model","input":"write python"}"#
        );
        assert_eq!(
            explanation.scores[0],
            CategoryScore {
                category: "coding".into(),
                score: 1,
                similarity: None,
                min_similarity: None,
                combined: None,
            }
        );
        assert_eq!(explanation.text.as_deref(), Some("write python"));
    }

    #[test]
    fn auto_without_match_goes_to_default() {
        let d = post(r#"{"model":"auto","input":"hello there"}"#);
        assert_eq!(
            (d.model(), d.reason()),
            (Some("general-model"), Reason::Default)
        );
        assert!(d.target.cluster == "general" || d.target.cluster == "general-b");
    }

    #[test]
    fn explicit_model_is_untouched() {
        let (d, explanation) = run_explained(
            "POST",
            "/v1/responses",
            r#"{"model":"code-model","input":"hello"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (d.target.cluster.as_str(), d.reason()),
            ("code", Reason::Explicit)
        );
        assert!(d.body.is_none());
        assert!(
            explanation.scores.is_empty(),
            "explicit models are not classified"
        );
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
        let t = from_yaml(&format!("{YAML}\nunknown_model: default\n"))
            .unwrap()
            .table;
        let kind = RequestKind::CreateResponse;
        let bytes = br#"{"model":"gpt-x","input":"a"}"#;
        let prepared = prepare(&t, &kind, "r", Some(bytes)).unwrap();
        let d = decide(&t, &prepared, None).unwrap();
        assert_eq!(
            (d.model(), d.reason()),
            (Some("general-model"), Reason::Default)
        );
        assert_eq!(d.body.unwrap(), br#"{"model":"general-model","input":"a"}"#);
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
        let ws = RequestKind::from_request("GET", "/v1/responses", true);
        let t = table();
        let err = decide(&t, &prepare(&t, &ws, "", None).unwrap(), None).unwrap_err();
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
            assert_eq!(a.reason(), Reason::Hash);
            assert_eq!(a.target.cluster, b.target.cluster, "deterministic");
            seen.insert(a.target.cluster);
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
            (d.target.cluster.as_str(), d.target.host.as_deref()),
            ("code", Some("10.0.0.7:8000"))
        );
        assert_eq!(d.reason(), Reason::Affinity);
        assert_eq!(
            d.model(),
            Some("code-model"),
            "a model the pinned cluster serves"
        );
        assert_eq!(d.classified_model(), Some("general-model"));
        // A classified model the pinned cluster serves is kept.
        let d = run(
            "POST",
            "/v1/responses",
            r#"{"model":"auto","previous_response_id":"resp_1","input":"an integral"}"#,
            Some(pin.clone()),
        )
        .unwrap();
        assert_eq!(
            (d.model(), d.classified_model()),
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
        assert_eq!(d.reason(), Reason::Hash);
        assert_eq!(d.affinity(), Some(AffinityOutcome::StaleCluster));
        let d = run("GET", "/v1/responses/resp_1", "", None).unwrap();
        assert_eq!(d.affinity(), Some(AffinityOutcome::Miss));
        let d = run("GET", "/v1/responses/resp_1", "", Some(pin)).unwrap();
        assert_eq!(d.affinity(), Some(AffinityOutcome::Hit));
        assert_eq!(
            post(r#"{"model":"auto","input":"x"}"#).affinity(),
            None,
            "no state, no outcome"
        );
    }

    #[test]
    fn id_paths_and_conversations() {
        let d = run("GET", "/v1/responses/resp_9/input_items", "", None).unwrap();
        assert_eq!(
            (d.reason(), d.state()),
            (Reason::Hash, Some(&StateRef::Response("resp_9".into())))
        );
        let again = run("DELETE", "/v1/responses/resp_9", "", None).unwrap();
        assert_eq!(
            d.target.cluster, again.target.cluster,
            "every op on one id goes to one place"
        );
        let conv = run("GET", "/v1/conversations/conv_1/items", "", None).unwrap();
        let body = post(r#"{"model":"auto","conversation":{"id":"conv_1"},"input":"python"}"#);
        assert_eq!(conv.state(), Some(&StateRef::Conversation("conv_1".into())));
        assert_eq!(body.state(), conv.state());
        let pinned = Location {
            cluster: "general".into(),
            host: Some("10.0.0.9:8000".into()),
        };
        let d = run("POST", "/v1/responses/resp_9/cancel", "", Some(pinned)).unwrap();
        assert_eq!(
            (d.target.cluster.as_str(), d.reason()),
            ("general", Reason::Affinity)
        );
        assert_eq!(d.target.host, None, "`general` does not pin hosts");
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
            (d.model(), d.reason()),
            (Some("general-model"), Reason::Default)
        );
        assert!(d.body.is_none());
        let d = run(
            "POST",
            "/v1/responses/input_tokens",
            r#"{"previous_response_id":"r","input":"x"}"#,
            None,
        )
        .unwrap();
        assert_eq!((d.model(), d.reason()), (None, Reason::Hash));
    }

    #[test]
    fn passthrough_goes_to_the_default_models_clusters() {
        let d = run("GET", "/v1/models", "", None).unwrap();
        assert_eq!(d.reason(), Reason::Passthrough);
        assert!(d.target.cluster.starts_with("general"));
    }

    #[test]
    fn what_to_watch_on_the_response() {
        let d = post(r#"{"model":"auto","input":"python"}"#);
        assert_eq!(
            d.watch,
            Watch::Response {
                learn: Some(Expect::Json),
                decision_headers: false
            }
        );
        let d = post(r#"{"model":"auto","input":"python","stream":true}"#);
        assert_eq!(d.learns(), Some(Expect::Stream));
        let chat = run(
            "POST",
            "/v1/chat/completions",
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(chat.watch, Watch::Nothing, "chat creates no state");
        let pinned = Location {
            cluster: "code".into(),
            host: Some("10.0.0.7:8000".into()),
        };
        let get = run("GET", "/v1/responses/resp_1", "", Some(pinned)).unwrap();
        assert_eq!(
            get.watch,
            Watch::Response {
                learn: None,
                decision_headers: false
            },
            "a request pinned to a host is watched for the host that served it"
        );
        let exposing = from_yaml(&format!("{YAML}\nexpose_decision: true\n"))
            .unwrap()
            .table;
        let kind = RequestKind::ChatCompletions;
        let body = br#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#;
        let prepared = prepare(&exposing, &kind, "r", Some(body)).unwrap();
        assert_eq!(
            decide(&exposing, &prepared, None).unwrap().watch,
            Watch::Response {
                learn: None,
                decision_headers: true
            },
            "exposing the decision watches every response"
        );
        assert!(watches_response(&exposing, &kind));
        assert!(!watches_response(&table(), &kind));
    }

    #[test]
    fn route_enforces_the_body_limit_and_asks_the_store() {
        let t = from_yaml(&format!("{YAML}\nmax_body_bytes: 40\n"))
            .unwrap()
            .table;
        let kind = RequestKind::CreateResponse;
        let big = format!(r#"{{"model":"auto","input":"{}"}}"#, "x".repeat(64));
        let err = route(&t, &kind, "r", Some(big.as_bytes()), &NoStore).unwrap_err();
        assert_eq!(err.status, 413);

        let store = crate::affinity::MemoryStore::new(10, std::time::Duration::from_secs(60));
        store.put(
            "resp_known",
            &Location {
                cluster: "code".into(),
                host: None,
            },
        );
        let kind = RequestKind::from_request("GET", "/v1/responses/resp_known", false);
        let d = route(&t, &kind, "r", None, &store).unwrap();
        assert_eq!(
            (d.target.cluster.as_str(), d.reason()),
            ("code", Reason::Affinity)
        );
    }

    #[test]
    fn heads_are_refused_for_compression_and_declared_size() {
        let t = table();
        let kind = RequestKind::CreateResponse;
        let head = |encoding, length| RequestHead {
            content_encoding: encoding,
            content_length: length,
        };
        assert_eq!(
            check_head(&t, &kind, head(Some("gzip"), None))
                .unwrap_err()
                .status,
            415
        );
        assert!(check_head(&t, &kind, head(Some("identity"), Some(10))).is_ok());
        assert_eq!(
            check_head(&t, &kind, head(None, Some(t.max_body_bytes() + 1)))
                .unwrap_err()
                .status,
            413
        );
        let other = RequestKind::from_request("GET", "/v1/models", false);
        assert!(
            check_head(&t, &other, head(Some("gzip"), Some(usize::MAX))).is_ok(),
            "only routed bodies are read"
        );
    }

    #[test]
    fn only_identity_codings_leave_the_body_readable() {
        for v in ["", "identity", "IDENTITY", " identity , identity"] {
            assert!(crate::openai::is_identity_encoding(v), "{v:?}");
        }
        for v in [
            "gzip",
            "GZIP",
            "deflate",
            "br",
            "zstd",
            "gzip, identity",
            "identity,br",
            "x",
        ] {
            assert!(!crate::openai::is_identity_encoding(v), "{v:?}");
        }
    }
}
