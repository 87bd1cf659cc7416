//! A real `redis-server` goes away and comes back: what replicas learned before and during the
//! outage is shared afterwards, whether Redis returns empty (re-seed from memory) or with its
//! data (write-behind only), within the documented bounds; and no request waits on a dead Redis.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use responses_router_core::affinity::{Location, MemoryStore};
use responses_router_core::config::AffinityConfig;
use responses_router_redis::{RedisSettings, SharedStore, Stats, Tuning};

#[path = "../../../tests/support/processes.rs"]
mod processes;

use processes::{RedisServer, free_port};

/// The documented timings, shortened so the tests take seconds (the command budget stays).
fn fast() -> Tuning {
    Tuning {
        backoff: Duration::from_millis(200),
        tick: Duration::from_millis(50),
        marker_every: Duration::from_millis(200),
        ..Tuning::default()
    }
}

fn affinity(port: u16) -> AffinityConfig {
    AffinityConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        redis_key_prefix: "test:".into(),
        ..AffinityConfig::default()
    }
}

fn replica(affinity: &AffinityConfig) -> SharedStore {
    let mut settings = RedisSettings::from_config(affinity).unwrap().unwrap();
    settings.tuning = fast();
    SharedStore::start(
        settings,
        MemoryStore::new(100_000, Duration::from_secs(600)),
    )
    .unwrap()
}

/// A replica whose connection is up (the first command after a start also connects, which can
/// take longer than the request budget on a loaded machine: that command's id would be queued
/// rather than written at once, which is not what these tests are about).
async fn connected(affinity: &AffinityConfig) -> SharedStore {
    let store = replica(affinity);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.check().await.is_err() {
        assert!(Instant::now() < deadline, "redis never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

fn at(cluster: &str) -> Location {
    Location {
        cluster: cluster.into(),
        host: Some("10.0.0.2:8000".into()),
    }
}

fn stats(store: &SharedStore) -> Stats {
    store.counters().snapshot()
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Every id in `ids` is found by `store` where it was recorded.
async fn finds_all(store: &SharedStore, ids: &[(String, Location)]) {
    let mut missing = Vec::new();
    for (id, location) in ids {
        if store.lookup(id).await.as_ref() != Some(location) {
            missing.push(id.as_str());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} not shared: {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
}

async fn record(
    store: &SharedStore,
    prefix: &str,
    n: usize,
    cluster: &str,
) -> Vec<(String, Location)> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}_{i}");
        store.record(&id, at(cluster)).await;
        ids.push((id, at(cluster)));
    }
    ids
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Two replicas learn ids before and during an outage; Redis returns (`persist`: from its
/// append-only file; else empty). Then a third replica, with an empty memory (a restarted pod),
/// must find every one of them.
async fn outage(persist: Option<&Path>) -> (Stats, Stats) {
    let port = free_port();
    let aof_dir = persist.map(|d| d.to_string_lossy().into_owned());
    let aof: Vec<&str> = match &aof_dir {
        Some(dir) => vec![
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ],
        None => vec![],
    };
    let mut redis = RedisServer::start_with(port, &aof);
    let config = affinity(port);
    let (a, b) = (connected(&config).await, connected(&config).await);
    let before_a = record(&a, "before_a", 100, "stories").await;
    let before_b = record(&b, "before_b", 100, "code").await;
    finds_all(&b, &before_a[..10]).await;
    // Let both replicas see the markers once.
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(redis);
    let started = Instant::now();
    let during_a = record(&a, "during_a", 150, "general").await;
    let during_b = record(&b, "during_b", 50, "stories").await;
    assert_eq!(
        b.lookup("during_a_0").await,
        None,
        "not shared while Redis is down"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no request waits on a dead Redis: {:?}",
        started.elapsed()
    );
    assert!(a.degraded() && b.degraded());
    assert!(stats(&a).queued >= 150, "{:?}", stats(&a));
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis = RedisServer::start_with(port, &aof);
    let back = Instant::now();
    for store in [&a, &b] {
        wait_until("replay done", Duration::from_secs(20), || {
            let s = stats(store);
            !store.degraded() && s.queue_len == 0 && !s.reseeding
        })
        .await;
    }
    eprintln!("replayed {:?} after Redis returned", back.elapsed());
    let c = connected(&config).await;
    for ids in [&before_a, &before_b, &during_a, &during_b] {
        finds_all(&c, ids).await;
    }
    drop(redis);
    (stats(&a), stats(&b))
}

#[tokio::test]
async fn ids_from_before_and_during_an_outage_are_shared_after_redis_returns_empty() {
    let (a, b) = outage(None).await;
    eprintln!("A: {a:?}\nB: {b:?}");
    // Each replica found the markers gone once and wrote its memory back.
    assert_eq!((a.reseeds, b.reseeds), (1, 1));
    // The queue held exactly the ids learned during the outage; the re-seeds wrote back the 200
    // from before it (each once: `SET NX` where the other replica was quicker).
    assert_eq!((a.flushed, b.flushed), (150, 50));
    assert_eq!(a.reseeded + b.reseeded, 200, "{a:?} {b:?}");
    assert_eq!((a.dropped, b.dropped), (0, 0));
}

#[tokio::test]
async fn redis_back_with_its_data_needs_only_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = outage(Some(dir.path())).await;
    eprintln!("A: {a:?}\nB: {b:?}");
    assert_eq!(
        (a.reseeds, b.reseeds),
        (0, 0),
        "the markers survived: no re-seed"
    );
    assert_eq!(
        (a.flushed, b.flushed),
        (150, 50),
        "exactly the ids learned during the outage"
    );
}

#[tokio::test]
async fn the_write_behind_queue_keeps_the_newest_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let aof_dir = dir.path().to_string_lossy().into_owned();
    let aof = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &aof_dir,
    ];
    let port = free_port();
    let mut redis = RedisServer::start_with(port, &aof);
    let mut config = affinity(port);
    config.redis.write_behind_capacity = 10;
    let a = connected(&config).await;
    a.record("warm", at("code")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(redis);
    let during = record(&a, "during", 25, "code").await;
    let s = stats(&a);
    assert_eq!((s.queued, s.dropped, s.queue_len), (25, 15, 10));
    redis = RedisServer::start_with(port, &aof);
    wait_until("queue written", Duration::from_secs(10), || {
        stats(&a).queue_len == 0
    })
    .await;
    let c = connected(&config).await;
    finds_all(&c, &during[15..]).await;
    assert_eq!(c.lookup("during_0").await, None, "the oldest were dropped");
    drop(redis);
}

#[tokio::test]
async fn a_reseed_is_paced_and_never_overwrites() {
    let port = free_port();
    let _redis = RedisServer::start(port);
    let mut config = affinity(port);
    config.redis.replay_per_second = 1000;
    let a = connected(&config).await;
    let ids = record(&a, "held", 1500, "code").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Emptied while the router runs (a FLUSHALL, or a failover to a replica that never synced).
    assert_eq!(redis_cli(port, &["FLUSHALL"]), "OK");
    // Recorded after the loss, elsewhere: the re-seed must not overwrite it.
    redis_cli(port, &["SET", &key_of("held_0"), "moved"]);
    wait_until("re-seed begins", Duration::from_secs(5), || {
        stats(&a).reseeding
    })
    .await;
    let took = wait_until("re-seed ends", Duration::from_secs(10), || {
        !stats(&a).reseeding
    })
    .await;
    eprintln!("re-seeded 1500 ids at 1000/s in {took:?}");
    assert!(took >= Duration::from_millis(1000), "not paced: {took:?}");
    assert_eq!(stats(&a).reseeded, 1499);
    assert_eq!(redis_cli(port, &["GET", &key_of("held_0")]), "moved");
    let c = connected(&config).await;
    finds_all(&c, &ids[1..]).await;
}

/// The Redis key of an id (prefix `test:`), as the store writes it.
fn key_of(id: &str) -> String {
    responses_router_redis::keys::redis_key("test:", responses_router_core::affinity::id_key(id))
}

#[tokio::test]
async fn no_request_waits_on_a_dead_or_hung_redis() {
    // Nothing listens on port 1: every command fails at once.
    let dead = replica(&affinity(1));
    let started = Instant::now();
    dead.record("resp_local", at("code")).await;
    assert!(dead.degraded());
    assert_eq!(
        dead.lookup("resp_local").await,
        Some(at("code")),
        "local knowledge answers"
    );
    assert_eq!(dead.lookup("resp_elsewhere").await, None);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        dead.check()
            .await
            .unwrap_err()
            .to_string()
            .starts_with("redis unreachable")
    );

    // A hung server (SIGSTOP: connections accepted, never answered) costs at most the budget.
    let port = free_port();
    let redis = RedisServer::start(port);
    let hung = connected(&affinity(port)).await;
    hung.record("warm", at("code")).await;
    let pid = redis_cli(port, &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_owned();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(hung.lookup(&format!("unknown_{i}")).await, None);
        slowest = slowest.max(started.elapsed());
    }
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    // The budget is 50 ms; the margin is for a loaded test machine.
    eprintln!("slowest lookup against a hung Redis: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(150),
        "a lookup waited {slowest:?}"
    );
    assert!(stats(&hung).timeouts >= 1);
    drop(redis);
}
