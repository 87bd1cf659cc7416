//! The routing YAML as written by users. Keys are snake_case (environment overrides are
//! lower-cased by the `config` crate, so mixed case would not override cleanly), lists rather than
//! maps keep the user's order, and unknown keys are errors so a typo never silently does nothing.
//!
//! One file holds two kinds of settings: [`Settings`] (the body limit and the affinity store) are
//! read once at start, because listeners, gRPC message limits and store connections are built from
//! them; everything else (models, clusters, categories, classification) is the routing table,
//! which a reload replaces.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigIssue;

/// The settings a running router keeps until it restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Largest request body the router buffers; above it the client gets 413.
    pub max_body_bytes: usize,
    /// Learning where responses live, and where that knowledge is kept.
    pub affinity: AffinityConfig,
}

impl Settings {
    /// The problems in these settings, each naming its field.
    pub(super) fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut issue = |field: &str, problem: String| {
            issues.push(ConfigIssue {
                field: field.to_owned(),
                problem,
            })
        };
        if self.max_body_bytes == 0 {
            issue("max_body_bytes", "must be greater than 0".into());
        }
        if self.affinity.capacity == 0 {
            issue("affinity.capacity", "must be greater than 0".into());
        }
        self.affinity.validate_redis(&mut issue);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// The names of the settings that differ between `self` and `other`.
    pub fn differences(&self, other: &Settings) -> Vec<&'static str> {
        let (a, b) = (&self.affinity, &other.affinity);
        [
            (
                "max_body_bytes",
                self.max_body_bytes != other.max_body_bytes,
            ),
            ("affinity.learn", a.learn != b.learn),
            ("affinity.capacity", a.capacity != b.capacity),
            ("affinity.ttl_seconds", a.ttl_seconds != b.ttl_seconds),
            ("affinity.redis_url", a.redis_url != b.redis_url),
            (
                "affinity.redis_key_prefix",
                a.redis_key_prefix != b.redis_key_prefix,
            ),
            ("affinity.redis", a.redis != b.redis),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

/// The whole routing YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Largest request body the router buffers; above it the client gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Model names that ask the router to choose (`"auto"`).
    #[serde(default = "default_auto_models")]
    pub auto_models: Vec<String>,
    /// The model for automatic requests that match no category, and whose clusters take
    /// pass-through traffic (`GET /v1/models`, unknown paths).
    pub default_model: String,
    /// What an explicit model that no cluster serves gets.
    #[serde(default)]
    pub unknown_model: UnknownModelPolicy,
    /// Which text is classified.
    #[serde(default)]
    pub classification: ClassificationConfig,
    /// Tell clients the decision: responses carry `x-router-model`, `x-router-reason` and
    /// `x-router-category` (never a host). Handy locally; off by default.
    #[serde(default)]
    pub expose_decision: bool,
    /// Models and the Envoy clusters that serve them.
    pub models: Vec<ModelConfig>,
    /// Optional per-cluster settings; a cluster listed here must serve some model.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Categories, in priority order (the first wins a tie).
    #[serde(default)]
    pub categories: Vec<CategoryConfig>,
    /// Learning where responses live.
    #[serde(default)]
    pub affinity: AffinityConfig,
}

impl RoutingConfig {
    /// The part of this config that is read only at start.
    pub fn settings(&self) -> Settings {
        Settings {
            max_body_bytes: self.max_body_bytes,
            affinity: self.affinity.clone(),
        }
    }
}

/// Learned affinity: which responses are remembered, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// Record `response id -> cluster (and host)` from responses (needs the observer ext_proc
    /// filter in Envoy). Off: continuations are placed by hash only.
    #[serde(default = "default_true")]
    pub learn: bool,
    /// Most ids remembered; the oldest are forgotten first.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// How long an id is remembered, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Redis shared by all router replicas (`redis://host:port/db`, `rediss://` for TLS, or one
    /// seed node of a Redis Cluster with `redis.cluster: true`); unset (and no `redis.nodes`):
    /// this process only.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys, so several deployments can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_key_prefix: String,
    /// How Redis is reached: cluster, credentials, TLS, and the replay after an outage.
    #[serde(default)]
    pub redis: RedisConfig,
}

/// How the router reaches the shared Redis (`affinity.redis`). Credentials never appear here in
/// clear text: they are read from a file (a mounted Kubernetes Secret) or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The addresses (`redis_url` or `nodes`) are seed nodes of a Redis Cluster: the router
    /// learns the other nodes from them and spreads its keys over the cluster's slots.
    #[serde(default)]
    pub cluster: bool,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or `rediss://host:port`), instead of
    /// `redis_url`; one reachable seed is enough.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// ACL user name (not a secret), ...
    #[serde(default)]
    pub username: Option<String>,
    /// ... or the file holding it, ...
    #[serde(default)]
    pub username_file: Option<String>,
    /// ... or the environment variable holding it.
    #[serde(default)]
    pub username_env: Option<String>,
    /// The file holding the password (a mounted Secret; one trailing newline is ignored), ...
    #[serde(default)]
    pub password_file: Option<String>,
    /// ... or the environment variable holding it.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Certificates for `rediss://`.
    #[serde(default)]
    pub tls: RedisTlsConfig,
    /// Most ids learned while Redis is unreachable that are kept to be written once it answers
    /// again (16 bytes each); the oldest are dropped first. 0: none are kept.
    #[serde(default = "default_write_behind_capacity")]
    pub write_behind_capacity: usize,
    /// Most background writes per second per router (the write-behind queue, then the re-seed of
    /// a Redis that came back empty), so a fleet's catch-up cannot swamp Redis. 0: no replay.
    #[serde(default = "default_replay_per_second")]
    pub replay_per_second: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            cluster: false,
            nodes: Vec::new(),
            username: None,
            username_file: None,
            username_env: None,
            password_file: None,
            password_env: None,
            tls: RedisTlsConfig::default(),
            write_behind_capacity: default_write_behind_capacity(),
            replay_per_second: default_replay_per_second(),
        }
    }
}

/// Certificates for Redis over TLS (`rediss://`). Without `ca_file` the server's certificate must
/// chain to a public root (Mozilla's list, compiled in), as managed Redis services' do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM bundle of the CAs the server's certificate must chain to (replaces the public roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (chain), for servers that verify clients (`tls-auth-clients yes`).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}

impl RedisTlsConfig {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// URL schemes of a Redis address.
const REDIS_SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

impl AffinityConfig {
    /// The Redis addresses configured: `redis_url` or `redis.nodes` (empty: no Redis).
    pub fn redis_addresses(&self) -> Vec<&str> {
        match &self.redis_url {
            Some(url) => vec![url.as_str()],
            None => self.redis.nodes.iter().map(String::as_str).collect(),
        }
    }

    /// Whether replicas share what they learn through Redis.
    pub fn shares(&self) -> bool {
        !self.redis_addresses().is_empty()
    }

    /// The problems of the Redis settings that the YAML alone shows (what needs the files,
    /// the environment or a Redis client is checked by the front-end).
    fn validate_redis(&self, issue: &mut impl FnMut(&str, String)) {
        let redis = &self.redis;
        if self.redis_url.is_some() && !redis.nodes.is_empty() {
            issue(
                "affinity.redis.nodes",
                "give either affinity.redis_url or affinity.redis.nodes, not both".into(),
            );
        }
        if !redis.nodes.is_empty() && !redis.cluster {
            issue(
                "affinity.redis.nodes",
                "seed nodes are for a Redis Cluster: set affinity.redis.cluster: true (a \
                 standalone Redis has one address: affinity.redis_url)"
                    .into(),
            );
        }
        let addresses = self.redis_addresses();
        if addresses.is_empty() && *redis != RedisConfig::default() {
            issue(
                "affinity.redis",
                "set, but there is no Redis to use it for: give affinity.redis_url (or \
                 affinity.redis.nodes with cluster: true)"
                    .into(),
            );
        }
        let field = |i: usize| {
            if self.redis_url.is_some() {
                "affinity.redis_url".to_owned()
            } else {
                format!("affinity.redis.nodes[{i}]")
            }
        };
        for (i, url) in addresses.iter().enumerate() {
            if !REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
                issue(
                    &field(i),
                    format!(
                        "not a usable Redis URL: {url:?} does not start with one of {}",
                        REDIS_SCHEMES.join(", ")
                    ),
                );
            } else if redis.cluster
                && !(url.starts_with("redis://") || url.starts_with("rediss://"))
            {
                issue(
                    &field(i),
                    format!("a Redis Cluster node is reached over TCP: {url:?} is a Unix socket"),
                );
            }
        }
        let tls: Vec<bool> = addresses
            .iter()
            .map(|u| u.starts_with("rediss://"))
            .collect();
        if tls.contains(&true) && tls.contains(&false) {
            issue(
                "affinity.redis.nodes",
                "mixes rediss:// and redis://: every node of a cluster is reached the same way"
                    .into(),
            );
        }
        if redis.tls.is_set() && !addresses.is_empty() && !tls.contains(&true) {
            issue(
                "affinity.redis.tls",
                "certificates are for TLS: the Redis address must start with rediss://".into(),
            );
        }
        if redis.tls.cert_file.is_some() != redis.tls.key_file.is_some() {
            issue(
                "affinity.redis.tls",
                "a client certificate needs both cert_file and key_file".into(),
            );
        }
        let users: Vec<&str> = [
            ("username", redis.username.is_some()),
            ("username_file", redis.username_file.is_some()),
            ("username_env", redis.username_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if users.len() > 1 {
            issue(
                "affinity.redis",
                format!("give one of {}, not several", users.join(", ")),
            );
        }
        if redis.password_file.is_some() && redis.password_env.is_some() {
            issue(
                "affinity.redis",
                "give one of password_file, password_env, not both".into(),
            );
        }
        if redis.cluster && self.redis_key_prefix.contains('{') {
            issue(
                "affinity.redis_key_prefix",
                format!(
                    "{:?} holds a `{{`: in a Redis Cluster a hash tag would put every key in one \
                     slot (one master); use a prefix without braces",
                    self.redis_key_prefix
                ),
            );
        }
    }
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            learn: true,
            capacity: default_capacity(),
            ttl_seconds: default_ttl(),
            redis_url: None,
            redis_key_prefix: default_redis_prefix(),
            redis: RedisConfig::default(),
        }
    }
}

/// Policy for an explicit model no cluster serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownModelPolicy {
    /// Answer 404 `model_not_found`, as OpenAI does.
    #[default]
    Reject,
    /// Rewrite to `default_model` and route there.
    Default,
}

/// Classification settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationConfig {
    /// Also classify `instructions` and system/developer messages (off: only the user's turn).
    #[serde(default)]
    pub include_instructions: bool,
    /// Classification by meaning: the static-embedding model and how similarity counts. Without
    /// it, categories are scored by their rules only (and may not list `examples`).
    #[serde(default)]
    pub embedding: Option<EmbeddingConfig>,
}

/// The static-embedding model that scores categories by meaning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The model directory, read once when the config is loaded (and again on a reload only if
    /// its files changed); never downloaded. Either layout: model2vec (`tokenizer.json` +
    /// `model.safetensors`) or the unpacked wordllama wheel. A relative path is relative to the
    /// routing YAML's directory.
    pub model_dir: PathBuf,
    /// The similarity at which a category becomes eligible (categories may override it). It
    /// depends on the model: 0.15 suits the wordllama table.
    #[serde(default = "default_min_similarity")]
    pub min_similarity: f32,
    /// Weight of a category's normalised rule points in its combined score (0.1: a rule hit
    /// decides close calls; 2 or more: any rule hit outranks any similarity).
    #[serde(default = "default_rule_weight")]
    pub rule_weight: f32,
}

/// A model and where it is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send and backends expect.
    pub name: String,
    /// Envoy clusters serving this model, with weights for spreading new conversations.
    pub clusters: Vec<ClusterRef>,
}

/// One cluster serving a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRef {
    /// The Envoy cluster name (what `cluster_header` selects).
    pub name: String,
    /// Relative share of new conversations for this model.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Settings of one Envoy cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Envoy cluster name.
    pub name: String,
    /// The cluster has several hosts that each keep their own state (e.g. a Service of vLLM
    /// pods): pin the host a response was served by, not only the cluster.
    #[serde(default)]
    pub pin_host: bool,
}

/// A category of requests and the model that serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub name: String,
    /// The model requests of this category go to.
    pub model: String,
    /// Whole-word, case-insensitive keywords; each occurrence scores 1.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Regular expressions (Rust `regex` syntax); each that matches scores 1.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The rule points a text needs before this category can win by its rules.
    #[serde(default = "default_min_score")]
    pub min_score: u32,
    /// Example utterances: the category by meaning (needs `classification.embedding`).
    /// `None` when the key is absent; an empty list is an error.
    #[serde(default)]
    pub examples: Option<Vec<String>>,
    /// The similarity at which this category becomes eligible, instead of
    /// `classification.embedding.min_similarity`.
    #[serde(default)]
    pub min_similarity: Option<f32>,
}

fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}

fn default_auto_models() -> Vec<String> {
    vec!["auto".to_owned()]
}

fn default_true() -> bool {
    true
}

fn default_capacity() -> usize {
    1_000_000
}

fn default_redis_prefix() -> String {
    "responses-router:affinity:".to_owned()
}

fn default_write_behind_capacity() -> usize {
    100_000
}

fn default_replay_per_second() -> u32 {
    2_000
}

fn default_ttl() -> u64 {
    24 * 3600
}

fn default_weight() -> u32 {
    1
}

fn default_min_score() -> u32 {
    1
}

/// Measured on the evaluation set with the wordllama table (BENCHMARKS.md): 0.15 keeps the best
/// accuracy and sends about 9 in 10 off-topic chat prompts to the default model.
pub const DEFAULT_MIN_SIMILARITY: f32 = 0.15;

/// A rule hit adds at most 0.1: about the median gap between a text's two most similar
/// categories, so rules settle close calls only.
pub const DEFAULT_RULE_WEIGHT: f32 = 0.1;

fn default_min_similarity() -> f32 {
    DEFAULT_MIN_SIMILARITY
}

fn default_rule_weight() -> f32 {
    DEFAULT_RULE_WEIGHT
}
