//! The router as Envoy sees it: real gRPC streams against a running server, asserting the exact
//! header and body mutations, mode overrides and error replies.

mod common;
#[path = "../crates/core/benches/support/models.rs"]
mod models;

use std::sync::Arc;

use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders};
use responses_router::store::Store;
use responses_router_core::affinity::Location;

const ROUTING: [&str; 8] = [
    "x-router-skip-observer",
    "x-router-session-host",
    "x-router-cluster",
    "x-selected-model",
    "x-router-reason",
    "x-router-category",
    "x-router-classified-model",
    "x-gateway-destination-endpoint",
];

fn json_error(
    ir: &envoy_types::pb::envoy::service::ext_proc::v3::ImmediateResponse,
) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&ir.body).expect("error body is JSON");
    for field in ["message", "type", "param", "code"] {
        assert!(
            v["error"].get(field).is_some(),
            "error body lacks `{field}`: {v}"
        );
    }
    v
}

#[tokio::test]
async fn auto_request_in_one_chunk_is_classified_spliced_and_routed() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let client_body = br#"{"input":"please debug my python","big":12345678901234567890,"model" : "auto","f":1.50}"#;
    let len = client_body.len().to_string();
    let reply = s
        .send(headers(
            "POST",
            "/v1/responses?x=1",
            &[
                ("content-type", "application/json"),
                ("content-length", &len),
                ("x-router-cluster", "general"),
            ],
            false,
        ))
        .await
        .unwrap();
    // Headers: ask for the buffered body, strip every client routing header, no decision yet.
    let mode = reply.mode_override.expect("asks Envoy to buffer the body");
    assert_eq!(mode.request_body_mode, BodySendMode::Buffered as i32);
    let common = headers_common(&reply);
    for h in ROUTING {
        assert!(
            removed_headers(common).contains(&h.to_string()),
            "{h} not removed"
        );
    }
    assert!(set_headers(common).is_empty());

    let reply = s.send(body(client_body, true)).await.unwrap();
    let common = body_common(&reply);
    let expected = br#"{"input":"please debug my python","big":12345678901234567890,"model" : "code-model","f":1.50}"#;
    assert_eq!(new_body(common).as_deref(), Some(&expected[..]));
    assert_eq!(
        set_header(common, "content-length"),
        Some(expected.len().to_string())
    );
    assert_eq!(
        set_header(common, "x-router-cluster").as_deref(),
        Some("code")
    );
    assert_eq!(
        set_header(common, "x-selected-model").as_deref(),
        Some("code-model")
    );
    assert_eq!(
        set_header(common, "x-router-reason").as_deref(),
        Some("category")
    );
    assert_eq!(
        set_header(common, "x-router-category").as_deref(),
        Some("coding")
    );
    assert!(common.clear_route_cache, "Envoy must re-pick the route");
    assert!(removed_headers(common).contains(&"x-gateway-destination-endpoint".to_string()));
}

#[tokio::test]
async fn body_in_many_chunks_is_held_back_and_sent_whole() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/chat/completions", &[], false))
        .await
        .unwrap();
    let full = br#"{"model":"auto","messages":[{"role":"user","content":"```rust code```"}],"stream":true}"#;
    let chunks: Vec<&[u8]> = full.chunks(7).collect();
    for chunk in &chunks[..chunks.len() - 1] {
        let reply = s.send(body(chunk, false)).await.unwrap();
        assert!(
            clears_body(body_common(&reply)),
            "partial chunks are withheld"
        );
    }
    let reply = s.send(body(chunks[chunks.len() - 1], true)).await.unwrap();
    let common = body_common(&reply);
    let expected = String::from_utf8_lossy(full).replacen("\"auto\"", "\"code-model\"", 1);
    assert_eq!(new_body(common).unwrap(), expected.as_bytes());
    assert_eq!(
        set_header(common, "x-router-cluster").as_deref(),
        Some("code")
    );
    // No content-length was sent (chunked), so none is invented.
    assert_eq!(set_header(common, "content-length"), None);
}

#[tokio::test]
async fn explicit_model_passes_untouched() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers(
        "POST",
        "/v1/responses",
        &[("content-length", "40")],
        false,
    ))
    .await
    .unwrap();
    let reply = s
        .send(body(br#"{"model":"general-model","input":"python"}"#, true))
        .await
        .unwrap();
    let common = body_common(&reply);
    assert_eq!(new_body(common), None, "the body is not replaced");
    assert_eq!(set_header(common, "content-length"), None);
    assert_eq!(
        set_header(common, "x-router-cluster").as_deref(),
        Some("general")
    );
    assert_eq!(
        set_header(common, "x-router-reason").as_deref(),
        Some("explicit")
    );
    assert!(removed_headers(common).contains(&"x-router-category".to_string()));
}

#[tokio::test]
async fn client_errors_are_openai_immediate_responses() {
    let cases: [(&[u8], u32, &str); 6] = [
        (b"{not json", 400, "invalid_json"),
        (
            br#"{"model":"auto","model":"code-model","input":"x"}"#,
            400,
            "invalid_value",
        ),
        (br#"{"model":7,"input":"x"}"#, 400, "invalid_value"),
        (
            br#"{"model":"gpt-nope","input":"x"}"#,
            404,
            "model_not_found",
        ),
        (
            br#"{"model":"auto","input":[{"type":"input_image","image_url":"x"}]}"#,
            400,
            "invalid_value",
        ),
        (br#"{"input":"x"}"#, 400, "missing_required_parameter"),
    ];
    let mut router = start().await;
    for (payload, status, code) in cases {
        let mut s = Stream::open(&mut router.client).await;
        s.send(headers("POST", "/v1/responses", &[], false))
            .await
            .unwrap();
        let reply = s.send(body(payload, true)).await.unwrap();
        let ir = immediate(&reply);
        assert_eq!(
            ir.status.as_ref().unwrap().code as u32,
            status,
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(json_error(ir)["error"]["code"], code);
        assert!(
            router.metrics.encode().contains(&format!(
                "responses_router_refusals_total{{code=\"{code}\"}}"
            )),
            "refusal {code} counted"
        );
        let ct = ir
            .headers
            .as_ref()
            .unwrap()
            .set_headers
            .iter()
            .find(|h| h.header.as_ref().unwrap().key == "content-type");
        assert_eq!(
            ct.unwrap().header.as_ref().unwrap().raw_value,
            b"application/json"
        );
    }
}

#[tokio::test]
async fn over_the_limit_is_413_without_waiting_for_the_end() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let reply = s.send(body(&[b' '; 3000], false)).await.unwrap();
    assert!(clears_body(body_common(&reply)));
    let reply = s.send(body(&[b' '; 3000], false)).await.unwrap();
    let ir = immediate(&reply);
    assert_eq!(ir.status.as_ref().unwrap().code, 413);
    assert_eq!(json_error(ir)["error"]["type"], "invalid_request_error");
    // Anything Envoy sends after the error reply is a protocol violation: the stream ends.
    assert!(s.send(body(b"}", true)).await.is_err());
}

#[tokio::test]
async fn empty_body_with_end_of_stream_on_headers_is_400() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("POST", "/v1/responses", &[], true))
        .await
        .unwrap();
    assert_eq!(immediate(&reply).status.as_ref().unwrap().code, 400);
}

#[tokio::test]
async fn id_paths_are_decided_on_headers_and_stay_put() {
    let mut router = start().await;
    let mut clusters = Vec::new();
    for (method, path) in [
        ("GET", "/v1/responses/resp_abc"),
        ("DELETE", "/v1/responses/resp_abc"),
        ("POST", "/v1/responses/resp_abc/cancel"),
        ("GET", "/v1/responses/resp_abc/input_items?limit=5"),
    ] {
        let mut s = Stream::open(&mut router.client).await;
        let reply = s
            .send(headers(method, path, &[("x-router-cluster", "evil")], true))
            .await
            .unwrap();
        assert!(reply.mode_override.is_none(), "no body needed");
        let common = headers_common(&reply);
        assert!(common.clear_route_cache);
        assert_eq!(
            set_header(common, "x-router-reason").as_deref(),
            Some("hash")
        );
        clusters.push(set_header(common, "x-router-cluster").unwrap());
    }
    assert!(
        clusters.iter().all(|c| c == &clusters[0] && c != "evil"),
        "{clusters:?}"
    );
}

#[tokio::test]
async fn pass_through_requests_get_the_default_cluster_and_lose_client_routing_headers() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers(
            "GET",
            "/v1/files",
            &[
                ("x-router-cluster", "code"),
                ("x-gateway-destination-endpoint", "10.0.0.1:80"),
            ],
            true,
        ))
        .await
        .unwrap();
    let common = headers_common(&reply);
    assert_eq!(
        set_header(common, "x-router-cluster").as_deref(),
        Some("general")
    );
    assert_eq!(
        set_header(common, "x-router-reason").as_deref(),
        Some("passthrough")
    );
    assert!(removed_headers(common).contains(&"x-gateway-destination-endpoint".to_string()));
    // A body Envoy sends anyway is acknowledged untouched.
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/embeddings", &[], false))
        .await
        .unwrap();
    let reply = s.send(body(b"{}", true)).await.unwrap();
    assert_eq!(new_body(body_common(&reply)), None);
}

#[tokio::test]
async fn websocket_upgrade_is_refused_clearly() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers(
            "GET",
            "/v1/responses",
            &[("upgrade", "websocket"), ("connection", "Upgrade")],
            true,
        ))
        .await
        .unwrap();
    let ir = immediate(&reply);
    assert_eq!(ir.status.as_ref().unwrap().code, 400);
    assert_eq!(json_error(ir)["error"]["code"], "websocket_not_supported");
}

#[tokio::test]
async fn compressed_bodies_on_routed_endpoints_are_415_on_headers() {
    let mut router = start().await;
    for (path, encoding) in [
        ("/v1/responses", "gzip"),
        ("/v1/chat/completions", "br"),
        ("/v1/responses/compact", "deflate, identity"),
    ] {
        let mut s = Stream::open(&mut router.client).await;
        let reply = s
            .send(headers(
                "POST",
                path,
                &[("content-encoding", encoding), ("content-length", "20")],
                false,
            ))
            .await
            .unwrap();
        let ir = immediate(&reply);
        assert_eq!(ir.status.as_ref().unwrap().code, 415, "{path} {encoding}");
        let error = json_error(ir);
        assert_eq!(error["error"]["code"], "unsupported_content_encoding");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    // `identity` is no compression; a body-less request is not judged by its encoding at all.
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers(
            "POST",
            "/v1/responses",
            &[("content-encoding", "identity")],
            false,
        ))
        .await
        .unwrap();
    assert!(
        reply.mode_override.is_some(),
        "identity body is buffered for routing"
    );
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers(
            "GET",
            "/v1/files",
            &[("content-encoding", "gzip")],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(
        set_header(headers_common(&reply), "x-router-cluster").as_deref(),
        Some("general")
    );
}

#[tokio::test]
async fn response_phases_and_trailers_get_matching_replies() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("GET", "/v1/files", &[], true))
        .await
        .unwrap();
    let reply = s
        .send(Request::ResponseHeaders(HttpHeaders::default()))
        .await
        .unwrap();
    assert!(matches!(reply.response, Some(Response::ResponseHeaders(_))));
    let reply = s
        .send(Request::ResponseBody(HttpBody {
            body: b"data".to_vec(),
            end_of_stream: false,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(matches!(reply.response, Some(Response::ResponseBody(_))));
    let reply = s
        .send(Request::ResponseTrailers(Default::default()))
        .await
        .unwrap();
    assert!(matches!(
        reply.response,
        Some(Response::ResponseTrailers(_))
    ));
}

#[tokio::test]
async fn request_trailers_while_buffering_are_refused() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    s.send(body(br#"{"model":"auto","#, false)).await.unwrap();
    let reply = s.send(trailers()).await.unwrap();
    assert_eq!(immediate(&reply).status.as_ref().unwrap().code, 400);
}

#[tokio::test]
async fn protocol_violations_end_the_stream_without_a_guess() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let err = s.send(body(b"{}", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("GET", "/v1/files", &[], true))
        .await
        .unwrap();
    assert!(
        s.send(headers("GET", "/v1/files", &[], true))
            .await
            .is_err()
    );
    // The server is still healthy for the next stream.
    let mut s = Stream::open(&mut router.client).await;
    assert!(s.send(headers("GET", "/v1/files", &[], true)).await.is_ok());
}

#[tokio::test]
async fn a_stream_dropped_midway_does_not_hurt_others() {
    let mut router = start().await;
    {
        let mut s = Stream::open(&mut router.client).await;
        s.send(headers("POST", "/v1/responses", &[], false))
            .await
            .unwrap();
        // Dropped here, mid-body, as when a client disconnects.
    }
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let reply = s
        .send(body(br#"{"model":"auto","input":"hi"}"#, true))
        .await
        .unwrap();
    assert_eq!(
        set_header(body_common(&reply), "x-router-reason").as_deref(),
        Some("default")
    );
}

#[tokio::test]
async fn many_concurrent_streams_each_get_their_own_decision() {
    let router = start().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut client = router.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Stream::open(&mut client).await;
            s.send(headers("POST", "/v1/responses", &[], false))
                .await
                .unwrap();
            let text = if i % 2 == 0 { "rust" } else { "poetry" };
            let payload = format!(r#"{{"model":"auto","input":"{text} {i}"}}"#);
            let reply = s.send(body(payload.as_bytes(), true)).await.unwrap();
            (
                i,
                set_header(body_common(&reply), "x-router-cluster").unwrap(),
            )
        }));
    }
    for t in tasks {
        let (i, cluster) = t.await.unwrap();
        assert_eq!(cluster, if i % 2 == 0 { "code" } else { "general" });
    }
}

struct Pinned;

#[tonic::async_trait]
impl Store for Pinned {
    async fn lookup(&self, id: &str) -> Option<Location> {
        (id == "resp_pinned").then(|| Location {
            cluster: "code".into(),
            host: Some("10.1.2.3:8000".into()),
        })
    }
    async fn record(&self, _: &str, _: Location) {}
    fn local_entries(&self) -> usize {
        0
    }
}

#[tokio::test]
async fn a_store_plugs_in_and_pins_continuations_with_host() {
    let mut router = start_with(ROUTING_YAML, Arc::new(Pinned)).await;
    let (_, reply) = post_responses(
        &mut router.client,
        br#"{"model":"auto","previous_response_id":"resp_pinned","input":"thanks"}"#,
    )
    .await;
    let common = body_common(&reply);
    assert_eq!(
        set_header(common, "x-router-cluster").as_deref(),
        Some("code")
    );
    assert_eq!(
        set_header(common, "x-router-reason").as_deref(),
        Some("affinity")
    );
    // base64("10.1.2.3:8000"), as Envoy's stateful_session header extension reads it.
    assert_eq!(
        set_header(common, "x-router-session-host").as_deref(),
        Some("MTAuMS4yLjM6ODAwMA==")
    );
    assert!(removed_headers(common).contains(&"x-gateway-destination-endpoint".to_string()));
    assert_eq!(
        set_header(common, "x-router-classified-model").as_deref(),
        Some("general-model")
    );
    assert_eq!(
        set_header(common, "x-selected-model").as_deref(),
        Some("code-model")
    );
}

#[tokio::test]
async fn grpc_health_reports_the_ext_proc_service_serving() {
    let router = start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", router.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "envoy.service.ext_proc.v3.ExternalProcessor"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    use responses_router::extproc::service::Listeners;
    use responses_router::extproc::{RouterService, serve};
    use responses_router::reload::SharedTable;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.sock");
    // A regular file in the way is not deleted; a stale socket from an earlier run is replaced.
    std::fs::write(&path, b"keep").unwrap();
    assert!(Listeners::bind_uds(&path).is_err());
    std::fs::remove_file(&path).unwrap();
    drop(Listeners::bind_uds(&path).unwrap());
    let listener = Listeners::bind_uds(&path).unwrap();
    let table = responses_router_core::config::from_yaml(ROUTING_YAML)
        .unwrap()
        .table;
    let service = RouterService::new(
        SharedTable::new(table),
        Arc::new(responses_router_core::affinity::NoStore),
        Arc::new(responses_router::telemetry::Metrics::default()),
    );
    tokio::spawn(serve(
        service,
        Listeners {
            uds: Some(listener),
            ..Default::default()
        },
        std::future::pending(),
    ));

    let socket = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://router.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    let mut client = ExternalProcessorClient::new(channel);
    let mut s = Stream::open(&mut client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let reply = s
        .send(body(br#"{"model":"auto","input":"rust"}"#, true))
        .await
        .unwrap();
    assert_eq!(
        set_header(body_common(&reply), "x-router-cluster").as_deref(),
        Some("code")
    );
}

#[tokio::test]
async fn declared_content_length_over_the_limit_is_refused_on_headers() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers(
            "POST",
            "/v1/responses",
            &[("content-length", "4097")],
            false,
        ))
        .await
        .unwrap();
    assert_eq!(immediate(&reply).status.as_ref().unwrap().code, 413);
}

#[tokio::test]
async fn an_unreadable_message_ends_the_stream_with_an_error_not_ok() {
    // Over the gRPC decode limit (2 x max_body_bytes + 1 MiB): the router cannot read the message,
    // and must say so, or Envoy would forward the request without a decision.
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let huge = vec![b' '; (1 << 20) + 2 * 4096 + 1024];
    let err = s.send(body(&huge, true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn the_model_list_is_answered_by_the_router_from_its_config() {
    let mut router = start().await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("GET", "/v1/models", &[], true))
        .await
        .unwrap();
    let answer = immediate(&reply);
    assert_eq!(answer.status.as_ref().unwrap().code, 200);
    let list: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "general-model", "code-model"]);
    assert!(
        router
            .metrics
            .encode()
            .contains(r#"responses_router_answered_total{gen_ai_operation_name="models.list"} 1"#)
    );
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("GET", "/v1/models/gpt-9", &[], true))
        .await
        .unwrap();
    assert_eq!(immediate(&reply).status.as_ref().unwrap().code, 404);
    assert_eq!(
        json_error(immediate(&reply))["error"]["code"],
        "model_not_found"
    );
}

#[tokio::test]
async fn exposing_the_decision_adds_it_to_every_response_but_never_a_host() {
    let yaml = format!("{ROUTING_YAML}\nexpose_decision: true\n");
    let mut router = start_with(&yaml, store_with_resp_p_on_a_code_host()).await;
    // A chat request (which the router would not watch otherwise) asks for its response headers.
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("POST", "/v1/chat/completions", &[], false))
        .await
        .unwrap();
    let mode = reply.mode_override.as_ref().expect("a mode override");
    assert_eq!(
        mode.response_header_mode, 1,
        "response headers are sent (SEND)"
    );
    s.send(body(
        br#"{"model":"auto","messages":[{"role":"user","content":"debug my python"}]}"#,
        true,
    ))
    .await
    .unwrap();
    let reply = s
        .send(response_headers("200", "application/json"))
        .await
        .unwrap();
    let common = response_headers_common(&reply);
    assert_eq!(
        set_header(common, "x-router-model").as_deref(),
        Some("code-model")
    );
    assert_eq!(
        set_header(common, "x-router-reason").as_deref(),
        Some("category")
    );
    assert_eq!(
        set_header(common, "x-router-category").as_deref(),
        Some("coding")
    );
    // A continuation pinned to a host: the client learns the decision, not the host.
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("GET", "/v1/responses/resp_p", &[], true))
        .await
        .unwrap();
    let reply = s
        .send(response_headers("200", "application/json"))
        .await
        .unwrap();
    let shown = set_headers(response_headers_common(&reply));
    assert!(
        shown
            .iter()
            .all(|(_, v)| !v.contains("127.0.0.1") && !v.contains("MTI3")),
        "{shown:?}"
    );
    assert_eq!(
        set_header(response_headers_common(&reply), "x-router-reason").as_deref(),
        Some("affinity")
    );
}

/// A memory store knowing `resp_p` on a host of ROUTING_YAML's pinning `code` cluster.
fn store_with_resp_p_on_a_code_host() -> Arc<responses_router_core::affinity::MemoryStore> {
    let store = memory_store();
    store.put(
        "resp_p",
        &Location {
            cluster: "code".into(),
            host: Some("127.0.0.1:9101".into()),
        },
    );
    store
}

fn response_headers(status: &str, content_type: &str) -> Request {
    let list = [(":status", status), ("content-type", content_type)];
    Request::ResponseHeaders(HttpHeaders {
        headers: Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: list
                .iter()
                .map(
                    |(k, v)| envoy_types::pb::envoy::config::core::v3::HeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    },
                )
                .collect(),
        }),
        ..Default::default()
    })
}

fn response_body(bytes: &[u8], end_of_stream: bool) -> Request {
    Request::ResponseBody(HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    })
}

/// An in-memory affinity store, as `serve` builds one.
fn memory_store() -> Arc<responses_router_core::affinity::MemoryStore> {
    Arc::new(responses_router_core::affinity::MemoryStore::new(
        1000,
        std::time::Duration::from_secs(60),
    ))
}

/// A store that knows `resp_p` lives on host 127.0.0.1:9101 of the pinning cluster `general-b`.
fn store_with_resp_p_pinned() -> Arc<responses_router_core::affinity::MemoryStore> {
    let store = memory_store();
    store.put(
        "resp_p",
        &Location {
            cluster: "general-b".into(),
            host: Some("127.0.0.1:9101".into()),
        },
    );
    store
}

const LEARNING_YAML: &str = r#"
default_model: general-model
models:
  - name: general-model
    clusters: [{ name: general-a }, { name: general-b }]
clusters:
  - name: general-b
    pin_host: true
"#;

/// Plays the observer filter for one created response, then continues it on the routing filter.
async fn learn_then_continue(
    router: &mut Router,
    served_by: &str,
    content_type: &str,
    body_chunks: &[&[u8]],
) -> ProcessingResponseView {
    // As the shipped envoy.yaml configures it: no request headers, the request facts come as
    // attributes of the response headers.
    let mut obs = Stream::open(&mut router.client).await;
    obs.observe(
        response_headers("200", content_type),
        &[
            ("xds.cluster_name", served_by),
            ("upstream.address", "127.0.0.1:9101"),
            ("request.id", "req-observed"),
            ("request.path", "/v1/responses"),
            ("request.method", "POST"),
        ],
    )
    .await;
    for (i, chunk) in body_chunks.iter().enumerate() {
        obs.observe(response_body(chunk, i + 1 == body_chunks.len()), &[])
            .await;
    }
    assert!(
        obs.closed().await,
        "the observer stream is closed without replies once learned"
    );

    let (_, reply) = post_responses(
        &mut router.client,
        br#"{"model":"general-model","previous_response_id":"resp_learned","input":"next"}"#,
    )
    .await;
    let common = body_common(&reply);
    ProcessingResponseView {
        cluster: set_header(common, "x-router-cluster"),
        reason: set_header(common, "x-router-reason"),
        session_host: set_header(common, "x-router-session-host"),
    }
}

struct ProcessingResponseView {
    cluster: Option<String>,
    reason: Option<String>,
    session_host: Option<String>,
}

#[tokio::test]
async fn learns_from_a_streamed_response_and_routes_the_continuation_there() {
    let store = memory_store();
    let mut router = start_with(LEARNING_YAML, store.clone()).await;
    for served_by in ["general-a", "general-b"] {
        let sse: &[&[u8]] = &[
            b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":",
            b"\"resp_learned\"}}\n\nevent: response.in_progress\n",
        ];
        let v = learn_then_continue(&mut router, served_by, "text/event-stream", sse).await;
        assert_eq!(v.cluster.as_deref(), Some(served_by));
        assert_eq!(v.reason.as_deref(), Some("affinity"));
        // Only general-b pins hosts: base64("127.0.0.1:9101").
        let expected_host = (served_by == "general-b").then(|| "MTI3LjAuMC4xOjkxMDE=".to_string());
        assert_eq!(v.session_host, expected_host);
    }
    let text = router.metrics.encode();
    assert!(
        text.contains(r#"responses_router_learned_ids_total{source="sse"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"responses_router_affinity_total{outcome="hit"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn learns_a_json_response_before_the_client_sees_it() {
    use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::HeaderSendMode;
    let store = memory_store();
    let mut router = start_with(LEARNING_YAML, store.clone()).await;
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let mode = reply.mode_override.unwrap();
    assert_eq!(
        mode.response_header_mode,
        HeaderSendMode::Send as i32,
        "a create watches its response"
    );
    let reply = s
        .send(body(br#"{"model":"general-model","input":"hi"}"#, true))
        .await
        .unwrap();
    assert_eq!(
        set_header(body_common(&reply), "accept-encoding").as_deref(),
        Some("identity")
    );

    // A 2xx JSON response: the router asks Envoy to hold the body until it has read the id.
    let mut request = response_headers("200", "application/json");
    let attrs = [
        ("xds.cluster_name", "general-b"),
        ("upstream.address", "127.0.0.1:9101"),
    ];
    let reply = s
        .send_with_attributes(request.clone(), &attrs)
        .await
        .unwrap();
    assert!(matches!(reply.response, Some(Response::ResponseHeaders(_))));
    let mode = reply.mode_override.expect("buffer the JSON body");
    assert_eq!(mode.response_body_mode, BodySendMode::Buffered as i32);
    let reply = s
        .send(response_body(
            br#"{"id":"resp_learned","object":"response"}"#,
            true,
        ))
        .await
        .unwrap();
    assert!(matches!(reply.response, Some(Response::ResponseBody(_))));
    // Recorded by the time the reply went out: the attribute wins over the routed cluster.
    assert_eq!(
        store.get("resp_learned"),
        Some(Location {
            cluster: "general-b".into(),
            host: Some("127.0.0.1:9101".into())
        })
    );

    // An SSE response is left alone (the observer filter learns it without holding the stream).
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    s.send(body(
        br#"{"model":"general-model","input":"hi","stream":true}"#,
        true,
    ))
    .await
    .unwrap();
    request = response_headers("200", "text/event-stream");
    let reply = s.send_with_attributes(request, &attrs).await.unwrap();
    assert!(reply.mode_override.is_none(), "streams are never buffered");

    // Stateless requests do not watch their responses at all.
    let mut s = Stream::open(&mut router.client).await;
    let reply = s
        .send(headers("POST", "/v1/chat/completions", &[], false))
        .await
        .unwrap();
    assert_eq!(
        reply.mode_override.unwrap().response_header_mode,
        HeaderSendMode::Skip as i32
    );
}

#[tokio::test]
async fn errors_and_stateless_requests_teach_nothing() {
    let store = memory_store();
    let mut router = start_with(LEARNING_YAML, store.clone()).await;
    // A 404 carrying an id-shaped body, and a chat completion: neither is state.
    let mut obs = Stream::open(&mut router.client).await;
    obs.observe(headers("POST", "/v1/responses", &[], false), &[])
        .await;
    obs.observe(
        response_headers("404", "application/json"),
        &[("xds.cluster_name", "general-a")],
    )
    .await;
    assert!(obs.closed().await);
    let mut obs = Stream::open(&mut router.client).await;
    obs.observe(headers("POST", "/v1/chat/completions", &[], false), &[])
        .await;
    assert!(obs.closed().await);
    // The same chat stream as the shipped config sends it: attributes on the response headers.
    let mut obs = Stream::open(&mut router.client).await;
    let chat = [
        ("xds.cluster_name", "general-a"),
        ("request.path", "/v1/chat/completions"),
        ("request.method", "POST"),
    ];
    obs.observe(response_headers("200", "text/event-stream"), &chat)
        .await;
    assert!(obs.closed().await, "closed at the headers, no chunk read");
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_continuation_served_by_another_host_than_pinned_is_counted() {
    let store = store_with_resp_p_pinned();
    let mut router = start_with(LEARNING_YAML, store).await;
    let (mut s, reply) = post_responses(
        &mut router.client,
        br#"{"model":"general-model","previous_response_id":"resp_p","input":"x"}"#,
    )
    .await;
    assert_eq!(
        set_header(body_common(&reply), "x-router-session-host").as_deref(),
        Some("MTI3LjAuMC4xOjkxMDE=")
    );
    // Envoy could not use the pinned host and load-balanced to another one.
    let attrs = [
        ("xds.cluster_name", "general-b"),
        ("upstream.address", "127.0.0.1:9102"),
    ];
    s.send_with_attributes(response_headers("404", "application/json"), &attrs)
        .await
        .unwrap();
    let text = router.metrics.encode();
    assert!(
        text.contains(r#"responses_router_affinity_total{outcome="moved_host"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_explain_api_gives_the_decision_the_service_makes() {
    use responses_router::api::pb::{
        self, explain_response::Outcome, router_admin_client::RouterAdminClient,
    };
    let store = store_with_resp_p_pinned();
    let mut router = start_with(LEARNING_YAML, store).await;
    let mut api = RouterAdminClient::connect(format!("http://{}", router.addr))
        .await
        .unwrap();

    let payload = br#"{"model":"general-model","previous_response_id":"resp_p","input":"more"}"#;
    let explained = api
        .explain(pb::ExplainRequest {
            method: "POST".into(),
            path: "/v1/responses".into(),
            headers: [("x-request-id".to_string(), "req-0001".to_string())].into(),
            body: payload.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Outcome::Decision(d)) = explained.outcome else {
        panic!("{explained:?}")
    };
    assert_eq!(
        (d.cluster.as_str(), d.reason.as_str(), d.affinity.as_str()),
        ("general-b", "affinity", "hit")
    );
    assert_eq!(
        (d.host.as_str(), d.state_id.as_str(), d.config_generation),
        ("127.0.0.1:9101", "resp_p", 1)
    );
    // The ext_proc service decides the same for the same request.
    let mut s = Stream::open(&mut router.client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let reply = s.send(body(payload, true)).await.unwrap();
    assert_eq!(
        set_header(body_common(&reply), "x-router-cluster").as_deref(),
        Some("general-b")
    );

    let refused = api
        .explain(pb::ExplainRequest {
            method: "POST".into(),
            path: "/v1/responses".into(),
            body: b"{".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Outcome::Refusal(r)) = refused.outcome else {
        panic!("{refused:?}")
    };
    assert_eq!((r.status, r.code.as_str()), (400, "invalid_json"));

    let config = api
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.generation, 1);
    assert_eq!(config.clusters, ["general-a", "general-b"]);
    assert_eq!(config.default_model, "general-model");
}

#[tokio::test]
async fn the_explain_api_shows_each_categorys_similarity() {
    use responses_router::api::pb::{
        self, explain_response::Outcome, router_admin_client::RouterAdminClient,
    };
    let dir = models::model_dir(models::WORDLLAMA);
    let yaml = format!(
        "{ROUTING_YAML}    examples: [\"Why does this loop never terminate?\"]\n\
         classification:\n  embedding: {{ model_dir: \"{}\", min_similarity: 0.2 }}\n",
        dir.display()
    );
    let router = start_with(&yaml, Arc::new(responses_router_core::affinity::NoStore)).await;
    let mut api = RouterAdminClient::connect(format!("http://{}", router.addr))
        .await
        .unwrap();
    let explain = |text: &str| pb::ExplainRequest {
        method: "POST".into(),
        path: "/v1/responses".into(),
        body: serde_json::json!({"model": "auto", "input": text})
            .to_string()
            .into_bytes(),
        ..Default::default()
    };
    let explained = api
        .explain(explain("My recursive function never returns, why?"))
        .await
        .unwrap()
        .into_inner();
    let Some(Outcome::Decision(d)) = explained.outcome else {
        panic!("{explained:?}")
    };
    let coding = &d.scores[0];
    assert_eq!((d.category.as_str(), coding.score), ("coding", 0));
    let similarity = coding.similarity.expect("a similarity");
    assert!(similarity >= 0.2, "{coding:?}");
    assert_eq!(coding.min_similarity, Some(0.2));
    assert_eq!(coding.combined, Some(similarity));
}

#[tokio::test]
async fn a_continuation_that_overtakes_the_observer_waits_for_its_id() {
    let store = memory_store();
    let mut router = start_with(LEARNING_YAML, store.clone()).await;
    // The routing stream of a streamed turn reaches its response headers: the id is now pending.
    let mut turn = Stream::open(&mut router.client).await;
    turn.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    turn.send(body(
        br#"{"model":"general-model","input":"hi","stream":true}"#,
        true,
    ))
    .await
    .unwrap();
    let attributes = [
        ("xds.cluster_name", "general-b"),
        ("upstream.address", "127.0.0.1:9101"),
    ];
    turn.send_with_attributes(response_headers("200", "text/event-stream"), &attributes)
        .await
        .unwrap();
    // The observer has the headers but its copy of the first event is still on its way.
    let mut obs = Stream::open(&mut router.client).await;
    let routed = [("x-router-cluster", "general-b")];
    obs.observe(headers("POST", "/v1/responses", &routed, false), &[])
        .await;
    obs.observe(response_headers("200", "text/event-stream"), &attributes)
        .await;

    // Meanwhile the client already sends the next turn.
    let mut next = Stream::open(&mut router.client).await;
    next.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    let continuation = tokio::spawn(async move {
        let reply = next
            .send(body(
                br#"{"model":"general-model","previous_response_id":"resp_late","input":"more"}"#,
                true,
            ))
            .await
            .unwrap();
        let common = body_common(&reply);
        (
            set_header(common, "x-router-reason"),
            set_header(common, "x-router-cluster"),
        )
    });
    tokio::task::yield_now().await;
    obs.observe(
        response_body(
            b"event: response.created\ndata: {\"response\":{\"id\":\"resp_late\"}}\n\n",
            false,
        ),
        &[],
    )
    .await;
    let (reason, cluster) = continuation.await.unwrap();
    assert_eq!(
        reason.as_deref(),
        Some("affinity"),
        "placed where it was learned, not by hash"
    );
    assert_eq!(cluster.as_deref(), Some("general-b"));
}

#[tokio::test]
async fn only_streams_that_create_state_keep_the_observer() {
    let store = memory_store();
    let mut router = start_with(LEARNING_YAML, store).await;
    let cases: [(&str, &[u8], Option<&str>); 4] = [
        ("/v1/responses", br#"{"model":"general-model","input":"hi","stream":true}"#, None),
        ("/v1/responses", br#"{"model":"general-model","input":"hi"}"#, Some("1")),
        ("/v1/responses", br#"{"model":"general-model","input":"hi","stream":"true"}"#, Some("1")),
        ("/v1/chat/completions", br#"{"model":"general-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#, Some("1")),
    ];
    for (path, request, skip) in cases {
        let mut s = Stream::open(&mut router.client).await;
        // A client's own value never survives.
        s.send(headers(
            "POST",
            path,
            &[("x-router-skip-observer", "1")],
            false,
        ))
        .await
        .unwrap();
        let reply = s.send(body(request, true)).await.unwrap();
        let common = body_common(&reply);
        assert_eq!(
            set_header(common, "x-router-skip-observer").as_deref(),
            skip,
            "{path} {}",
            String::from_utf8_lossy(request)
        );
        if skip.is_none() {
            assert!(removed_headers(common).contains(&"x-router-skip-observer".to_string()));
        }
    }
}
