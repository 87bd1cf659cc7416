//! The routing YAML: schema, loading (file, then environment overrides) and validation.
//!
//! Loading produces a [`RoutingTable`], the compiled, validated form the decision reads. A table
//! is immutable; a config change builds a new one, so a request never sees half a config.

mod schema;
mod table;

pub use schema::{
    CategoryConfig, ClassificationConfig, ClusterConfig, ClusterRef, ModelConfig, RoutingConfig,
    UnknownModelPolicy,
};
pub use table::{ConfigIssue, RoutingTable};

use std::path::Path;

/// Prefix of environment variables that override top-level scalars, e.g.
/// `RESPONSES_ROUTER__MAX_BODY_BYTES=1048576`.
pub const ENV_PREFIX: &str = "RESPONSES_ROUTER";

/// A routing config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read routing config: {0}")]
    Read(#[from] config::ConfigError),
    #[error("invalid routing config:\n{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn format_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads, overrides from the environment, validates and compiles a routing YAML file.
pub fn load(path: &Path) -> Result<RoutingTable, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Yaml))
        .add_source(env_overrides())
        .build()?;
    RoutingTable::build(raw.try_deserialize()?)
}

/// Parses a routing YAML document (environment overrides included), for tests and tools.
pub fn from_yaml(yaml: &str) -> Result<RoutingTable, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
        .add_source(env_overrides())
        .build()?;
    RoutingTable::build(raw.try_deserialize()?)
}

fn env_overrides() -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}
