//! The routing YAML: schema, loading (file, then environment overrides), validation and
//! compilation.
//!
//! Loading yields the startup [`Settings`] and a [`RoutingTable`], the compiled form the decision
//! reads. A table is immutable; a reload compiles a new one against the settings in force
//! ([`reload_reusing`]), so a request never sees half a config and a limit never changes under a
//! running process.

mod schema;
mod table;

pub use schema::{
    AffinityConfig, CategoryConfig, ClassificationConfig, ClusterConfig, ClusterRef,
    DEFAULT_MIN_SIMILARITY, DEFAULT_RULE_WEIGHT, EmbeddingConfig, ModelConfig, RedisConfig,
    RedisTlsConfig, RoutingConfig, Settings, UnknownModelPolicy,
};
pub use table::{ConfigIssue, RoutingTable};

use table::ModelContext;

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

/// A routing YAML, validated and compiled.
#[derive(Debug)]
pub struct Compiled {
    /// What stays in force until the process restarts.
    pub settings: Settings,
    /// What a reload replaces.
    pub table: RoutingTable,
}

/// A reloaded routing YAML: the new table, compiled against the settings in force.
#[derive(Debug)]
pub struct Reloaded {
    pub table: RoutingTable,
    /// Startup settings the new file changes, which take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Loads, overrides from the environment, validates and compiles a routing YAML file (reading
/// the embedding model it names, if any).
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    compile(
        read(file(path))?,
        ModelContext {
            base_dir: path.parent(),
            previous: None,
        },
    )
}

/// Parses a routing YAML document (environment overrides included), for tests and tools. A
/// relative `model_dir` is relative to the working directory.
pub fn from_yaml(yaml: &str) -> Result<Compiled, ConfigError> {
    compile(
        read(config::File::from_str(yaml, config::FileFormat::Yaml))?,
        ModelContext::default(),
    )
}

fn file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path).format(config::FileFormat::Yaml)
}

/// What a reloader compares to notice that a routing file changed: its modification time and
/// size, following symlinks (a Kubernetes ConfigMap swaps one); `None` if it cannot be read.
pub fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Loads the routing YAML file again and compiles its routes against the table in force: its
/// settings (startup settings the file changes are named, not applied), and its embedding model,
/// which the new table shares when the file names the same model files, unchanged (same paths,
/// inodes, sizes, modification times). The examples are embedded again either way.
pub fn reload_reusing(path: &Path, in_force: &RoutingTable) -> Result<Reloaded, ConfigError> {
    reload_with(
        path,
        in_force.settings(),
        ModelContext {
            base_dir: path.parent(),
            previous: in_force.embedding_model(),
        },
    )
}

fn reload_with(
    path: &Path,
    in_force: &Settings,
    models: ModelContext<'_>,
) -> Result<Reloaded, ConfigError> {
    let config = read(file(path))?;
    let settings = config.settings();
    // The new file's own settings must be valid too, or the next restart would fail.
    let mut issues = settings.validate().err().unwrap_or_default();
    match RoutingTable::compile(&config, in_force, models) {
        Ok(table) if issues.is_empty() => Ok(Reloaded {
            table,
            needs_restart: settings.differences(in_force),
        }),
        Ok(_) => Err(ConfigError::Invalid(issues)),
        Err(ConfigError::Invalid(routes)) => {
            issues.extend(routes);
            Err(ConfigError::Invalid(issues))
        }
        Err(e) => Err(e),
    }
}

fn compile(config: RoutingConfig, models: ModelContext<'_>) -> Result<Compiled, ConfigError> {
    let settings = config.settings();
    let table = RoutingTable::compile(&config, &settings, models)?;
    Ok(Compiled { settings, table })
}

fn read(source: impl config::Source + Send + Sync + 'static) -> Result<RoutingConfig, ConfigError> {
    let raw = config::Config::builder()
        .add_source(source)
        .add_source(env_overrides())
        .build()?;
    Ok(raw.try_deserialize()?)
}

fn env_overrides() -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        // `RESPONSES_ROUTER__AFFINITY__REDIS__NODES=redis://a:6379,redis://b:6379`; every other
        // value stays one string.
        .list_separator(",")
        .with_list_parse_key("affinity.redis.nodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "default_model: m\nmodels: [{ name: m, clusters: [{ name: c }] }]\n";

    fn with_env(vars: &[(&str, &str)]) -> Result<Compiled, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let raw = config::Config::builder()
            .add_source(config::File::from_str(YAML, config::FileFormat::Yaml))
            .add_source(env_overrides().source(Some(env)))
            .build()?;
        compile(raw.try_deserialize()?, ModelContext::default())
    }

    #[test]
    fn environment_overrides_top_level_scalars() {
        let t = with_env(&[("RESPONSES_ROUTER__MAX_BODY_BYTES", "2048")]).unwrap();
        assert_eq!(t.table.max_body_bytes(), 2048);
        let t = with_env(&[("RESPONSES_ROUTER__UNKNOWN_MODEL", "default")]).unwrap();
        assert_eq!(t.table.unknown_model(), UnknownModelPolicy::Default);
        // A typo in an override is an error, not silently ignored.
        assert!(with_env(&[("RESPONSES_ROUTER__MAX_BODY_BYTE", "1")]).is_err());
    }

    fn problems(extra: &str) -> Vec<String> {
        match from_yaml(&format!("{YAML}{extra}")) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(|i| i.to_string()).collect(),
            Err(e) => vec![format!("read error: {e}")],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn redis_settings_name_every_problem() {
        let found = problems(
            "affinity:\n  redis_url: redis://a:6379\n  redis_key_prefix: \"x{y}:\"\n  redis:\n    \
             nodes: [redis://b:6379, rediss://c:6379, unix:///run/redis.sock]\n    \
             username: u\n    username_env: U\n    password_file: /p\n    password_env: P\n    \
             tls: { cert_file: /c.pem }\n",
        );
        for expected in [
            "affinity.redis.nodes: give either affinity.redis_url or affinity.redis.nodes",
            "affinity.redis.nodes: seed nodes are for a Redis Cluster",
            "affinity.redis: give one of username, username_env, not several",
            "affinity.redis: give one of password_file, password_env, not both",
            "affinity.redis.tls: certificates are for TLS",
            "affinity.redis.tls: a client certificate needs both cert_file and key_file",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
        let found = problems(
            "affinity:\n  redis_key_prefix: \"{app}:\"\n  redis:\n    cluster: true\n    \
             nodes: [rediss://b:6379, redis://c:6379, unix:///s]\n",
        );
        for expected in [
            "affinity.redis_key_prefix: \"{app}:\" holds a `{`",
            "affinity.redis.nodes: mixes rediss:// and redis://",
            "affinity.redis.nodes[2]: a Redis Cluster node is reached over TCP",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert!(
            problems("affinity: { redis: { cluster: true } }\n")[0]
                .starts_with("affinity.redis: set, but there is no Redis")
        );
        // The single-URL form of earlier versions, and a cluster given by seeds.
        assert!(problems("affinity: { redis_url: \"redis://10.0.0.5:6379/\" }\n").is_empty());
        let cluster = "affinity:\n  redis:\n    cluster: true\n    nodes: [rediss://a:6379, \
                       rediss://b:6379]\n    password_file: /run/secrets/redis/password\n    \
                       tls: { ca_file: /run/secrets/redis/ca.crt }\n";
        assert!(problems(cluster).is_empty(), "{:?}", problems(cluster));
        let settings = from_yaml(&format!("{YAML}{cluster}")).unwrap().settings;
        assert_eq!(
            settings.affinity.redis_addresses(),
            ["rediss://a:6379", "rediss://b:6379"]
        );
        assert!(settings.affinity.shares());
    }

    #[test]
    fn cluster_seed_nodes_come_from_the_environment_as_a_list() {
        let t = with_env(&[
            ("RESPONSES_ROUTER__AFFINITY__REDIS__CLUSTER", "true"),
            (
                "RESPONSES_ROUTER__AFFINITY__REDIS__NODES",
                "redis://a:6379,redis://b:6379",
            ),
            (
                "RESPONSES_ROUTER__AFFINITY__REDIS__PASSWORD_ENV",
                "REDIS_PASSWORD",
            ),
            ("RESPONSES_ROUTER__AFFINITY__REDIS_URL", ""),
        ]);
        // redis_url set to "" is still "set": the override must be left out instead.
        assert!(t.is_err());
        let t = with_env(&[
            ("RESPONSES_ROUTER__AFFINITY__REDIS__CLUSTER", "true"),
            (
                "RESPONSES_ROUTER__AFFINITY__REDIS__NODES",
                "redis://a:6379,redis://b:6379",
            ),
            (
                "RESPONSES_ROUTER__AFFINITY__REDIS__PASSWORD_ENV",
                "REDIS_PASSWORD",
            ),
        ])
        .unwrap();
        let affinity = &t.settings.affinity;
        assert_eq!(affinity.redis.nodes, ["redis://a:6379", "redis://b:6379"]);
        assert_eq!(
            affinity.redis.password_env.as_deref(),
            Some("REDIS_PASSWORD")
        );
        // Other values with commas stay strings.
        let t = with_env(&[("RESPONSES_ROUTER__AFFINITY__REDIS_KEY_PREFIX", "a,b:")]).unwrap();
        assert_eq!(t.settings.affinity.redis_key_prefix, "a,b:");
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, YAML).unwrap();
        assert_eq!(load(&path).unwrap().table.default_model(), "m");
        let missing = dir.path().join("nope.yaml");
        assert!(matches!(load(&missing), Err(ConfigError::Read(_))));
    }

    #[test]
    fn a_reload_keeps_the_startup_settings_and_names_those_it_ignores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.yaml");
        std::fs::write(&path, YAML).unwrap();
        let in_force = load(&path).unwrap().table;
        std::fs::write(
            &path,
            format!("{YAML}max_body_bytes: 64\naffinity: {{ capacity: 5 }}\n"),
        )
        .unwrap();
        let reloaded = reload_reusing(&path, &in_force).unwrap();
        assert_eq!(
            reloaded.needs_restart,
            ["max_body_bytes", "affinity.capacity"]
        );
        assert_eq!(reloaded.table.max_body_bytes(), in_force.max_body_bytes());
        std::fs::write(&path, format!("{YAML}max_body_bytes: 0\n")).unwrap();
        assert!(
            matches!(
                reload_reusing(&path, &in_force),
                Err(ConfigError::Invalid(_))
            ),
            "invalid startup settings are rejected on reload too"
        );
    }
}
