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
        if let Some(url) = &self.affinity.redis_url {
            const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !SCHEMES.iter().any(|s| url.starts_with(s)) {
                issue(
                    "affinity.redis_url",
                    format!(
                        "not a usable Redis URL: {url:?} does not start with one of {}",
                        SCHEMES.join(", ")
                    ),
                );
            }
        }
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
    /// Redis shared by all router replicas (`redis://host:port/db`); unset: this process only.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys, so several deployments can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_key_prefix: String,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            learn: true,
            capacity: default_capacity(),
            ttl_seconds: default_ttl(),
            redis_url: None,
            redis_key_prefix: default_redis_prefix(),
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
