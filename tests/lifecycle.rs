//! The `serve` process over its lifetime, as operators drive it: routing config reloads (SIGHUP
//! and file change; invalid files rejected), and SIGTERM letting a stream in flight finish.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;

const CODE: &str = "default_model: general-model\nmodels:\n  - { name: general-model, clusters: [{ name: general }] }\n  - { name: code-model, clusters: [{ name: code }] }\ncategories:\n  - { name: coding, model: code-model, keywords: [python] }\n";
const GENERAL: &str = "default_model: general-model\nmodels:\n  - { name: general-model, clusters: [{ name: general }] }\n  - { name: code-model, clusters: [{ name: code }] }\ncategories:\n  - { name: coding, model: general-model, keywords: [python] }\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    grpc: u16,
    admin: u16,
}

impl Server {
    fn start(config: &Path, poll_seconds: u64) -> Server {
        let (grpc, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_responses-router"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .args([
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(["--config-poll-seconds", &poll_seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, grpc, admin };
        server.wait_for(|m| m.contains("responses_router_config_generation 1"));
        server
    }

    fn metrics(&self) -> String {
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.admin)) else {
            return String::new();
        };
        let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n");
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        text
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
