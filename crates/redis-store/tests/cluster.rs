//! A real local Redis Cluster (3 masters, each with a replica, on loopback; made by
//! tests/support/redis/cluster.sh with `redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create`): keys spread over the masters, and two replicas keep sharing
//! through a master that dies, then through one that hangs, each failing over to its replica
//! under load. The measured figures are printed (`--nocapture`) and quoted in RELIABILITY.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use responses_router_core::affinity::{Location, MemoryStore, id_key};
use responses_router_core::config::{AffinityConfig, RedisConfig};
use responses_router_redis::{RedisSettings, SharedStore, keys};

#[path = "../../../tests/support/processes.rs"]
mod processes;

use processes::RedisCluster;

/// The store's log on the test's output when RUST_LOG is set.
fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

const PREFIX: &str = "cluster-test:";
/// The slots of the master the failovers hit (`cluster.sh failover` picks the owner of slot 0;
/// `--cluster create` gives it 0-5460).
const VICTIM_LAST_SLOT: u16 = 5460;

fn affinity(cluster: &RedisCluster) -> AffinityConfig {
    AffinityConfig {
        redis_key_prefix: PREFIX.into(),
        redis: RedisConfig {
            cluster: true,
            // Two seeds; the others are learned from CLUSTER SLOTS.
            nodes: cluster.ports[..2]
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            ..RedisConfig::default()
        },
        ..AffinityConfig::default()
    }
}

async fn connected(affinity: &AffinityConfig) -> SharedStore {
    let settings = RedisSettings::from_config(affinity).unwrap().unwrap();
    assert!(settings.is_cluster());
    let store = SharedStore::start(
        settings,
        MemoryStore::new(100_000, Duration::from_secs(600)),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.check().await.is_err() {
        assert!(Instant::now() < deadline, "cluster never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store
}

fn at(i: usize) -> Location {
    Location {
        cluster: "stories".into(),
        host: Some(format!("10.0.0.{}:8000", i % 200)),
    }
}

fn victim(id: &str) -> bool {
    keys::slot(keys::redis_key(PREFIX, id_key(id)).as_bytes()) <= VICTIM_LAST_SLOT
}

/// One operation of the load: A records a new id, B (which never saw it) looks it up at once.
struct Op {
    at: Duration,
    victim: bool,
    shared: bool,
}

/// What one failover under load looked like.
#[derive(Debug)]
struct Outcome {
    /// Port of the master that failed.
    victim: u16,
    promoted_ms: u64,
    ops: usize,
    victim_ops: usize,
    victim_unshared: usize,
    other_unshared: usize,
    /// From the kill to the last victim-slot id that B could not see at once.
    victim_unshared_until_ms: Option<u128>,
}

/// Runs the load for `secs`, fails the slot-0 master over (`how`) after 2 s, and reports.
async fn failover_under_load(
    cluster: &Arc<RedisCluster>,
    a: &Arc<SharedStore>,
    b: &Arc<SharedStore>,
    how: &'static str,
    phase: &str,
    secs: u64,
) -> (Outcome, Vec<String>) {
    let started = Instant::now();
    let killer = {
        let cluster = Arc::clone(cluster);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let killed = started.elapsed();
            let out = tokio::task::spawn_blocking(move || {
                let out = cluster.run("failover", &[how]);
                (cluster, out)
            })
            .await
            .unwrap();
            (killed, out.1)
        })
    };
    let mut ops = Vec::new();
    let mut ids = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(secs) {
        i += 1;
        let id = format!("{phase}_{i}");
        let at_ = started.elapsed();
        a.record(&id, at(i)).await;
        let shared = b.lookup(&id).await == Some(at(i));
        ops.push(Op {
            at: at_,
            victim: victim(&id),
            shared,
        });
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (killed, said) = killer.await.unwrap();
    let promoted_ms = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("promoted_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cluster.sh failover said {said:?}"));
    let victim = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("victim="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cluster.sh failover said {said:?}"));
    let outcome = Outcome {
        victim,
        promoted_ms,
        ops: ops.len(),
        victim_ops: ops.iter().filter(|o| o.victim).count(),
        victim_unshared: ops.iter().filter(|o| o.victim && !o.shared).count(),
        other_unshared: ops.iter().filter(|o| !o.victim && !o.shared).count(),
        victim_unshared_until_ms: ops
            .iter()
            .filter(|o| o.victim && !o.shared && o.at >= killed)
            .map(|o| (o.at - killed).as_millis())
            .max(),
    };
    let before_kill = ops.iter().filter(|o| o.at < killed && !o.shared).count();
    assert_eq!(before_kill, 0, "{phase}: unshared ids before the failover");
    (outcome, ids)
}

/// Every id is found by a fresh replica once the write-behind queues are empty: the failover
/// lost nothing that was learned during it.
async fn nothing_lost(config: &AffinityConfig, a: &SharedStore, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.counters().snapshot().queue_len > 0 {
        assert!(
            Instant::now() < deadline,
            "write-behind queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = connected(config).await;
    let mut missing = 0;
    for id in ids {
        if c.lookup(id).await.is_none() {
            missing += 1;
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} ids never reached the cluster",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_keys_and_keeps_sharing_through_failovers() {
    log_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(RedisCluster::up(dir.path(), &["--node-timeout", "2000"]));
    let config = affinity(&cluster);
    let a = Arc::new(connected(&config).await);
    let b = Arc::new(connected(&config).await);

    // Keys spread over the three masters' slots.
    for i in 0..3000 {
        a.record(&format!("spread_{i}"), at(i)).await;
    }
    let mut per_master = Vec::new();
    for node in 1..=6 {
        if cluster.cli(node, &["ROLE"]).lines().next() == Some("master") {
            per_master.push(cluster.cli(node, &["DBSIZE"]).parse::<usize>().unwrap());
        }
    }
    eprintln!("3000 ids (+ markers) per master: {per_master:?}");
    assert_eq!(per_master.len(), 3);
    assert!(
        per_master.iter().all(|&n| (850..1200).contains(&n)),
        "{per_master:?}"
    );
    assert_eq!(b.lookup("spread_7").await, Some(at(7)));

    // A master dies (SIGKILL): redis-rs follows the promotion by itself.
    let (killed, ids) = failover_under_load(&cluster, &a, &b, "sigkill", "kill", 9).await;
    eprintln!("master killed: {killed:?}");
    nothing_lost(&config, &a, &ids).await;
    assert!(
        killed.victim_unshared > 0,
        "the failover was not seen: {killed:?}"
    );
    // Per-range back-off: the other masters' keys stay shared (a range at the victim's edge
    // holds a few of their slots).
    assert!(
        killed.other_unshared * 20 <= killed.ops - killed.victim_ops,
        "{killed:?}"
    );
    let until = killed.victim_unshared_until_ms.unwrap();
    assert!(
        until <= u128::from(killed.promoted_ms) + 2500,
        "sharing resumed {until} ms after the kill, promotion at {} ms",
        killed.promoted_ms
    );

    // The dead node comes back as a replica; then the new master hangs (SIGSTOP: connections
    // accepted, never answered). Only the store's topology watch gets its slots back before it
    // answers again; it stays frozen until the load is over.
    let n = (killed.victim - cluster.ports[0] + 1).to_string();
    cluster.run("restart", &[&n]);
    let changes = a.counters().snapshot().topology_changes;
    let (hung, ids) = failover_under_load(&cluster, &a, &b, "sigstop", "hang", 9).await;
    eprintln!("master hung: {hung:?}");
    let moved = a.counters().snapshot().topology_changes - changes;
    let until = hung.victim_unshared_until_ms.unwrap();
    assert!(moved >= 1, "the slot map never moved");
    assert!(
        until <= u128::from(hung.promoted_ms) + 3000,
        "sharing resumed {until} ms after the hang, promotion at {} ms",
        hung.promoted_ms
    );
    assert!(
        hung.other_unshared * 20 <= hung.ops - hung.victim_ops,
        "{hung:?}"
    );
    nothing_lost(&config, &a, &ids).await;
    cluster.run("resume", &[]);
}
