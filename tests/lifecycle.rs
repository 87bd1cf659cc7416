//! The `serve` process over its lifetime, as operators drive it: routing config reloads (SIGHUP
//! and file change; invalid files rejected), and SIGTERM letting a stream in flight finish.

mod common;
#[path = "support/processes.rs"]
mod processes;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use processes::{RedisServer, free_port, make_certificates};

const CODE: &str = "default_model: general-model\nmodels:\n  - { name: general-model, clusters: [{ name: general }] }\n  - { name: code-model, clusters: [{ name: code }] }\ncategories:\n  - { name: coding, model: code-model, keywords: [python] }\n";
const GENERAL: &str = "default_model: general-model\nmodels:\n  - { name: general-model, clusters: [{ name: general }] }\n  - { name: code-model, clusters: [{ name: code }] }\ncategories:\n  - { name: coding, model: general-model, keywords: [python] }\n";

struct Server {
    child: Child,
    grpc: u16,
    admin: u16,
    log: std::path::PathBuf,
}

impl Server {
    fn start(config: &Path, poll_seconds: u64) -> Server {
        Server::start_with(
            config,
            &["--config-poll-seconds", &poll_seconds.to_string()],
            &[],
        )
    }

    /// Starts `serve` with extra arguments and environment; stderr (the log) goes to a file.
    fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let (grpc, admin) = (free_port(), free_port());
        let log = config.with_extension(format!("{grpc}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_responses-router"))
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--drain-seconds",
                "3",
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            grpc,
            admin,
            log,
        };
        server.wait_for(|m| m.contains("responses_router_config_generation 1"));
        server
    }

    fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// `GET path` on the admin port: (status, body); (0, "") if nothing answers.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.admin)) else {
            return (0, String::new());
        };
        let _ = conn.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes());
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn wait_for(&self, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check(&self.metrics()) {
            assert!(
                Instant::now() < deadline,
                "timed out; metrics:\n{}",
                self.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn cluster_for(&self, text: &str) -> String {
        let mut client =
            ExternalProcessorClient::connect(format!("http://127.0.0.1:{}", self.grpc))
                .await
                .unwrap();
        let mut s = Stream::open(&mut client).await;
        s.send(headers("POST", "/v1/responses", &[], false))
            .await
            .unwrap();
        let payload = format!(r#"{{"model":"auto","input":"{text}"}}"#);
        let reply = s.send(body(payload.as_bytes(), true)).await.unwrap();
        set_header(body_common(&reply), "x-router-cluster").unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_a_valid_config_and_rejects_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.yaml");
    std::fs::write(&path, CODE).unwrap();
    let server = Server::start(&path, 0);
    assert_eq!(server.cluster_for("python please").await, "code");

    std::fs::write(&path, GENERAL).unwrap();
    server.signal("HUP");
    server.wait_for(|m| m.contains("responses_router_config_generation 2"));
    assert_eq!(
        server.cluster_for("python please").await,
        "general",
        "the new config is in force"
    );

    std::fs::write(&path, "default_model: gone\nmodels: []\n").unwrap();
    server.signal("HUP");
    server
        .wait_for(|m| m.contains(r#"responses_router_config_reloads_total{result="rejected"} 1"#));
    assert!(
        server
            .metrics()
            .contains("responses_router_config_generation 2")
    );
    assert_eq!(
        server.cluster_for("python please").await,
        "general",
        "the old config stays"
    );
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.yaml");
    std::fs::write(&path, CODE).unwrap();
    let server = Server::start(&path, 1);
    // Kubernetes swaps a ConfigMap by renaming a new file into place.
    let next = dir.path().join("routing.yaml.new");
    std::fs::write(&next, GENERAL).unwrap();
    std::fs::rename(&next, &path).unwrap();
    server.wait_for(|m| m.contains("responses_router_config_generation 2"));
    assert_eq!(server.cluster_for("python please").await, "general");
}

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.yaml");
    std::fs::write(&path, CODE).unwrap();
    let mut server = Server::start(&path, 0);
    let mut client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let mut s = Stream::open(&mut client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();

    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The request that was mid-way still gets its decision.
    let reply = s
        .send(body(br#"{"model":"auto","input":"python"}"#, true))
        .await
        .unwrap();
    assert_eq!(
        set_header(body_common(&reply), "x-router-cluster").as_deref(),
        Some("code")
    );
    drop(s);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn readiness_follows_the_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.yaml");
    std::fs::write(&path, CODE).unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let env = [("RESPONSES_ROUTER__AFFINITY__REDIS_URL", url.as_str())];
    let redis = RedisServer::start(port);
    let strict = Server::start_with(&path, &["--ready-requires-store"], &env);
    let lenient = Server::start_with(&path, &[], &env);
    assert_eq!(strict.get("/readyz"), (200, "ready\n".to_owned()));
    assert!(
        strict
            .metrics()
            .contains("responses_router_affinity_store_up 1")
    );

    drop(redis);
    let (status, body) = strict.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis unreachable"), "{body}");
    let (status, body) = lenient.get("/readyz");
    assert_eq!(
        status, 200,
        "requests still succeed, so the lenient router stays ready"
    );
    assert!(body.starts_with("ready, degraded"), "{body}");
    assert!(
        lenient
            .metrics()
            .contains("responses_router_affinity_store_up 0")
    );
    assert_eq!(
        lenient.cluster_for("python").await,
        "code",
        "routing goes on without Redis"
    );

    let _redis = RedisServer::start(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while strict.get("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn redis_over_tls_with_credentials_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_certificates(&dir.path().join("pki"));
    let acl = dir.path().join("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser router on >pw-from-env ~* &* +@all\n",
    )
    .unwrap();
    let port = free_port();
    let _redis = RedisServer::start_tls(port, &pki, &["--aclfile", acl.to_str().unwrap()]);
    let routing = |ca: &str| {
        let path = dir.path().join(format!("routing-{ca}.yaml"));
        let ca = pki.join(ca);
        std::fs::write(
            &path,
            format!(
                "{CODE}affinity:\n  redis:\n    username_env: ROUTER_REDIS_USER\n    \
                 password_env: ROUTER_REDIS_PASSWORD\n    tls: {{ ca_file: {} }}\n",
                ca.display()
            ),
        )
        .unwrap();
        path
    };
    let url = format!("rediss://localhost:{port}/");
    let env = [
        ("RESPONSES_ROUTER__AFFINITY__REDIS_URL", url.as_str()),
        ("ROUTER_REDIS_USER", "router"),
        ("ROUTER_REDIS_PASSWORD", "pw-from-env"),
    ];
    let good = Server::start_with(&routing("ca.crt"), &[], &env);
    let deadline = Instant::now() + Duration::from_secs(10);
    while good.get("/readyz") != (200, "ready\n".to_owned()) {
        assert!(Instant::now() < deadline, "{:?}", good.get("/readyz"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = good.metrics();
    for series in [
        "responses_router_affinity_store_up 1",
        "responses_router_affinity_write_behind_queued_total 0",
        "responses_router_affinity_write_behind_length 0",
        "responses_router_affinity_reseeds_total 0",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // A wrong CA: the router serves on local knowledge and hashing, and says why.
    let wrong = Server::start_with(&routing("other-ca.crt"), &[], &env);
    let (status, body) = wrong.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready, degraded: redis unreachable ("),
        "{body}"
    );
    assert!(
        body.contains("UnknownIssuer") && body.contains("affinity.redis.tls.ca_file"),
        "{body}"
    );
    assert_eq!(wrong.cluster_for("python").await, "code", "routing goes on");

    // `validate` reads the variables too, unless told not to (CI without the Secrets).
    let validate = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_responses-router"));
        cmd.args(["validate", "--config", routing("ca.crt").to_str().unwrap()])
            .env("RESPONSES_ROUTER__AFFINITY__REDIS_URL", &url)
            .env_remove("ROUTER_REDIS_USER")
            .env_remove("ROUTER_REDIS_PASSWORD");
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().unwrap()
    };
    let out = validate(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("affinity.redis.username_env: environment variable ROUTER_REDIS_USER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("affinity.redis.password_env: environment variable ROUTER_REDIS_PASSWORD"),
        "{stderr}"
    );
    assert!(validate(true).status.success());
}

#[tokio::test]
async fn metrics_pass_promtool_and_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.yaml");
    std::fs::write(&path, CODE).unwrap();
    let server = Server::start_with(
        &path,
        &["--log-format", "json"],
        &[("RESPONSES_ROUTER_LOG", "debug")],
    );
    assert_eq!(server.cluster_for("python please").await, "code");
    let mut client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let mut s = Stream::open(&mut client).await;
    s.send(headers("POST", "/v1/responses", &[], false))
        .await
        .unwrap();
    s.send(body(b"{not json", true)).await.unwrap();

    let text = server.metrics();
    for expected in [
        r#"gen_ai_operation_name="responses.create",reason="category",gen_ai_request_model="code-model",cluster="code",category="coding""#,
        r#"responses_router_refusals_total{code="invalid_json"} 1"#,
        r#"responses_router_decision_duration_seconds_count{phase="request"}"#,
        "responses_router_request_body_bytes_count 1",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (scripts/test puts .cache/promtool/usr/bin there)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every log line is JSON; the request's lines carry Envoy's request id; no body text is logged.
    let log = std::fs::read_to_string(&server.log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let routed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "routed")
        .expect("a decision log line");
    assert_eq!(routed["fields"]["request_id"], "req-0001");
    assert_eq!(routed["fields"]["cluster"], "code");
    let refused = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("request refused"))
        })
        .expect("a refusal log line");
    assert_eq!(refused["fields"]["request_id"], "req-0001");
    assert!(
        !log.contains("python please"),
        "request bodies are never logged"
    );
}
