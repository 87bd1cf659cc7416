//! The routing YAML: schema, loading (file, then environment overrides) and validation.
//!
//! Loading produces a [`RoutingTable`], the compiled, validated form the decision reads. A table
//! is immutable; a config change builds a new one, so a request never sees half a config.

pub mod reload;
mod schema;
mod shared;
mod table;

pub use schema::{
    AffinityConfig, CategoryConfig, ClassificationConfig, ClusterConfig, ClusterRef, ModelConfig,
    RoutingConfig, UnknownModelPolicy,
};
pub use shared::SharedTable;
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

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "default_model: m\nmodels: [{ name: m, clusters: [{ name: c }] }]\n";

    fn with_env(vars: &[(&str, &str)]) -> Result<RoutingTable, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let raw = config::Config::builder()
            .add_source(config::File::from_str(YAML, config::FileFormat::Yaml))
            .add_source(env_overrides().source(Some(env)))
            .build()?;
        RoutingTable::build(raw.try_deserialize()?)
    }

    #[test]
    fn environment_overrides_top_level_scalars() {
        let t = with_env(&[("RESPONSES_ROUTER__MAX_BODY_BYTES", "2048")]).unwrap();
        assert_eq!(t.max_body_bytes(), 2048);
        let t = with_env(&[("RESPONSES_ROUTER__UNKNOWN_MODEL", "default")]).unwrap();
        assert_eq!(t.unknown_model(), UnknownModelPolicy::Default);
        // A typo in an override is an error, not silently ignored.
        assert!(with_env(&[("RESPONSES_ROUTER__MAX_BODY_BYTE", "1")]).is_err());
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, YAML).unwrap();
        assert_eq!(load(&path).unwrap().config().default_model, "m");
        let missing = dir.path().join("nope.yaml");
        assert!(matches!(load(&missing), Err(ConfigError::Read(_))));
    }
}
