//! The connection to Redis: one server, or a Redis Cluster, each node through a
//! [`ConnectionManager`] of its own (reconnecting in the background).
//!
//! **Why the store routes cluster commands itself** rather than through redis-rs's cluster
//! client (`cluster-async`), measured with a real 6-node cluster failing over under load
//! (crates/redis-store/tests/cluster.rs):
//! - redis-rs 1.8.1's cluster connection could stop answering altogether when a master died:
//!   its slot refresh waits for the connection-map lock that a background reconnect holds, and
//!   that reconnect is not polled while the refresh runs. Every command to every master then
//!   timed out, in some runs for good (long after the promotion), so one dead master switched
//!   sharing off for all keys.
//! - It never refreshes its slots on timeouts, so a *hung* master (a frozen VM, a lost Kubernetes
//!   node: TCP accepted, never answered or reset) kept its slots until it answered again, long
//!   after its replica had taken over.
//!
//! Here each node has its own connection, so a dead or hung node delays only the commands for
//! its own slots. The slot map comes from `CLUSTER SLOTS`, asked of every known node in parallel
//! (the view most nodes report wins): at start, every 10 s, and at once (at most every tick)
//! after a `MOVED`, a connection error or a timeout. So a promotion is picked up within a tick or
//! two of the nodes agreeing on it, whether the old master is dead or hung. A `MOVED` is also
//! followed at once (one retry at the node it names) and an `ASK` with `ASKING`, so keys keep
//! working while slots migrate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, ServerErrorKind, TlsCertificates,
    Value,
};

use crate::settings::{Client, Tuning};

/// How long one node may take to answer `CLUSTER SLOTS` during a refresh.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the slot map is refreshed while all is well.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(10);

/// A cluster node: host (as the cluster names it) and port.
pub(crate) type Node = (String, u16);

pub(crate) enum Backend {
    Standalone(ConnectionManager),
    Cluster(Box<ClusterBackend>),
}

/// How to reach any node of a cluster: the seeds' scheme, credentials and certificates.
pub(crate) struct NodeTemplate {
    pub(crate) tls: Option<TlsCertificates>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl NodeTemplate {
    /// Whether a client for `node` can be built (the settings are usable).
    pub(crate) fn check(&self, node: &Node) -> RedisResult<()> {
        self.client(node).map(|_| ())
    }

    fn client(&self, (host, port): &Node) -> RedisResult<redis::Client> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("{scheme}://{host}:{port}/"))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
    }
}

pub(crate) struct ClusterBackend {
    template: NodeTemplate,
    seeds: Vec<Node>,
    config: ConnectionManagerConfig,
    conns: Mutex<HashMap<Node, ConnectionManager>>,
    slots: ArcSwap<SlotMap>,
    /// Something suggests the slot map is out of date: refresh at the next tick.
    stale: AtomicBool,
}

/// Which master serves which slots (sorted by first slot), and every node listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotMap {
    masters: Vec<(u16, u16, Node)>,
    nodes: Vec<Node>,
}

impl SlotMap {
    fn master_of(&self, slot: u16) -> Option<&Node> {
        let i = self.masters.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, node) = self.masters.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(node)
    }

    fn describe(&self) -> String {
        self.masters
            .iter()
            .map(|(a, b, (h, p))| format!("{a}-{b}: {h}:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn connection_config(tuning: &Tuning) -> ConnectionManagerConfig {
    // The connection's own response timeout is the background one: the request path's tighter
    // budget is an outer timeout around each of its commands, and dropping a command that ran
    // out of time leaves the multiplexed connection usable. A tight connection-level timeout
    // would also fail the background replay whenever one fsync of a Redis with
    // `appendfsync always` takes a little longer.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(tuning.connect_timeout))
        .set_response_timeout(Some(tuning.background_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
}

impl Backend {
    /// Connects lazily: the router starts and serves while Redis is still down, and connections
    /// are made (and remade) in the background.
    pub(crate) fn connect(client: Client, tuning: &Tuning) -> RedisResult<Backend> {
        let config = connection_config(tuning);
        Ok(match client {
            Client::Standalone(client) => {
                Backend::Standalone(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Client::Cluster { seeds, template } => Backend::Cluster(Box::new(ClusterBackend {
                template,
                seeds,
                config,
                conns: Mutex::new(HashMap::new()),
                slots: ArcSwap::from_pointee(SlotMap::default()),
                stale: AtomicBool::new(true),
            })),
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Runs one command about a key in cluster slot `slot` (ignored by a standalone Redis).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd, slot: u16) -> RedisResult<T> {
        match self {
            Backend::Standalone(manager) => cmd.query_async(&mut manager.clone()).await,
            Backend::Cluster(cluster) => cluster.query(cmd, slot).await,
        }
    }

    /// `PING`: the server, or every master of a cluster (all must answer).
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        match self {
            Backend::Standalone(manager) => redis::cmd("PING")
                .query_async::<Value>(&mut manager.clone())
                .await
                .map(|_| ()),
            Backend::Cluster(cluster) => cluster.ping().await,
        }
    }

    /// Notes that a command failed (a cluster then refreshes its slot map).
    pub(crate) fn failed(&self) {
        if let Backend::Cluster(cluster) = self {
            cluster.stale.store(true, Ordering::Relaxed);
        }
    }
}

impl ClusterBackend {
    /// The connection to `node`, made (lazily) on first use.
    fn conn(&self, node: &Node) -> RedisResult<ConnectionManager> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = conns.get(node) {
            return Ok(conn.clone());
        }
        let conn = ConnectionManager::new_lazy_with_config(
            self.template.client(node)?,
            self.config.clone(),
        )?;
        conns.insert(node.clone(), conn.clone());
        Ok(conn)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd, slot: u16) -> RedisResult<T> {
        let Some(node) = self.slots.load().master_of(slot).cloned() else {
            self.stale.store(true, Ordering::Relaxed);
            return Err(no_slot_map(slot));
        };
        let result = cmd.query_async::<T>(&mut self.conn(&node)?).await;
        let Err(e) = result else {
            return result;
        };
        let redirect = match e.kind() {
            ErrorKind::Server(ServerErrorKind::Moved) => Some(false),
            ErrorKind::Server(ServerErrorKind::Ask) => Some(true),
            _ => None,
        };
        self.stale.store(true, Ordering::Relaxed);
        let (Some(asking), Some(target)) = (redirect, e.redirect_node().and_then(parse_node))
        else {
            return Err(e);
        };
        let mut conn = self.conn(&target)?;
        if asking {
            // The slot is migrating and this key already moved: ask the target for it once.
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").ignore().add_command(cmd.clone());
            pipe.query_async::<(T,)>(&mut conn)
                .await
                .map(|(value,)| value)
        } else {
            cmd.query_async::<T>(&mut conn).await
        }
    }

    async fn ping(&self) -> RedisResult<()> {
        let slots = self.slots.load();
        if slots.masters.is_empty() {
            self.stale.store(true, Ordering::Relaxed);
            return Err(no_slot_map(0));
        }
        let mut masters: Vec<&Node> = slots.masters.iter().map(|(_, _, n)| n).collect();
        masters.sort();
        masters.dedup();
        let pings = masters.iter().map(|node| async move {
            let mut conn = self.conn(node)?;
            redis::cmd("PING")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| with_node(e, node))
        });
        for result in join_all(pings).await {
            if let Err(e) = result {
                self.stale.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// One tick of the slot-map upkeep: refreshes it when it may be out of date (or every
    /// [`TOPOLOGY_REFRESH`]); returns the new map's description when it changed, or the error
    /// every node gave when none answered.
    pub(crate) async fn watch(&self, next_refresh: &mut Instant) -> Watched {
        let now = Instant::now();
        if !self.stale.swap(false, Ordering::Relaxed) && now < *next_refresh {
            return Watched::Nothing;
        }
        *next_refresh = now + TOPOLOGY_REFRESH;
        let current = self.slots.load_full();
        let mut ask: Vec<Node> = current.nodes.clone();
        ask.extend(self.seeds.iter().cloned());
        ask.sort();
        ask.dedup();
        let answers = join_all(ask.iter().map(|node| async move {
            let mut conn = self.conn(node)?;
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            match tokio::time::timeout(PROBE_TIMEOUT, cmd.query_async::<Value>(&mut conn)).await {
                Ok(Ok(value)) => parse_slots(&value, &node.0).ok_or_else(|| {
                    RedisError::from((ErrorKind::Parse, "unexpected CLUSTER SLOTS answer"))
                }),
                Ok(Err(e)) => Err(with_node(e, node)),
                Err(_) => Err(RedisError::from((
                    ErrorKind::Io,
                    "no answer to CLUSTER SLOTS",
                    format!("{}:{} within {PROBE_TIMEOUT:?}", node.0, node.1),
                ))),
            }
        }))
        .await;
        // The view most nodes report: a node that just came back may still hold an old one.
        let mut views: Vec<(SlotMap, usize)> = Vec::new();
        let mut errors = Vec::new();
        for answer in answers {
            match answer {
                Ok(view) if !view.masters.is_empty() => {
                    match views.iter_mut().find(|(v, _)| *v == view) {
                        Some((_, n)) => *n += 1,
                        None => views.push((view, 1)),
                    }
                }
                Ok(_) => {
                    errors.push("a node reports no slots (cluster not created yet?)".to_owned())
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let Some((best, _)) = views.into_iter().max_by_key(|(_, n)| *n) else {
            self.stale.store(true, Ordering::Relaxed);
            return Watched::Unreachable(errors.join("; "));
        };
        if best == *current {
            return Watched::Nothing;
        }
        let moved = best.masters != current.masters;
        let description = best.describe();
        let first = current.masters.is_empty();
        self.slots.store(Arc::new(best));
        if moved {
            Watched::Changed { first, description }
        } else {
            Watched::Nothing // Only the list of nodes changed (a replica left or joined).
        }
    }
}

/// What the slot-map upkeep found.
pub(crate) enum Watched {
    Nothing,
    /// The map changed (`first`: the first one since the start).
    Changed {
        first: bool,
        description: String,
    },
    /// No node answered; why, node by node.
    Unreachable(String),
}

fn no_slot_map(slot: u16) -> RedisError {
    RedisError::from((
        ErrorKind::ClusterConnectionNotFound,
        "no cluster slot map yet",
        format!("slot {slot}: no node has answered CLUSTER SLOTS"),
    ))
}

/// The error, naming the node it came from.
fn with_node(e: RedisError, (host, port): &Node) -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "redis cluster node",
        format!("{host}:{port}: {e}"),
    ))
}

/// `host:port` of a redirect (`[::1]:7000` or `::1:7000` for IPv6).
fn parse_node(addr: (&str, u16)) -> Option<Node> {
    let (host, port) = addr.0.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// `CLUSTER SLOTS`: `[[first, last, [host, port, id, ..], replicas..], ..]`. An empty host means
/// "the node you asked" (`asked`).
fn parse_slots(value: &Value, asked: &str) -> Option<SlotMap> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let (mut masters, mut nodes) = (Vec::new(), Vec::new());
    for range in ranges {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last))) = (range.first(), range.get(1))
        else {
            return None;
        };
        let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
        for (i, node) in range.iter().skip(2).enumerate() {
            let Value::Array(node) = node else {
                return None;
            };
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return None;
            };
            let node = (host, u16::try_from(*port).ok()?);
            if i == 0 {
                masters.push((first, last, node.clone()));
            }
            nodes.push(node);
        }
    }
    masters.sort();
    nodes.sort();
    nodes.dedup();
    Some(SlotMap { masters, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_parse_and_route() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 6379),
                node("10.0.0.4", 6379),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 6379)]),
        ]);
        let map = parse_slots(&answer, "10.0.0.1").unwrap();
        assert_eq!(map.masters.len(), 2);
        assert_eq!(map.nodes.len(), 3);
        assert_eq!(map.master_of(0), Some(&("10.0.0.1".to_owned(), 6379)));
        assert_eq!(map.master_of(5460), Some(&("10.0.0.1".to_owned(), 6379)));
        assert_eq!(map.master_of(5461), Some(&("10.0.0.2".to_owned(), 6379)));
        assert_eq!(map.master_of(16383), Some(&("10.0.0.2".to_owned(), 6379)));
        assert_eq!(parse_slots(&Value::Int(1), "x"), None);
        let gap = SlotMap {
            masters: vec![(100, 200, ("a".into(), 1))],
            nodes: vec![],
        };
        assert_eq!(gap.master_of(99), None);
        assert_eq!(gap.master_of(201), None);
    }

    #[test]
    fn redirects_name_a_node() {
        assert_eq!(
            parse_node(("10.0.0.1:7000", 1)),
            Some(("10.0.0.1".into(), 7000))
        );
        assert_eq!(parse_node(("[::1]:7000", 1)), Some(("::1".into(), 7000)));
        assert_eq!(parse_node(("nonsense", 1)), None);
    }
}
