//! Who can reach the router, and over what: the health-only TCP port (health answers, ext_proc and
//! the RouterAdmin API are unknown there), and mTLS on the TCP listener (a client certificate from
//! a configured CA is required; certificates rotate without a restart). The certificates come
//! from tests/support/pki.sh (openssl, at test time).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use responses_router::api::pb::GetConfigRequest;
use responses_router::api::pb::router_admin_client::RouterAdminClient;
use responses_router::extproc::service::Listeners;
use responses_router::extproc::{RouterService, serve};
use responses_router::reload::SharedTable;
use responses_router::telemetry::Metrics;
use responses_router::tls::{ServerTls, TlsFiles};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// Serves a router on `listeners` until the returned sender is dropped.
fn spawn_router(listeners: Listeners, metrics: Arc<Metrics>) -> tokio::sync::oneshot::Sender<()> {
    let table = responses_router_core::config::from_yaml(ROUTING_YAML)
        .unwrap()
        .table;
    let service = RouterService::new(
        SharedTable::new(table),
        Arc::new(responses_router_core::affinity::NoStore),
        metrics,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(service, listeners, async move {
        let _ = stopped.await;
    }));
    stop
}

async fn tcp_listener() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn plaintext(port: u16) -> Endpoint {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

async fn uds_channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://router.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// One ext_proc exchange (the headers of `GET /v1/responses/{id}`, decided on headers alone):
/// the cluster the router picked.
async fn route(channel: Channel) -> Result<String, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(ProcessingRequest {
        request: Some(headers("GET", "/v1/responses/resp_1", &[], true)),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut replies = ExternalProcessorClient::new(channel)
        .process(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let reply = replies
        .message()
        .await?
        .ok_or_else(|| tonic::Status::aborted("no reply"))?;
    Ok(set_header(headers_common(&reply), "x-router-cluster").unwrap_or_default())
}

#[tokio::test]
async fn the_health_port_answers_health_and_refuses_ext_proc_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("router.sock");
    let (health_listener, port) = tcp_listener().await;
    let _stop = spawn_router(
        Listeners {
            uds: Some(Listeners::bind_uds(&socket).unwrap()),
            health: Some(health_listener),
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    );
    let tcp = plaintext(port).connect().await.unwrap();
    for service in ["", EXT_PROC] {
        assert_eq!(
            health(tcp.clone(), service).await.unwrap(),
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let refused = route(tcp.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let refused = RouterAdminClient::new(tcp.clone())
        .get_config(GetConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let refused = RouterAdminClient::new(tcp)
        .explain(responses_router::api::pb::ExplainRequest {
            method: "POST".into(),
            path: "/v1/responses".into(),
            body: br#"{"model":"auto","input":"rust"}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    // Envoy's side, the Unix socket, serves all three.
    let uds = uds_channel(socket).await;
    assert!(!route(uds.clone()).await.unwrap().is_empty());
    assert!(
        RouterAdminClient::new(uds.clone())
            .get_config(GetConfigRequest {})
            .await
            .is_ok()
    );
    assert_eq!(
        health(uds, EXT_PROC).await.unwrap(),
        ServingStatus::Serving as i32
    );
}

/// A fresh PKI from tests/support/pki.sh.
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pki.sh");
    let out = std::process::Command::new(script)
        .arg(dir.path())
        .output()
        .expect("tests/support/pki.sh runs (needs openssl)");
    assert!(
        out.status.success(),
        "pki.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A client of the TLS listener: trusts `ca` for the server's certificate and presents
/// `identity` (`name.crt`, `name.key` in `pki`), if any.
fn tls_client(pki: &Path, port: u16, ca: &[&str], identity: Option<&str>) -> Endpoint {
    let mut roots = Vec::new();
    for name in ca {
        roots.extend(std::fs::read(pki.join(format!("{name}.crt"))).unwrap());
    }
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(pki.join(format!("{name}.crt"))).unwrap(),
            std::fs::read(pki.join(format!("{name}.key"))).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

/// A new connection and one RPC on it. With TLS 1.3 the client finishes its handshake before the
/// server has checked the client's certificate, so a refused client may connect and only sees
/// the refusal on its first RPC: a check must make one.
async fn reaches(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    route(channel).await.map(drop).map_err(|e| format!("{e:?}"))
}

fn metric(metrics: &Metrics, series: &str) -> u64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn mtls_serves_clients_with_a_certificate_from_the_client_ca_only() {
    let pki = pki();
    let p = pki.path();
    let metrics = Arc::new(Metrics::default());
    let tls = ServerTls::load(
        TlsFiles {
            cert: p.join("server.crt"),
            key: p.join("server.key"),
            client_ca: p.join("ca.crt"),
        },
        Arc::clone(&metrics),
    )
    .unwrap();
    let (listener, port) = tcp_listener().await;
    let _stop = spawn_router(
        Listeners {
            tcp: Some(listener),
            tls: Some(tls),
            ..Default::default()
        },
        Arc::clone(&metrics),
    );

    let started = Instant::now();
    let ok = tls_client(p, port, &["ca"], Some("client"));
    reaches(ok.clone())
        .await
        .expect("a client with a certificate from the CA");
    eprintln!(
        "new mTLS connection + one ext_proc exchange: {:?}",
        started.elapsed()
    );
    // Health and the RouterAdmin API need the certificate too: they share the listener.
    let channel = ok.connect().await.unwrap();
    assert_eq!(
        health(channel.clone(), EXT_PROC).await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert!(
        RouterAdminClient::new(channel)
            .get_config(GetConfigRequest {})
            .await
            .is_ok()
    );

    let refused = [
        ("no client certificate", tls_client(p, port, &["ca"], None)),
        (
            "a client certificate from another CA",
            tls_client(p, port, &["ca"], Some("other-client")),
        ),
        ("plaintext HTTP/2", plaintext(port)),
    ];
    for (who, endpoint) in refused {
        let err = reaches(endpoint).await.expect_err(who);
        eprintln!("{who}: refused: {err}");
    }
    // A client that does not trust the router's CA gives up on its own.
    assert!(
        tls_client(p, port, &["other-ca"], Some("client"))
            .connect()
            .await
            .is_err()
    );
    // Refusals are counted (the plaintext client's bytes are not a TLS hello either).
    let failed = r#"responses_router_tls_handshakes_total{result="failed"}"#;
    assert!(metric(&metrics, failed) >= 3, "{}", metrics.encode());
    assert!(
        metric(
            &metrics,
            r#"responses_router_tls_handshakes_total{result="ok"}"#
        ) >= 2
    );
}

#[tokio::test]
async fn unusable_certificate_files_are_refused_at_start() {
    let pki = pki();
    let p = pki.path();
    let load = |cert: &str, key: &str, ca: &str| {
        ServerTls::load(
            TlsFiles {
                cert: p.join(cert),
                key: p.join(key),
                client_ca: p.join(ca),
            },
            Arc::new(Metrics::default()),
        )
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(load("server.crt", "server.key", "ca.crt"), None);
    let mismatch = load("server.crt", "other-server.key", "ca.crt").unwrap();
    assert!(mismatch.contains("server.crt and"), "{mismatch}");
    let missing = load("server.crt", "server.key", "nope.crt").unwrap();
    assert!(
        missing.contains("cannot read") && missing.contains("nope.crt"),
        "{missing}"
    );
    let not_a_ca = load("server.crt", "server.key", "server.key").unwrap();
    assert!(
        not_a_ca.contains("server.key: no PEM CERTIFICATE"),
        "{not_a_ca}"
    );
    let no_key = load("server.crt", "server.crt", "ca.crt").unwrap();
    assert!(no_key.contains("no PEM private key"), "{no_key}");
}

/// A directory laid out as kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`, `..data` a
/// symlink to the current version's directory, swapped atomically by a rename.
struct SecretVolume {
    root: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(root: PathBuf) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        SecretVolume { root, version: 0 }
    }

    /// Publishes a new version: `cert`, `key` and the concatenation of `cas` (files of `pki`).
    fn publish(&mut self, pki: &Path, cert: &str, key: &str, cas: &[&str]) {
        self.version += 1;
        let dir = self.root.join(format!("..v{}", self.version));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(pki.join(cert), dir.join("tls.crt")).unwrap();
        std::fs::copy(pki.join(key), dir.join("tls.key")).unwrap();
        let bundle: Vec<u8> = cas
            .iter()
            .flat_map(|ca| std::fs::read(pki.join(ca)).unwrap())
            .collect();
        std::fs::write(dir.join("ca.crt"), bundle).unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.root.join("tls.crt"),
            key: self.root.join("tls.key"),
            client_ca: self.root.join("ca.crt"),
        }
    }
}

/// Waits until `endpoint` reaches the router; returns how long that took.
async fn until_reaches(endpoint: &Endpoint) -> Duration {
    let started = Instant::now();
    loop {
        match reaches(endpoint.clone()).await {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                panic!("still refused after 10 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_without_a_restart() {
    let pki = pki();
    let p = pki.path();
    let mut volume = SecretVolume::new(p.join("secret"));
    volume.publish(p, "server.crt", "server.key", &["ca.crt"]);
    let metrics = Arc::new(Metrics::default());
    let tls = ServerTls::load(volume.files(), Arc::clone(&metrics)).unwrap();
    let poll = Duration::from_millis(100);
    tokio::spawn(Arc::clone(&tls).watch(Some(poll)));
    let (listener, port) = tcp_listener().await;
    let _stop = spawn_router(
        Listeners {
            tcp: Some(listener),
            tls: Some(tls),
            ..Default::default()
        },
        Arc::clone(&metrics),
    );
    let old = tls_client(p, port, &["ca"], Some("client"));
    let new = tls_client(p, port, &["other-ca"], Some("other-client"));
    // Trusts both server CAs, presents the old client certificate.
    let old_client_cert = tls_client(p, port, &["ca", "other-ca"], Some("client"));
    let new_client_cert = tls_client(p, port, &["ca", "other-ca"], Some("other-client"));
    reaches(old.clone()).await.unwrap();
    reaches(new_client_cert.clone())
        .await
        .expect_err("other CA not trusted yet");
    // A connection opened before any rotation.
    let kept = old.connect().await.unwrap();
    route(kept.clone()).await.unwrap();

    // Step 1 of a CA rotation: trust both client CAs.
    volume.publish(p, "server.crt", "server.key", &["ca.crt", "other-ca.crt"]);
    let pickup = until_reaches(&new_client_cert).await;
    eprintln!("client CA bundle picked up after {pickup:?} (poll {poll:?})");
    reaches(old.clone())
        .await
        .expect("the old CA is still trusted");

    // A broken publication (a key that is not the certificate's) is refused; the certificates
    // in force stay.
    volume.publish(p, "server.crt", "other-server.key", &["ca.crt"]);
    let rejected = r#"responses_router_tls_reloads_total{result="rejected"}"#;
    let started = Instant::now();
    while metric(&metrics, rejected) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never rejected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reaches(old.clone())
        .await
        .expect("old certificates still in force");
    reaches(new_client_cert.clone())
        .await
        .expect("the bundle is still in force");

    // Step 2: the new server certificate and only the new client CA.
    volume.publish(p, "other-server.crt", "other-server.key", &["other-ca.crt"]);
    let pickup = until_reaches(&new).await;
    eprintln!("new server certificate and client CA picked up after {pickup:?} (poll {poll:?})");
    let err = reaches(old)
        .await
        .expect_err("the old server CA no longer verifies");
    eprintln!("a client trusting only the old CA: {err}");
    reaches(old_client_cert)
        .await
        .expect_err("a client certificate from the old CA is refused");
    // Connections accepted before keep their session.
    route(kept).await.expect("an open connection keeps working");
    assert!(
        metric(
            &metrics,
            r#"responses_router_tls_reloads_total{result="ok"}"#
        ) >= 3,
        "start + two rotations:\n{}",
        metrics.encode()
    );
}
