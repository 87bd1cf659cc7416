//! End-to-end tests of the simulator over real HTTP: each test starts instances on 127.0.0.1:0 and
//! talks to them with a plain hyper client, asserting what the router and the e2e tests rely on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::SimulateArgs;
use super::state::sha256_hex;

/// A running simulator; stops when dropped.
struct Sim {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(args: SimulateArgs) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = super::serve(listener, &args, async {
            let _ = stopped.await;
        })
        .await;
    });
    Sim { addr, _stop: stop }
}

async fn start_default() -> Sim {
    start(SimulateArgs::new("a", &["m1", "m2"])).await
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Sends one request on a fresh connection and returns the response head and its body stream.
async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> hyper::Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    let resp = open(addr, method, path, body).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(addr, "POST", path, Some(body.to_string().as_bytes())).await
}

/// `POST /v1/responses`, the answer's JSON.
async fn create_response(addr: SocketAddr, body: Value) -> Value {
    post(addr, "/v1/responses", body).await.json()
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, None).await
}

fn output_text(resp: &Value) -> &str {
    resp["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
}

/// Parses an SSE body into (event name or "", data JSON or string) pairs.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or_else(|_| Value::from(d));
                }
            }
            (event, data)
        })
        .collect()
}

fn not_found_body(id: &str) -> String {
    format!(
        r#"{{"error":{{"message":"Response with id '{id}' not found.","type":"invalid_request_error","param":"response_id","code":404}}}}"#
    )
}

#[tokio::test]
async fn create_returns_a_complete_response_object() {
    let sim = start_default().await;
    let r = post(
        sim.addr,
        "/v1/responses",
        json!({"model": "m2", "input": "Hello there", "temperature": 0.5}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-simulator-instance"), Some("a"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let id = v["id"].as_str().unwrap();
    assert_eq!(id.len(), 37);
    assert!(id.starts_with("resp_") && id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "m2");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["previous_response_id"], Value::Null);
    assert_eq!(v["temperature"], json!(0.5));
    assert_eq!(v["store"], true);
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["role"], "assistant");
    assert!(v["output"][0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(output_text(&v), "[a/m2] turn 1: Hello there");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
    );
    // Stored: GET returns the same object.
    let g = get(sim.addr, &format!("/v1/responses/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json(), v);
}

#[tokio::test]
async fn digest_header_and_request_log_hold_the_exact_bytes() {
    let sim = start_default().await;
    // Odd spacing, key order and escapes: a re-serialization would change these bytes.
    let raw = "{ \"input\" : \"h\\u00e9llo\",\n \"model\":\"m1\", \"big\": 12345678901234567890 }";
    let r = send(sim.addr, "POST", "/v1/responses", Some(raw.as_bytes())).await;
    assert_eq!(r.status, 200);
    let digest = sha256_hex(raw.as_bytes());
    assert_eq!(r.header("x-received-body-sha256"), Some(digest.as_str()));
    let logged = get(sim.addr, &format!("/_simulator/requests/{digest}")).await;
    assert_eq!(logged.status, 200);
    assert_eq!(&logged.body[..], raw.as_bytes());
    // Errors carry the digest too; body-less requests carry only the instance.
    let bad = send(sim.addr, "POST", "/v1/responses", Some(b"{nope")).await;
    assert_eq!(
        bad.header("x-received-body-sha256"),
        Some(sha256_hex(b"{nope").as_str())
    );
    assert!(logged.header("x-received-body-sha256").is_none());
    assert_eq!(logged.header("x-simulator-instance"), Some("a"));
    let missing = get(
        sim.addr,
        &format!("/_simulator/requests/{}", sha256_hex(b"never sent")),
    )
    .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn previous_response_id_chains_count_turns_and_context() {
    let sim = start_default().await;
    let r1 = create_response(sim.addr, json!({"model": "m1", "input": "one"})).await;
    let r2 = create_response(
        sim.addr,
        json!({"model": "m1", "input": "two", "previous_response_id": r1["id"]}),
    )
    .await;
    let r3 = create_response(sim.addr, json!({"model": "m2", "input": [{"role": "user", "content": "three"}], "previous_response_id": r2["id"]})).await;
    assert_eq!(output_text(&r1), "[a/m1] turn 1: one");
    assert_eq!(output_text(&r2), "[a/m1] turn 2: two");
    assert_eq!(output_text(&r3), "[a/m2] turn 3: three");
    assert_eq!(r3["previous_response_id"], r2["id"]);
    // The stored chain counts as (cached) input context.
    let in1 = r1["usage"]["input_tokens"].as_u64().unwrap();
    let in3 = r3["usage"]["input_tokens"].as_u64().unwrap();
    assert!(in3 > r2["usage"]["total_tokens"].as_u64().unwrap() && in3 > in1);
    assert_eq!(
        r3["usage"]["input_tokens_details"]["cached_tokens"],
        r2["usage"]["total_tokens"]
    );
}

#[tokio::test]
async fn unknown_previous_response_id_is_vllms_404_before_streaming() {
    let sim = start_default().await;
    for stream in [false, true] {
        let r = post(sim.addr, "/v1/responses", json!({"model": "m1", "input": "x", "stream": stream, "previous_response_id": "resp_0123456789abcdef0123456789abcdef"})).await;
        assert_eq!(r.status, 404, "stream={stream}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.text(),
            not_found_body("resp_0123456789abcdef0123456789abcdef")
        );
    }
}

#[tokio::test]
async fn stores_are_per_instance() {
    let a = start(SimulateArgs::new("a", &["m"])).await;
    let b = start(SimulateArgs::new("b", &["m"])).await;
    let r = create_response(a.addr, json!({"model": "m", "input": "hi"})).await;
    let id = r["id"].as_str().unwrap();
    let on_b = post(
        b.addr,
        "/v1/responses",
        json!({"model": "m", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(on_b.status, 404);
    assert_eq!(on_b.header("x-simulator-instance"), Some("b"));
    assert_eq!(
        get(b.addr, &format!("/v1/responses/{id}")).await.status,
        404
    );
    let on_a = post(
        a.addr,
        "/v1/responses",
        json!({"model": "m", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(output_text(&on_a.json()), "[a/m] turn 2: more");
}

#[tokio::test]
async fn model_checks_match_vllm() {
    let sim = start_default().await;
    let r = post(
        sim.addr,
        "/v1/responses",
        json!({"model": "gpt-9", "input": "x"}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"The model `gpt-9` does not exist.","type":"NotFoundError","param":"model","code":404}}"#
    );
    // No model: served by the first model, like vLLM.
    let r = post(sim.addr, "/v1/responses", json!({"input": "x"})).await;
    assert_eq!(r.json()["model"], "m1");
    let r = post(
        sim.addr,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": []}),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn malformed_requests_get_openai_style_400s() {
    let sim = start_default().await;
    let deep = "[".repeat(100_000);
    let bodies: [&[u8]; 6] = [
        b"{not json",
        b"[1,2]",
        br#"{"model":7}"#,
        br#"{"stream":"yes"}"#,
        deep.as_bytes(),
        b"\xff\xfe",
    ];
    for body in bodies {
        for path in [
            "/v1/responses",
            "/v1/chat/completions",
            "/v1/responses/input_tokens",
            "/v1/responses/compact",
        ] {
            let r = send(sim.addr, "POST", path, Some(body)).await;
            assert_eq!(
                r.status,
                400,
                "{path} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(20)])
            );
            let v = r.json();
            assert_eq!(v["error"]["code"], 400);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }
    let both = post(
        sim.addr,
        "/v1/responses",
        json!({"input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}),
    )
    .await;
    assert_eq!(both.status, 400);
    let bg = post(
        sim.addr,
        "/v1/responses",
        json!({"input": "x", "background": true, "store": false}),
    )
    .await;
    assert_eq!(bg.status, 400);
}

#[tokio::test]
async fn every_valid_input_shape_is_accepted() {
    let sim = start_default().await;
    let cases = [
        (json!("plain"), "plain"),
        (json!([{"role": "user", "content": "easy"}]), "easy"),
        (
            json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "parts"}, {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "auto"}]}]),
            "parts",
        ),
        (
            json!([{"type": "message", "id": "msg_a", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "Calling", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
                {"type": "item_reference", "id": "msg_prev"}]),
            "sunny",
        ),
        (
            json!([{"role": "developer", "content": "rules"}]),
            "(no text)",
        ),
        (Value::Null, "(no text)"),
    ];
    for (input, echo) in cases {
        let r = post(
            sim.addr,
            "/v1/responses",
            json!({"model": "m1", "input": input, "tools": [{"type": "function", "name": "w"}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{input}");
        assert_eq!(output_text(&r.json()), format!("[a/m1] turn 1: {echo}"));
    }
}

#[tokio::test]
async fn stream_emits_the_real_event_sequence() {
    let mut args = SimulateArgs::new("s", &["m"]);
    args.stream_chunks = 5;
    let sim = start(args).await;
    let r = post(
        sim.addr,
        "/v1/responses",
        json!({"model": "m", "input": "stream me", "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-simulator-instance"), Some("s"));
    let events = parse_sse(r.text());
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds, expected);
    for (i, (kind, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], kind.as_str(), "event name equals data.type");
        assert_eq!(data["sequence_number"], i as u64, "0-based, monotonic");
    }
    let id = events[0].1["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[1].1["response"]["id"], id.as_str());
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["id"], id.as_str());
    assert_eq!(completed["status"], "completed");
    let item_id = completed["output"][0]["id"].as_str().unwrap();
    assert_eq!(events[2].1["item"]["id"], item_id);
    for (kind, data) in &events[3..events.len() - 2] {
        assert_eq!(
            data["item_id"], item_id,
            "{kind} relates to the response's message"
        );
    }
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "[s/m] turn 1: stream me");
    assert_eq!(events[9].1["text"], deltas.as_str());
    assert_eq!(output_text(completed), deltas);
    // The streamed response was stored and continues the chain.
    let g = get(sim.addr, &format!("/v1/responses/{id}")).await.json();
    assert_eq!(g["status"], "completed");
    let next = post(
        sim.addr,
        "/v1/responses",
        json!({"model": "m", "input": "again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(output_text(&next.json()), "[s/m] turn 2: again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_chunks_go_out_as_they_are_produced() {
    let mut args = SimulateArgs::new("s", &["m"]);
    args.chunk_delay_ms = 150;
    args.stream_chunks = 4;
    let sim = start(args).await;
    let t0 = Instant::now();
    let resp = open(
        sim.addr,
        "POST",
        "/v1/responses",
        Some(br#"{"model":"m","input":"x","stream":true}"#),
    )
    .await;
    let mut body = resp.into_body();
    let mut first_event_at = None;
    let mut seen = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
            if first_event_at.is_none() && seen.contains("response.created") {
                first_event_at = Some(t0.elapsed());
                // The id is readable long before generation ends.
                assert!(!seen.contains("response.completed"));
            }
        }
    }
    let total = t0.elapsed();
    let first = first_event_at.expect("saw response.created");
    assert!(
        total >= Duration::from_millis(600),
        "4 chunks x 150 ms, took {total:?}"
    );
    assert!(
        first < Duration::from_millis(400),
        "created arrived after {first:?}"
    );
    assert!(seen.trim_end().ends_with('}') && seen.contains("response.completed"));
}

#[tokio::test]
async fn background_response_completes_later_and_can_be_cancelled() {
    let mut args = SimulateArgs::new("bg", &["m"]);
    args.background_delay_ms = 100;
    let sim = start(args).await;
    let r = create_response(
        sim.addr,
        json!({"model": "m", "input": "later", "background": true}),
    )
    .await;
    assert_eq!(r["status"], "queued");
    assert_eq!(r["background"], true);
    assert_eq!(r["output"], json!([]));
    let id = r["id"].as_str().unwrap().to_owned();
    let now = get(sim.addr, &format!("/v1/responses/{id}")).await.json();
    assert!(
        now["status"] == "queued" || now["status"] == "in_progress",
        "{}",
        now["status"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let done = get(sim.addr, &format!("/v1/responses/{id}")).await.json();
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(&done), "[bg/m] turn 1: later");
    // A finished response cannot be cancelled (vLLM: "Cannot cancel a synchronous response.").
    let c = post(sim.addr, &format!("/v1/responses/{id}/cancel"), json!({})).await;
    assert_eq!(c.status, 400);

    let r = create_response(
        sim.addr,
        json!({"model": "m", "input": "stop", "background": true}),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_owned();
    let c = send(
        sim.addr,
        "POST",
        &format!("/v1/responses/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = get(sim.addr, &format!("/v1/responses/{id}")).await.json();
    assert_eq!(
        after["status"], "cancelled",
        "completion must not override a cancel"
    );
    let c = send(
        sim.addr,
        "POST",
        "/v1/responses/resp_00000000000000000000000000000000/cancel",
        None,
    )
    .await;
    assert_eq!(c.status, 404);
    assert_eq!(
        c.text(),
        not_found_body("resp_00000000000000000000000000000000")
    );
}

#[tokio::test]
async fn get_with_stream_replays_events_after_a_cursor() {
    let mut args = SimulateArgs::new("r", &["m"]);
    args.background_delay_ms = 50;
    let sim = start(args).await;
    let r = create_response(
        sim.addr,
        json!({"model": "m", "input": "replay", "background": true}),
    )
    .await;
    let id = r["id"].as_str().unwrap();
    // Waits for the background response to finish, then replays it.
    let all = parse_sse(
        get(sim.addr, &format!("/v1/responses/{id}?stream=true"))
            .await
            .text(),
    );
    assert_eq!(all.first().unwrap().0, "response.created");
    assert_eq!(all.last().unwrap().0, "response.completed");
    assert_eq!(all.last().unwrap().1["response"]["id"], id);
    let tail = parse_sse(
        get(
            sim.addr,
            &format!("/v1/responses/{id}?stream=true&starting_after=3"),
        )
        .await
        .text(),
    );
    assert_eq!(tail.len(), all.len() - 4);
    assert_eq!(tail[0].1["sequence_number"], 4);
}

#[tokio::test]
async fn store_false_is_not_stored() {
    let sim = start_default().await;
    for stream in [false, true] {
        let r = post(
            sim.addr,
            "/v1/responses",
            json!({"model": "m1", "input": "x", "store": false, "stream": stream}),
        )
        .await;
        assert_eq!(r.status, 200);
        let id = if stream {
            parse_sse(r.text())[0].1["response"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            r.json()["id"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            get(sim.addr, &format!("/v1/responses/{id}")).await.status,
            404
        );
        let next = post(
            sim.addr,
            "/v1/responses",
            json!({"model": "m1", "input": "y", "previous_response_id": id}),
        )
        .await;
        assert_eq!(next.status, 404);
    }
}

#[tokio::test]
async fn delete_then_get_is_404() {
    let sim = start_default().await;
    let id = create_response(sim.addr, json!({"model": "m1", "input": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = send(sim.addr, "DELETE", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(d.status, 200);
    assert_eq!(
        d.json(),
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    let g = get(sim.addr, &format!("/v1/responses/{id}")).await;
    assert_eq!(g.status, 404);
    assert_eq!(g.text(), not_found_body(&id));
    assert_eq!(
        send(sim.addr, "DELETE", &format!("/v1/responses/{id}"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        get(sim.addr, &format!("/v1/responses/{id}/input_items"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn input_items_lists_the_stored_input() {
    let sim = start_default().await;
    let input = json!([{"role": "user", "content": "first"}, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}]);
    let id = create_response(sim.addr, json!({"model": "m1", "input": input})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let desc = get(sim.addr, &format!("/v1/responses/{id}/input_items"))
        .await
        .json();
    assert_eq!(desc["object"], "list");
    assert_eq!(desc["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        desc["data"][0]["content"][0]["text"], "second",
        "newest first by default"
    );
    assert_eq!(desc["data"][1]["content"][0]["type"], "input_text");
    assert_eq!(desc["has_more"], false);
    let asc = get(
        sim.addr,
        &format!("/v1/responses/{id}/input_items?order=asc&limit=1"),
    )
    .await
    .json();
    assert_eq!(asc["data"][0]["content"][0]["text"], "first");
    assert_eq!(asc["has_more"], true);
    assert_eq!(
        asc["first_id"], desc["last_id"],
        "ids are stable across listings"
    );
}

#[tokio::test]
async fn input_tokens_counts_input_and_chain() {
    let sim = start_default().await;
    let r = post(
        sim.addr,
        "/v1/responses/input_tokens",
        json!({"model": "m1", "input": "abcdefgh"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"object": "response.input_tokens", "input_tokens": 2})
    );
    let prev = create_response(sim.addr, json!({"model": "m1", "input": "abcdefgh"})).await;
    let with_prev = post(
        sim.addr,
        "/v1/responses/input_tokens",
        json!({"model": "m1", "input": "abcdefgh", "previous_response_id": prev["id"]}),
    )
    .await
    .json();
    assert_eq!(
        with_prev["input_tokens"].as_u64().unwrap(),
        2 + prev["usage"]["total_tokens"].as_u64().unwrap()
    );
    let missing = post(
        sim.addr,
        "/v1/responses/input_tokens",
        json!({"input": "x", "previous_response_id": "resp_nope"}),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), not_found_body("resp_nope"));
}

#[tokio::test]
async fn compact_returns_a_stored_compaction_that_continues_the_chain() {
    let sim = start_default().await;
    let r1 = create_response(sim.addr, json!({"model": "m1", "input": "one"})).await;
    let r2 = create_response(
        sim.addr,
        json!({"model": "m1", "input": "two", "previous_response_id": r1["id"]}),
    )
    .await;
    let c = post(
        sim.addr,
        "/v1/responses/compact",
        json!({"model": "m1", "previous_response_id": r2["id"]}),
    )
    .await;
    assert_eq!(c.status, 200);
    let c = c.json();
    assert_eq!(c["object"], "response.compaction");
    assert_ne!(c["id"], r2["id"]);
    assert_eq!(c["output"][0]["type"], "compaction");
    assert!(c["output"][0]["id"].as_str().unwrap().starts_with("cmp_"));
    assert!(c["output"][0]["encrypted_content"].is_string());
    assert_eq!(
        get(
            sim.addr,
            &format!("/v1/responses/{}", c["id"].as_str().unwrap())
        )
        .await
        .json(),
        c
    );
    let r3 = create_response(
        sim.addr,
        json!({"model": "m1", "input": "three", "previous_response_id": c["id"]}),
    )
    .await;
    assert_eq!(output_text(&r3), "[a/m1] turn 3: three");
    let missing = post(
        sim.addr,
        "/v1/responses/compact",
        json!({"model": "m1", "previous_response_id": "resp_gone"}),
    )
    .await;
    assert_eq!(missing.text(), not_found_body("resp_gone"));
}

#[tokio::test]
async fn conversations_hold_items_and_count_turns() {
    let sim = start_default().await;
    let conv = post(
        sim.addr,
        "/v1/conversations",
        json!({"metadata": {"k": "v"}, "items": [{"role": "user", "content": "seed"}]}),
    )
    .await
    .json();
    let cid = conv["id"].as_str().unwrap().to_owned();
    assert!(cid.starts_with("conv_"));
    assert_eq!(conv["object"], "conversation");
    assert_eq!(conv["metadata"], json!({"k": "v"}));
    let r1 = create_response(
        sim.addr,
        json!({"model": "m1", "input": "hi", "conversation": cid}),
    )
    .await;
    let r2 = create_response(
        sim.addr,
        json!({"model": "m1", "input": "again", "conversation": {"id": cid}}),
    )
    .await;
    assert_eq!(output_text(&r1), "[a/m1] turn 1: hi");
    assert_eq!(output_text(&r2), "[a/m1] turn 2: again");
    assert_eq!(r2["conversation"], json!({"id": cid}));
    let items = get(
        sim.addr,
        &format!("/v1/conversations/{cid}/items?order=asc"),
    )
    .await
    .json();
    let texts: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["content"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "seed",
            "hi",
            "[a/m1] turn 1: hi",
            "again",
            "[a/m1] turn 2: again"
        ]
    );
    let added = post(sim.addr, &format!("/v1/conversations/{cid}/items"), json!({"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "extra"}]}]})).await.json();
    let item_id = added["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        get(
            sim.addr,
            &format!("/v1/conversations/{cid}/items/{item_id}")
        )
        .await
        .json()["content"][0]["text"],
        "extra"
    );
    assert_eq!(
        send(
            sim.addr,
            "DELETE",
            &format!("/v1/conversations/{cid}/items/{item_id}"),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            sim.addr,
            &format!("/v1/conversations/{cid}/items/{item_id}")
        )
        .await
        .status,
        404
    );
    assert_eq!(
        get(sim.addr, &format!("/v1/conversations/{cid}"))
            .await
            .json(),
        conv
    );
    let d = send(
        sim.addr,
        "DELETE",
        &format!("/v1/conversations/{cid}"),
        None,
    )
    .await
    .json();
    assert_eq!(
        d,
        json!({"id": cid, "object": "conversation.deleted", "deleted": true})
    );
    assert_eq!(
        get(sim.addr, &format!("/v1/conversations/{cid}"))
            .await
            .status,
        404
    );
    let gone = post(
        sim.addr,
        "/v1/responses",
        json!({"model": "m1", "input": "x", "conversation": cid}),
    )
    .await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["param"], "conversation");
}

#[tokio::test]
async fn chat_completions_json_and_sse_end_with_done() {
    let sim = start_default().await;
    let messages = json!([{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]);
    let r = post(
        sim.addr,
        "/v1/chat/completions",
        json!({"model": "m1", "messages": messages}),
    )
    .await
    .json();
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["choices"][0]["message"]["content"], "[a/m1] turn 2: q2");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let s = post(sim.addr, "/v1/chat/completions", json!({"model": "m1", "messages": messages, "stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert!(s.text().ends_with("data: [DONE]\n\n"));
    let events = parse_sse(s.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = &events[..events.len() - 1];
    assert!(
        chunks
            .iter()
            .all(|(_, c)| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0].1["id"])
    );
    assert_eq!(chunks[0].1["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "[a/m1] turn 2: q2");
    assert_eq!(
        chunks[chunks.len() - 2].1["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks.last().unwrap().1["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let missing = post(sim.addr, "/v1/chat/completions", json!({"model": "m1"})).await;
    assert_eq!(missing.status, 400);
}

#[tokio::test]
async fn models_health_and_unknown_paths() {
    let sim = start_default().await;
    let m = get(sim.addr, "/v1/models").await.json();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    let h = get(sim.addr, "/_simulator/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["instance"], "a");
    let nf = get(sim.addr, "/v2/nothing").await;
    assert_eq!(nf.status, 404);
    assert_eq!(nf.header("x-simulator-instance"), Some("a"));
    assert_eq!(nf.json()["error"]["code"], 404);
    let wrong_method = send(sim.addr, "PUT", "/v1/responses", Some(b"{}")).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("x-simulator-instance"), Some("a"));
    assert_eq!(
        wrong_method.header("x-received-body-sha256"),
        Some(sha256_hex(b"{}").as_str())
    );
}

#[tokio::test]
async fn stores_are_bounded() {
    let mut args = SimulateArgs::new("a", &["m"]);
    args.max_stored = 2;
    let sim = start(args).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = create_response(sim.addr, json!({"model": "m", "input": format!("n{i}")})).await;
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        get(sim.addr, &format!("/v1/responses/{}", ids[0]))
            .await
            .status,
        404,
        "oldest evicted"
    );
    assert_eq!(
        get(sim.addr, &format!("/v1/responses/{}", ids[2]))
            .await
            .status,
        200
    );
    assert_eq!(
        get(sim.addr, "/_simulator/health").await.json()["stored_responses"],
        2
    );
}

#[test]
fn cli_flags_parse_with_documented_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let a = Cli::try_parse_from(["x", "--models", "a,b"]).unwrap().args;
    assert_eq!(a.listen, "127.0.0.1:8101");
    assert_eq!(a.instance, "sim");
    assert_eq!(a.models, ["a", "b"]);
    assert_eq!(
        (a.chunk_delay_ms, a.stream_chunks, a.background_delay_ms),
        (0, 4, 50)
    );
    let b = Cli::try_parse_from([
        "x",
        "--listen",
        "127.0.0.1:0",
        "--instance",
        "sim-code",
        "--models",
        "code-model",
        "--chunk-delay-ms",
        "5",
        "--stream-chunks",
        "9",
        "--background-delay-ms",
        "7",
    ])
    .unwrap()
    .args;
    assert_eq!(
        (
            b.instance.as_str(),
            b.chunk_delay_ms,
            b.stream_chunks,
            b.background_delay_ms
        ),
        ("sim-code", 5, 9, 7)
    );
    assert!(Cli::try_parse_from(["x"]).is_err(), "--models is required");
    assert!(SimulateArgs::new("a", &[" "]).config().is_err());
}
