//! The shared affinity store against a real `redis-server` (Debian's package; scripts/test installs
//! it): two router replicas share what they learn, a Redis outage costs no request, and sharing
//! resumes when Redis is back.

use std::time::{Duration, Instant};

use responses_router::store::{RedisStore, Store};
use responses_router_core::affinity::{Location, MemoryStore};

#[path = "support/processes.rs"]
mod processes;

use processes::{RedisServer, free_port};

fn replica(port: u16) -> RedisStore {
    let ttl = Duration::from_secs(60);
    RedisStore::new(
        &format!("redis://127.0.0.1:{port}/"),
        "test:",
        MemoryStore::new(1000, ttl),
        ttl,
    )
    .unwrap()
}

fn at(cluster: &str, host: Option<&str>) -> Location {
    Location {
        cluster: cluster.into(),
        host: host.map(str::to_owned),
    }
}

#[tokio::test]
async fn replicas_share_learned_affinity_and_survive_a_redis_outage() {
    let port = free_port();
    let mut redis = RedisServer::start(port);
    let (a, b) = (replica(port), replica(port));

    a.record("resp_1", at("stories", Some("10.0.0.2:8000")))
        .await;
    assert_eq!(
        b.lookup("resp_1").await,
        Some(at("stories", Some("10.0.0.2:8000"))),
        "learned on A, known on B"
    );
    assert_eq!(b.lookup("resp_unknown").await, None);
    assert!(!a.degraded() && !b.degraded());

    // Redis goes away: nothing fails or hangs; each replica keeps what it knows.
    drop(redis);
    let started = Instant::now();
    a.record("resp_2", at("code", None)).await;
    assert_eq!(
        a.lookup("resp_2").await,
        Some(at("code", None)),
        "local knowledge still answers"
    );
    assert_eq!(
        b.lookup("resp_2").await,
        None,
        "not shared while Redis is down"
    );
    assert_eq!(
        b.lookup("resp_1").await,
        Some(at("stories", Some("10.0.0.2:8000"))),
        "cached locally"
    );
    assert!(a.degraded() && b.degraded());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );

    // Redis is back (empty, as after a restart): sharing resumes for what is learned from now on.
    redis = RedisServer::start(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a.record("resp_3", at("general", None)).await;
        if b.lookup("resp_3").await == Some(at("general", None)) {
            break;
        }
        assert!(Instant::now() < deadline, "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a.degraded() && !b.degraded());
    drop(redis);
}
