//! The project's own gRPC API (`proto/responses_router/v1/router.proto`): explain a decision with
//! the routing table in force and the live affinity store, and report which config is in force.
//! It calls [`routing::route`], the same code path as the ext_proc service and `explain` CLI.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::affinity::AffinityStore;
use crate::config::SharedTable;
use crate::openai::{RequestKind, StateRef};
use crate::routing::{self, RequestMeta};

/// Generated from `proto/` by build.rs.
pub mod pb {
    tonic::include_proto!("responses_router.v1");
}

use pb::router_admin_server::{RouterAdmin, RouterAdminServer};

/// The `responses_router.v1.RouterAdmin` service.
#[derive(Clone)]
pub struct AdminApi {
    table: SharedTable,
    store: Arc<dyn AffinityStore>,
}

impl AdminApi {
    /// The API over the table and store the ext_proc service uses.
    pub fn new(table: SharedTable, store: Arc<dyn AffinityStore>) -> Self {
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
        let kind = RequestKind::classify(&req.method, &req.path, upgrade);
        let request_id = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        let meta = RequestMeta {
            kind: &kind,
            request_id,
        };
        let outcome = match routing::route(&table, meta, Some(&req.body), self.store.as_ref()).await
        {
            Ok(d) => {
                let (state_type, state_id) = match &d.state {
                    Some(StateRef::PreviousResponse(id)) => ("previous_response", id.clone()),
                    Some(StateRef::Conversation(id)) => ("conversation", id.clone()),
                    Some(StateRef::Response(id)) => ("response", id.clone()),
                    None => ("", String::new()),
                };
                pb::explain_response::Outcome::Decision(pb::Decision {
                    kind: d.kind.to_owned(),
                    model: d.model.unwrap_or_default(),
                    cluster: d.cluster,
                    host: d.host.unwrap_or_default(),
                    reason: d.reason.as_str().to_owned(),
                    category: d.category.unwrap_or_default(),
                    classified_model: d.classified_model.unwrap_or_default(),
                    state_type: state_type.to_owned(),
                    state_id,
                    affinity: d
                        .affinity
                        .map(|a| a.as_str().to_owned())
                        .unwrap_or_default(),
                    text: d.text.unwrap_or_default(),
                    scores: d
                        .scores
                        .into_iter()
                        .map(|s| pb::CategoryScore {
                            category: s.category,
                            score: s.score,
                        })
                        .collect(),
                    body_rewritten: d.new_body.is_some(),
                    config_generation: generation,
                })
            }
            Err(e) => pb::explain_response::Outcome::Refusal(pb::Refusal {
                status: u32::from(e.status),
                code: e.code.to_owned(),
                body: e.to_json(),
                param: e.param.unwrap_or_default(),
                message: e.message,
            }),
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
        let config = table.config();
        Ok(Response::new(pb::ConfigInfo {
            generation,
            models: config.models.iter().map(|m| m.name.clone()).collect(),
            clusters: table
                .all_candidates()
                .iter()
                .map(|c| c.name.to_owned())
                .collect(),
            categories: config.categories.iter().map(|c| c.name.clone()).collect(),
            auto_models: config.auto_models.clone(),
            default_model: config.default_model.clone(),
        }))
    }
}
