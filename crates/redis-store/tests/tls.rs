//! Redis over TLS against a real `redis-server --tls-port` (and a TLS Redis Cluster), with
//! certificates made by tests/support/pki.sh: an ACL user whose password comes from a
//! file, a client certificate, and what a wrong CA, a wrong password or a bad file give: a clear
//! error and the degraded mode, never a crash.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use responses_router_core::affinity::{Location, MemoryStore};
use responses_router_core::config::{AffinityConfig, RedisConfig, RedisTlsConfig};
use responses_router_redis::{RedisSettings, Secrets, SharedStore, check};

#[path = "../../../tests/support/processes.rs"]
mod processes;

use processes::{RedisCluster, RedisServer, free_port, make_certificates};

/// Characters a URL would need escaped: in a file they need nothing.
const PASSWORD: &str = "s3cret/pass:with@odd#chars%";

fn path(dir: &Path, name: &str) -> Option<String> {
    Some(dir.join(name).to_string_lossy().into_owned())
}

/// A TLS-only redis-server that requires client certificates and the ACL user `router`.
fn tls_server(dir: &Path) -> (RedisServer, PathBuf) {
    let pki = make_certificates(&dir.join("pki"));
    let acl = dir.join("users.acl");
    std::fs::write(
        &acl,
        format!("user default off\nuser router on >{PASSWORD} ~* &* +@all\n"),
    )
    .unwrap();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let port = free_port();
    let server = RedisServer::start_tls(
        port,
        &pki,
        &[
            "--tls-auth-clients",
            "yes",
            "--aclfile",
            &acl.to_string_lossy(),
        ],
    );
    (server, pki)
}

fn tls_affinity(dir: &Path, pki: &Path, url: String) -> AffinityConfig {
    AffinityConfig {
        redis_url: Some(url),
        redis_key_prefix: "tls:".into(),
        redis: RedisConfig {
            username: Some("router".into()),
            password_file: path(dir, "password"),
            tls: RedisTlsConfig {
                ca_file: path(pki, "ca.crt"),
                cert_file: path(pki, "client.crt"),
                key_file: path(pki, "client.key"),
            },
            ..RedisConfig::default()
        },
        ..AffinityConfig::default()
    }
}

fn start(affinity: &AffinityConfig) -> SharedStore {
    let settings = RedisSettings::from_config(affinity)
        .unwrap_or_else(|issues| panic!("{issues:?}"))
        .unwrap();
    SharedStore::start(settings, MemoryStore::new(1000, Duration::from_secs(600))).unwrap()
}

async fn until_up(store: &SharedStore) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = store.check().await {
        assert!(Instant::now() < deadline, "never reachable: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn at(cluster: &str) -> Location {
    Location {
        cluster: cluster.into(),
        host: Some("10.0.0.9:8000".into()),
    }
}

#[tokio::test]
async fn tls_with_an_acl_user_a_password_file_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pki) = tls_server(dir.path());
    // By name (DNS SAN) and by address (IP SAN).
    for host in ["localhost", "127.0.0.1"] {
        let config = tls_affinity(
            dir.path(),
            &pki,
            format!("rediss://{host}:{}/", server.port),
        );
        let (a, b) = (start(&config), start(&config));
        until_up(&a).await;
        a.record(&format!("resp_{host}"), at("stories")).await;
        assert_eq!(b.lookup(&format!("resp_{host}")).await, Some(at("stories")));
        assert!(!a.degraded() && !b.degraded());
    }
}

#[tokio::test]
async fn a_wrong_ca_or_password_is_a_clear_error_and_the_degraded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pki) = tls_server(dir.path());
    let url = format!("rediss://localhost:{}/", server.port);

    let mut wrong_ca = tls_affinity(dir.path(), &pki, url.clone());
    wrong_ca.redis.tls.ca_file = path(&pki, "other-ca.crt");
    let store = start(&wrong_ca);
    let started = Instant::now();
    store.record("resp_1", at("code")).await;
    assert_eq!(
        store.lookup("resp_1").await,
        Some(at("code")),
        "memory still answers"
    );
    assert_eq!(store.lookup("resp_2").await, None);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let error = store.check().await.unwrap_err().to_string();
    eprintln!("wrong CA: {error}");
    assert!(error.starts_with("redis unreachable ("), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("affinity.redis.tls.ca_file"), "{error}");
    assert!(store.degraded());

    let mut wrong_password = tls_affinity(dir.path(), &pki, url.clone());
    std::fs::write(dir.path().join("wrong"), "not-it").unwrap();
    wrong_password.redis.password_file = path(dir.path(), "wrong");
    let store = start(&wrong_password);
    let error = loop {
        // The first attempt may still be connecting.
        match store.check().await {
            Err(e) if !e.to_string().contains("no answer within") => break e.to_string(),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eprintln!("wrong password: {error}");
    assert!(error.contains("password"), "{error}");

    // A client certificate from another CA: the server refuses the handshake.
    let mut foreign_client = tls_affinity(dir.path(), &pki, url);
    foreign_client.redis.tls.cert_file = path(&pki, "other-client.crt");
    foreign_client.redis.tls.key_file = path(&pki, "other-client.key");
    let store = start(&foreign_client);
    let error = loop {
        match store.check().await {
            Err(e) if !e.to_string().contains("no answer within") => break e.to_string(),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eprintln!("foreign client certificate: {error}");
    assert!(error.starts_with("redis unreachable ("), "{error}");
}

#[test]
fn credential_and_certificate_files_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_certificates(&dir.path().join("pki"));
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let mut config = tls_affinity(dir.path(), &pki, "rediss://localhost:6380".into());
    config.redis.password_file = path(dir.path(), "missing");
    config.redis.tls.ca_file = path(dir.path(), "garbage.pem");
    config.redis.tls.key_file = path(&pki, "other-client.key");
    let issues: Vec<String> = check(&config, Secrets::Read)
        .iter()
        .map(ToString::to_string)
        .collect();
    eprintln!("{issues:#?}");
    for expected in [
        "affinity.redis.password_file: cannot read",
        "affinity.redis.tls.ca_file: holds no PEM certificate",
        "affinity.redis.tls.key_file: does not go with cert_file",
    ] {
        assert!(
            issues.iter().any(|i| i.starts_with(expected)),
            "missing {expected:?} in {issues:#?}"
        );
    }
    // CI without the Secrets: the YAML alone is fine.
    assert!(check(&config, Secrets::Skip).is_empty());

    config.redis.password_file = path(dir.path(), "empty");
    config.redis.tls = RedisTlsConfig::default();
    config.redis.username = None;
    config.redis.username_env = Some("RESPONSES_ROUTER_TEST_NO_SUCH_VARIABLE".into());
    let issues: Vec<String> = check(&config, Secrets::Read)
        .iter()
        .map(ToString::to_string)
        .collect();
    for expected in [
        "affinity.redis.password_file: the password is empty",
        "affinity.redis.username_env: environment variable RESPONSES_ROUTER_TEST_NO_SUCH_VARIABLE",
    ] {
        assert!(
            issues.iter().any(|i| i.starts_with(expected)),
            "missing {expected:?} in {issues:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_with_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::up(dir.path(), &["--tls", "--acl"]);
    let pki = dir.path().join("pki");
    let cluster_config = |ca: &str| AffinityConfig {
        redis_key_prefix: "tls-cluster:".into(),
        redis: RedisConfig {
            cluster: true,
            nodes: vec![format!("rediss://127.0.0.1:{}", cluster.ports[1])],
            username: Some("router".into()),
            password_file: path(dir.path(), "password"),
            tls: RedisTlsConfig {
                ca_file: path(&pki, ca),
                cert_file: path(&pki, "client.crt"),
                key_file: path(&pki, "client.key"),
            },
            ..RedisConfig::default()
        },
        ..AffinityConfig::default()
    };
    let config = cluster_config("ca.crt");
    let (a, b) = (start(&config), start(&config));
    until_up(&a).await;
    until_up(&b).await;
    for i in 0..300 {
        a.record(&format!("resp_{i}"), at("stories")).await;
    }
    for i in 0..300 {
        assert_eq!(
            b.lookup(&format!("resp_{i}")).await,
            Some(at("stories")),
            "resp_{i}"
        );
    }
    let mut per_master = Vec::new();
    for node in 1..=6 {
        if cluster.cli(node, &["ROLE"]).lines().next() == Some("master") {
            per_master.push(cluster.cli(node, &["DBSIZE"]).parse::<usize>().unwrap());
        }
    }
    assert!(
        per_master.iter().all(|&n| n >= 60),
        "spread: {per_master:?}"
    );

    // The wrong CA: every node's own TLS error, named.
    let store = start(&cluster_config("other-ca.crt"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let error = store.check().await.unwrap_err().to_string();
    eprintln!("cluster, wrong CA: {error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert_eq!(store.lookup("resp_1").await, None);
}
