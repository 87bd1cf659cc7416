//! The project's own gRPC API (`proto/responses_router/v1/router.proto`): explain a decision with
//! the routing table in force and the live affinity store, and report which config is in force.
//! It runs the core's decision as the ext_proc service does (the same table, the same store), and
//! projects the decision and what classification saw onto the API's messages.

use std::sync::Arc;

use responses_router_core::openai::{ApiError, RequestKind, StateRef};
use responses_router_core::routing::{self, Decision, Explanation};
use tonic::{Request, Response, Status};

use crate::reload::SharedTable;
use crate::store::{self, Store};

/// Generated from `proto/` by build.rs.
pub mod pb {
    tonic::include_proto!("responses_router.v1");
}

use pb::router_admin_server::{RouterAdmin, RouterAdminServer};

/// The `responses_router.v1.RouterAdmin` service.
#[derive(Clone)]
pub struct AdminApi {
    table: SharedTable,
    store: Arc<dyn Store>,
}

impl AdminApi {
    /// The API over the table and store the ext_proc service uses.
    pub fn new(table: SharedTable, store: Arc<dyn Store>) -> Self {
        AdminApi { table, store }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> RouterAdminServer<Self> {
        RouterAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl RouterAdmin for AdminApi {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let req = request.into_inner();
        let (generation, table) = self.table.current_with_generation();
        let upgrade = req
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("websocket"));
        let kind = RequestKind::from_request(&req.method, &req.path, upgrade);
        let request_id = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        let explained = async {
            let prepared = routing::prepare(&table, &kind, request_id, Some(&req.body))?;
            let pinned = store::pinned(self.store.as_ref(), &prepared).await;
            routing::explain(&table, &prepared, pinned.as_ref())
        };
        let outcome = match routing::answer_locally(&table, &kind) {
            Some(Ok(reply)) => pb::explain_response::Outcome::Answer(pb::Answer {
                status: 200,
                body: reply.body,
            }),
            Some(Err(e)) => pb::explain_response::Outcome::Refusal(refusal_message(e)),
            None => match explained.await {
                Ok((decision, explanation)) => pb::explain_response::Outcome::Decision(
                    decision_message(decision, explanation, generation),
                ),
                Err(e) => pb::explain_response::Outcome::Refusal(refusal_message(e)),
            },
        };
        Ok(Response::new(pb::ExplainResponse {
            outcome: Some(outcome),
        }))
    }

    async fn get_config(
        &self,
        _request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigInfo>, Status> {
        let (generation, table) = self.table.current_with_generation();
        Ok(Response::new(pb::ConfigInfo {
            generation,
            models: table.models().to_vec(),
            clusters: table
                .all_candidates()
                .iter()
                .map(|c| c.name.to_owned())
                .collect(),
            categories: table.category_names().map(str::to_owned).collect(),
            auto_models: table.auto_models().to_vec(),
            default_model: table.default_model().to_owned(),
        }))
    }
}

/// The API's view of a decision.
fn decision_message(d: Decision, explanation: Explanation, generation: u64) -> pb::Decision {
    let (state_type, state_id) = match d.state() {
        Some(StateRef::PreviousResponse(id)) => ("previous_response", id.clone()),
        Some(StateRef::Conversation(id)) => ("conversation", id.clone()),
        Some(StateRef::Response(id)) => ("response", id.clone()),
        None => ("", String::new()),
    };
    pb::Decision {
        kind: d.kind.name().to_owned(),
        model: d.model().unwrap_or_default().to_owned(),
        host: d.target.host.clone().unwrap_or_default(),
        reason: d.reason().as_str().to_owned(),
        category: d.category().unwrap_or_default().to_owned(),
        classified_model: d.classified_model().unwrap_or_default().to_owned(),
        state_type: state_type.to_owned(),
        state_id,
        affinity: d
            .affinity()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        text: explanation.text.unwrap_or_default(),
        scores: explanation
            .scores
            .into_iter()
            .map(|s| pb::CategoryScore {
                category: s.category,
                score: s.score,
                similarity: s.similarity,
                min_similarity: s.min_similarity,
                combined: s.combined,
            })
            .collect(),
        body_rewritten: d.body.is_some(),
        config_generation: generation,
        cluster: d.target.cluster,
    }
}

/// The API's view of a refusal: what the client would get.
fn refusal_message(e: ApiError) -> pb::Refusal {
    pb::Refusal {
        status: u32::from(e.status),
        code: e.code.to_owned(),
        body: e.to_json(),
        param: e.param.unwrap_or_default(),
        message: e.message,
    }
}
