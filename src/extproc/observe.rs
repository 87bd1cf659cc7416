//! The observer filter's hooks: learning where a streamed response lives without ever holding the
//! stream back.
//!
//! An SSE stream must never wait, so a second ext_proc filter in *observability mode* gets copies
//! of the response headers (with the `xds.cluster_name` and `upstream.address` attributes, and the
//! request's method, path and id, since Envoy skips sending it the request headers) and body
//! chunks. These hooks read `response.id` from the first event (`response.created`), record it,
//! and end the stream so Envoy stops copying the rest. JSON answers are learned by the routing
//! filter itself (`super::routing`), before the client sees them.

use std::sync::Arc;

use responses_router_core::RequestKind;
use responses_router_core::affinity::Location;
use responses_router_core::learn::{Capture, Format, IdCapture};
use responses_router_core::routing::headers::CLUSTER_HEADER;

use super::driver::{
    BodyMode, Headers, Hooks, OnRequestBody, OnRequestHeaders, OnResponseBody, OnResponseHeaders,
};
use super::pending::PendingIds;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::LearnSource;

/// One observability-mode stream.
pub struct ObserverHooks {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Where the routing stream announced this response, when learning is on.
    pending: Option<Arc<PendingIds>>,
    request_id: String,
    routed_cluster: Option<String>,
    location: Option<Location>,
    capture: Option<IdCapture>,
}

impl ObserverHooks {
    /// Hooks recording into `store`; with learning on, they tell `pending` when they are done
    /// with a streamed response.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        pending: Option<Arc<PendingIds>>,
    ) -> Self {
        ObserverHooks {
            store,
            metrics,
            pending,
            request_id: String::new(),
            routed_cluster: None,
            location: None,
            capture: None,
        }
    }
}

impl Hooks for ObserverHooks {
    /// Only when Envoy is configured to send them (the shipped config skips them).
    async fn on_request_headers(&mut self, headers: &Headers<'_>) -> OnRequestHeaders {
        let kind = RequestKind::from_request(
            headers.get(":method").unwrap_or_default(),
            headers.get(":path").unwrap_or_default(),
            false,
        );
        if !kind.creates_state() {
            return OnRequestHeaders::Done;
        }
        self.request_id = headers.get("x-request-id").unwrap_or_default().to_owned();
        self.routed_cluster = headers.get(CLUSTER_HEADER).map(str::to_owned);
        OnRequestHeaders::Continue
    }

    async fn on_request_body(&mut self, _body: &[u8]) -> OnRequestBody {
        OnRequestBody::Forward {
            headers: Default::default(),
            body: None,
        }
    }

    async fn on_response_headers(&mut self, headers: &Headers<'_>) -> OnResponseHeaders {
        if self.request_id.is_empty() {
            let kind = RequestKind::from_request(
                &headers.attribute("request.method").unwrap_or_default(),
                &headers.attribute("request.path").unwrap_or_default(),
                false,
            );
            if !kind.creates_state() {
                return OnResponseHeaders::done();
            }
            self.request_id = headers.attribute("request.id").unwrap_or_default();
        }
        if headers.end_of_stream {
            return OnResponseHeaders::done();
        }
        // JSON answers are the routing stream's; the observer only watches streams.
        let Some(Format::EventStream) = Format::of_response(
            headers.get(":status"),
            headers.get("content-type"),
            headers.get("content-encoding"),
        ) else {
            return OnResponseHeaders::done();
        };
        let Some(cluster) = headers
            .attribute("xds.cluster_name")
            .or_else(|| self.routed_cluster.clone())
        else {
            return OnResponseHeaders::done();
        };
        self.location = Some(Location {
            cluster,
            host: headers.attribute("upstream.address"),
        });
        self.capture = Some(IdCapture::new(Format::EventStream));
        OnResponseHeaders::read(BodyMode::Streamed)
    }

    async fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> OnResponseBody {
        let (Some(capture), Some(location)) = (self.capture.as_mut(), self.location.as_ref())
        else {
            return OnResponseBody::Done;
        };
        match capture.feed(chunk, end_of_stream) {
            Capture::Pending => OnResponseBody::More,
            Capture::GaveUp => OnResponseBody::Done,
            Capture::Found(id) => {
                tracing::debug!(%id, cluster = %location.cluster, host = ?location.host, "learned");
                self.store.record(&id, location.clone()).await;
                self.metrics.learned(LearnSource::Sse);
                OnResponseBody::Done
            }
        }
    }

    /// An observer never answers a request.
    fn refused(&mut self, _error: &responses_router_core::ApiError) {}
}

impl Drop for ObserverHooks {
    /// However the stream ends (id recorded, given up, closed by Envoy), a streamed response it
    /// watched is no longer pending.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.as_ref().filter(|_| self.capture.is_some())
            && !self.request_id.is_empty()
        {
            pending.close(&self.request_id);
        }
    }
}
