//! `GET /v1/models` and `GET /v1/models/{id}`, answered by the router from the routing config.
//!
//! A client asking the gateway which models exist should see what the gateway can route: every
//! configured model and the automatic names (`auto`). Passing the request to the default model's
//! backend, as any other unknown path, would list only that backend's models and never `auto`.
//! The answer is OpenAI's list shape, so `client.models.list()` and chat UIs read it as usual.

use serde::Serialize;

use crate::config::RoutingTable;
use crate::openai::{ApiError, RequestKind};

/// A request the router answers itself: a 200 with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub body: Vec<u8>,
}

/// Who the router says owns the models it lists.
const OWNER: &str = "responses-router";

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

/// The router's own answer to `kind`, if the router answers it: `Some(Ok(..))` for the model list
/// and a known model, `Some(Err(..))` (404 `model_not_found`) for an unknown one, `None` for every
/// request that goes upstream.
pub fn answer_locally(
    table: &RoutingTable,
    kind: &RequestKind,
) -> Option<Result<LocalReply, ApiError>> {
    let model = |id| Model {
        id,
        object: "model",
        created: table.compiled_at(),
        owned_by: OWNER,
    };
    let names = || {
        table
            .auto_models()
            .iter()
            .chain(table.models())
            .map(String::as_str)
    };
    let body = match kind {
        RequestKind::ListModels => serde_json::to_vec(&List {
            object: "list",
            data: names().map(model).collect(),
        }),
        RequestKind::RetrieveModel { id } => match names().find(|name| name == id) {
            Some(name) => serde_json::to_vec(&model(name)),
            None => return Some(Err(ApiError::model_not_found(id))),
        },
        _ => return None,
    };
    // Serializing strings and numbers cannot fail.
    Some(Ok(LocalReply {
        body: body.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml;

    const YAML: &str = r#"
default_model: general-model
auto_models: [auto, router]
models:
  - name: general-model
    clusters: [{ name: general }]
  - name: meta-llama/Llama-3.1-8B
    clusters: [{ name: llama }]
"#;

    fn answer(method: &str, path: &str) -> Option<Result<serde_json::Value, ApiError>> {
        let table = from_yaml(YAML).unwrap().table;
        let kind = RequestKind::from_request(method, path, false);
        answer_locally(&table, &kind)
            .map(|r| r.map(|reply| serde_json::from_slice(&reply.body).unwrap()))
    }

    #[test]
    fn the_list_has_every_model_and_the_automatic_names() {
        let list = answer("GET", "/v1/models").unwrap().unwrap();
        assert_eq!(list["object"], "list");
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["auto", "router", "general-model", "meta-llama/Llama-3.1-8B"]
        );
        let first = &list["data"][0];
        assert_eq!(first["object"], "model");
        assert_eq!(first["owned_by"], OWNER);
        assert!(first["created"].as_u64().unwrap() > 1_700_000_000);
    }

    #[test]
    fn one_model_by_id_and_an_unknown_one_is_a_404() {
        let model = answer("GET", "/v1/models/meta-llama/Llama-3.1-8B")
            .unwrap()
            .unwrap();
        assert_eq!(model["id"], "meta-llama/Llama-3.1-8B");
        assert_eq!(
            answer("GET", "/v1/models/auto").unwrap().unwrap()["id"],
            "auto"
        );
        let err = answer("GET", "/v1/models/gpt-9").unwrap().unwrap_err();
        assert_eq!((err.status, err.code), (404, "model_not_found"));
    }

    #[test]
    fn everything_else_goes_upstream() {
        assert!(answer("POST", "/v1/responses").is_none());
        assert!(answer("GET", "/v1/files").is_none());
        assert!(answer("DELETE", "/v1/models/general-model").is_none());
    }
}
