//! The admin HTTP port: `/metrics` for Prometheus, `/healthz` for liveness and `/readyz` for
//! readiness. Kept off the gRPC port so scrapers and probes never compete with Envoy's streams.
//!
//! Readiness: the process serves only with a valid routing config (an invalid one at start is
//! fatal; on reload it is rejected and the old one kept), so `/readyz` is about the affinity store.
//! When a shared store (Redis) is configured but unreachable, requests still succeed on local
//! knowledge and hashing, so by default `/readyz` stays 200 and *reports* the degraded state in
//! its body and in `responses_router_affinity_store_up`; with `require_store` it answers 503, for
//! deployments that would rather take the pod out of rotation.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Metrics;
use crate::store::Store;

#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    require_store: bool,
}

impl Admin {
    /// Checks the store and records what was found in the store gauges.
    async fn check_store(&self) -> Result<(), String> {
        let result = self.store.check().await;
        self.metrics
            .store_state(self.store.local_entries(), result.is_ok());
        result
    }
}

/// The admin routes.
pub fn router(metrics: Arc<Metrics>, store: Arc<dyn Store>, require_store: bool) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            metrics,
            store,
            require_store,
        })
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format otherwise.
async fn metrics_text(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let _ = admin.check_store().await;
    let openmetrics = headers
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            admin.metrics.encode_classic(),
        )
    };
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    match admin.check_store().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(why) if admin.require_store => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
        Err(why) => (StatusCode::OK, format!("ready, degraded: {why}\n")).into_response(),
    }
}
