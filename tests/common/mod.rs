//! Plays Envoy against a real router server: starts the service on an ephemeral port (or a Unix
//! socket) and drives ext_proc streams with the generated `ExternalProcessorClient`.
#![allow(dead_code)]

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, HttpTrailers, ImmediateResponse, ProcessingRequest,
    ProcessingResponse, body_mutation::Mutation,
    external_processor_client::ExternalProcessorClient, processing_request::Request,
    processing_response::Response,
};
use responses_router::extproc::service::Listeners;
use responses_router::extproc::{RouterService, serve};
use responses_router::reload::SharedTable;
use responses_router::store::Store;
use responses_router_core::affinity::NoStore;
use responses_router_core::config;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const ROUTING_YAML: &str = r#"
max_body_bytes: 4096
default_model: general-model
models:
  - name: general-model
    clusters: [{ name: general }]
  - name: code-model
    clusters: [{ name: code }]
clusters:
  - name: code
    pin_host: true
categories:
  - name: coding
    model: code-model
    keywords: [python, rust, debug]
    patterns: ['```']
"#;

/// A running router and a client connected to it.
pub struct Router {
    pub client: ExternalProcessorClient<Channel>,
    pub metrics: Arc<responses_router::telemetry::Metrics>,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start() -> Router {
    start_with(ROUTING_YAML, Arc::new(NoStore)).await
}

pub async fn start_with(yaml: &str, store: Arc<dyn Store>) -> Router {
    let table = config::from_yaml(yaml).expect("test config is valid").table;
    let metrics = Arc::new(responses_router::telemetry::Metrics::default());
    let service = RouterService::new(SharedTable::new(table), store, metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        service,
        Listeners {
            tcp: Some(listener),
            ..Default::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let client = ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Router {
        client,
        metrics,
        addr,
        stop: Some(stop),
    }
}

/// One ext_proc stream: send a message, receive its reply, as Envoy does.
pub struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl Stream {
    pub async fn open(client: &mut ExternalProcessorClient<Channel>) -> Stream {
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }

    /// Sends one message and returns the router's reply to it.
    pub async fn send(&mut self, request: Request) -> Result<ProcessingResponse, tonic::Status> {
        self.send_with_attributes(request, &[]).await
    }

    /// Sends a message carrying Envoy attributes (as with `response_attributes`) and returns the reply.
    pub async fn send_with_attributes(
        &mut self,
        request: Request,
        attributes: &[(&str, &str)],
    ) -> Result<ProcessingResponse, tonic::Status> {
        self.tx
            .send(ProcessingRequest {
                request: Some(request),
                attributes: attribute_map(attributes),
                ..Default::default()
            })
            .await
            .expect("router closed the stream");
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(tonic::Status::aborted("stream closed without a reply")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no reply within 5 s"),
        }
    }

    /// Sends an observability-mode message, to which no reply is due.
    pub async fn observe(&mut self, request: Request, attributes: &[(&str, &str)]) {
        let map = attribute_map(attributes);
        // The router closes an observer stream once it has learned; a send may then fail.
        let _ = self
            .tx
            .send(ProcessingRequest {
                request: Some(request),
                attributes: map,
                observability_mode: true,
                ..Default::default()
            })
            .await;
    }

    /// Whether the router ended the stream (no further replies).
    pub async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), self.rx.message()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }
}

/// A new stream that sends `POST /v1/responses` headers and then `body` whole, as Envoy does with
/// a buffered body; the stream (for the response phases) and the reply to the body.
pub async fn post_responses(
    client: &mut ExternalProcessorClient<Channel>,
    body_bytes: &[u8],
) -> (Stream, ProcessingResponse) {
    let mut s = Stream::open(client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let reply = s.send(body(body_bytes, true)).await.unwrap();
    (s, reply)
}

pub fn headers(method: &str, path: &str, extra: &[(&str, &str)], end_of_stream: bool) -> Request {
    let mut list = vec![
        (":method", method),
        (":path", path),
        (":authority", "api.example"),
        ("x-request-id", "req-0001"),
    ];
    list.extend_from_slice(extra);
    Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: list
                .into_iter()
                .map(|(k, v)| HeaderValue {
                    key: k.into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    })
}

pub fn body(bytes: &[u8], end_of_stream: bool) -> Request {
    Request::RequestBody(HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    })
}

pub fn trailers() -> Request {
    Request::RequestTrailers(HttpTrailers::default())
}

/// The CommonResponse of a request-headers reply.
pub fn headers_common(reply: &ProcessingResponse) -> &CommonResponse {
    match &reply.response {
        Some(Response::RequestHeaders(h)) => h
            .response
            .as_ref()
            .expect("headers reply has a CommonResponse"),
        other => panic!("expected a request-headers reply, got {other:?}"),
    }
}

/// The CommonResponse of a response-headers reply.
pub fn response_headers_common(reply: &ProcessingResponse) -> &CommonResponse {
    match &reply.response {
        Some(Response::ResponseHeaders(h)) => h
            .response
            .as_ref()
            .expect("response-headers reply has a CommonResponse"),
        other => panic!("expected a response-headers reply, got {other:?}"),
    }
}

/// The CommonResponse of a request-body reply.
pub fn body_common(reply: &ProcessingResponse) -> &CommonResponse {
    match &reply.response {
        Some(Response::RequestBody(b)) => b
            .response
            .as_ref()
            .expect("body reply has a CommonResponse"),
        other => panic!("expected a request-body reply, got {other:?}"),
    }
}

pub fn immediate(reply: &ProcessingResponse) -> &ImmediateResponse {
    match &reply.response {
        Some(Response::ImmediateResponse(i)) => i,
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

/// Headers set by a CommonResponse, as (name, value) pairs.
pub fn set_headers(common: &CommonResponse) -> Vec<(String, String)> {
    common
        .header_mutation
        .as_ref()
        .map(|m| {
            m.set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .map(|h| {
                    assert!(h.value.is_empty(), "only raw_value may be set ({})", h.key);
                    (
                        h.key.clone(),
                        String::from_utf8(h.raw_value.clone()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_header(common: &CommonResponse, name: &str) -> Option<String> {
    set_headers(common)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub fn removed_headers(common: &CommonResponse) -> Vec<String> {
    common
        .header_mutation
        .as_ref()
        .map(|m| m.remove_headers.clone())
        .unwrap_or_default()
}

/// The replacement body, if the reply replaces it.
pub fn new_body(common: &CommonResponse) -> Option<Vec<u8>> {
    match common.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::Body(b) => Some(b.clone()),
        _ => None,
    }
}

pub fn clears_body(common: &CommonResponse) -> bool {
    matches!(
        common
            .body_mutation
            .as_ref()
            .and_then(|m| m.mutation.as_ref()),
        Some(Mutation::ClearBody(true))
    )
}

/// Attributes as Envoy sends them: a Struct of string values under the filter's name.
fn attribute_map(
    attributes: &[(&str, &str)],
) -> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct> {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let fields = attributes
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                },
            )
        })
        .collect();
    let mut map = std::collections::HashMap::new();
    if !attributes.is_empty() {
        map.insert("envoy.filters.http.ext_proc".to_string(), Struct { fields });
    }
    map
}
