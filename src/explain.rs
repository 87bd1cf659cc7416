//! `responses-router explain`: the decision for one request, as JSON, through the same core path
//! the service runs (with no store: a continuation is placed as a router that has not learned its
//! id would place it).

use responses_router_core::config::RoutingTable;
use responses_router_core::openai::{ApiError, RequestKind, StateRef};
use responses_router_core::routing::{self, Decision, Explanation};
use serde::Serialize;

/// The explain output, field by field in the order printed.
#[derive(Serialize)]
struct Printed<'a> {
    kind: &'static str,
    model: Option<&'a str>,
    cluster: &'a str,
    host: Option<&'a str>,
    reason: &'static str,
    category: Option<&'a str>,
    classified_model: Option<&'a str>,
    state: Option<&'a StateRef>,
    affinity: Option<&'static str>,
    learn_from_stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    scores: Vec<PrintedScore<'a>>,
}

/// One category: its rule points and, with an embedding model, its similarity, the similarity it
/// needs to be eligible, and the combined score the eligible categories are ranked by (rounded
/// to 4 decimals).
#[derive(Serialize)]
struct PrintedScore<'a> {
    category: &'a str,
    score: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_similarity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    combined: Option<f64>,
}

fn rounded(value: Option<f32>) -> Option<f64> {
    value.map(|v| (f64::from(v) * 1e4).round() / 1e4)
}

/// What the router would do with one request.
pub enum Explained {
    /// Route it so (boxed: a decision is much larger than an answer).
    Routed(Box<(Decision, Explanation)>),
    /// Answer it itself with this JSON (the model list).
    Answered(Vec<u8>),
}

/// The decision for `method path` with `body`, or the error a client would get.
pub fn explain(
    table: &RoutingTable,
    method: &str,
    path: &str,
    request_id: &str,
    body: Option<&[u8]>,
) -> Result<Explained, ApiError> {
    let kind = RequestKind::from_request(method, path, false);
    if let Some(answer) = routing::answer_locally(table, &kind) {
        return answer.map(|reply| Explained::Answered(reply.body));
    }
    let prepared = routing::prepare(table, &kind, request_id, body)?;
    let (decision, explanation) = routing::explain(table, &prepared, None)?;
    Ok(Explained::Routed(Box::new((decision, explanation))))
}

/// The decision as pretty JSON.
pub fn to_json(decision: &Decision, explanation: &Explanation) -> String {
    let printed = Printed {
        kind: decision.kind.name(),
        model: decision.model(),
        cluster: &decision.target.cluster,
        host: decision.target.host.as_deref(),
        reason: decision.reason().as_str(),
        category: decision.category(),
        classified_model: decision.classified_model(),
        state: decision.state(),
        affinity: decision.affinity().map(|a| a.as_str()),
        learn_from_stream: decision.learns() == Some(routing::Expect::Stream),
        text: explanation.text.as_deref(),
        scores: explanation
            .scores
            .iter()
            .map(|s| PrintedScore {
                category: &s.category,
                score: s.score,
                similarity: rounded(s.similarity),
                min_similarity: rounded(s.min_similarity),
                combined: rounded(s.combined),
            })
            .collect(),
    };
    // Serializing strings and numbers cannot fail.
    serde_json::to_string_pretty(&printed).unwrap_or_default()
}

/// An error as the client would receive it: status line, then the JSON body.
pub fn error_text(error: &ApiError) -> String {
    format!(
        "HTTP {}\n{}",
        error.status,
        String::from_utf8_lossy(&error.to_json())
    )
}
