//! From the routing YAML's `affinity` section to a usable Redis client: addresses, credentials
//! (read from a file or the environment, never from the YAML), certificates, and the problems
//! found on the way, each naming its field.

use std::time::Duration;

use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};
use responses_router_core::config::{AffinityConfig, ConfigIssue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Whether resolving reads the files and environment variables the config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read them (what `serve` does, and `validate` by default).
    Read,
    /// Leave them: check the YAML alone (CI where the Secrets are not mounted).
    Skip,
}

/// Timings of the store. The defaults are the documented budgets; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Longest wait for one Redis command on the request path.
    pub command_timeout: Duration,
    /// How long a slot range (all of a standalone Redis) is skipped after a failure.
    pub backoff: Duration,
    /// How often the background task runs (replay pacing, marker checks, topology watch).
    pub tick: Duration,
    /// How often the markers are checked while Redis answers.
    pub marker_every: Duration,
    /// Longest wait for a background command (markers, replay, topology).
    pub background_timeout: Duration,
    /// Longest wait for a new connection (made in the background; requests never wait on it).
    pub connect_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            command_timeout: Duration::from_millis(50),
            backoff: Duration::from_secs(1),
            tick: Duration::from_millis(250),
            marker_every: Duration::from_secs(1),
            background_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

/// Everything the store needs to reach Redis, resolved and checked.
pub struct RedisSettings {
    pub(crate) client: Client,
    /// The addresses without credentials, for logs.
    pub(crate) addresses: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
    pub(crate) write_behind_capacity: usize,
    pub(crate) replay_per_second: u32,
    pub tuning: Tuning,
}

/// A client that has not connected yet.
pub(crate) enum Client {
    Standalone(redis::Client),
    /// Seed nodes, and how to reach any node (the others come from `CLUSTER SLOTS`).
    Cluster {
        seeds: Vec<crate::backend::Node>,
        template: crate::backend::NodeTemplate,
    },
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("cluster", &matches!(self.client, Client::Cluster { .. }))
            .field("addresses", &self.addresses)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// The settings `affinity` asks for, reading the credential and certificate files and
    /// variables it names; `Ok(None)` when no Redis is configured.
    pub fn from_config(
        affinity: &AffinityConfig,
    ) -> Result<Option<RedisSettings>, Vec<ConfigIssue>> {
        resolve(affinity, Secrets::Read)
    }

    /// Whether the addresses are seeds of a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster { .. })
    }
}

/// The problems of `affinity`'s Redis settings beyond what the YAML alone shows (the core checks
/// that): addresses the Redis client refuses and, with [`Secrets::Read`], files and variables
/// that are missing, empty or not what they should be.
pub fn check(affinity: &AffinityConfig, secrets: Secrets) -> Vec<ConfigIssue> {
    match resolve(affinity, secrets) {
        Ok(_) => Vec::new(),
        Err(issues) => issues,
    }
}

fn resolve(
    affinity: &AffinityConfig,
    secrets: Secrets,
) -> Result<Option<RedisSettings>, Vec<ConfigIssue>> {
    let addresses = affinity.redis_addresses();
    if addresses.is_empty() {
        return Ok(None);
    }
    let redis = &affinity.redis;
    let mut issues = Issues::default();
    let field = |i: usize| {
        if affinity.redis_url.is_some() {
            "affinity.redis_url".to_owned()
        } else {
            format!("affinity.redis.nodes[{i}]")
        }
    };
    let mut infos = Vec::new();
    for (i, url) in addresses.iter().enumerate() {
        match url.into_connection_info() {
            Ok(info) => {
                if redis.cluster && info.redis_settings().db() != 0 {
                    issues.add(
                        &field(i),
                        "a Redis Cluster has only database 0: drop the /DB from the URL".into(),
                    );
                }
                infos.push(info);
            }
            Err(e) => issues.add(&field(i), format!("not a usable Redis URL: {e}")),
        }
    }
    let tls = addresses.iter().any(|u| u.starts_with("rediss://"));
    if secrets == Secrets::Skip {
        return issues.into_result(None);
    }

    let username = read_secret(
        "username",
        redis.username.as_deref(),
        redis.username_file.as_deref(),
        redis.username_env.as_deref(),
        &mut issues,
    );
    let password = read_secret(
        "password",
        None,
        redis.password_file.as_deref(),
        redis.password_env.as_deref(),
        &mut issues,
    );
    let certificates = if tls {
        read_certificates(affinity, &mut issues)
    } else {
        None
    };
    if !issues.0.is_empty() {
        return Err(issues.0);
    }

    let with_credentials = |info: &ConnectionInfo| {
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &password {
            settings = settings.set_password(password);
        }
        info.clone().set_redis_settings(settings)
    };
    let standalone = |info: ConnectionInfo| match &certificates {
        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
        None => redis::Client::open(info),
    };
    let tuning = Tuning::default();
    let client = if redis.cluster {
        let seeds: Vec<_> = infos
            .iter()
            .filter_map(|info| match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect();
        let template = crate::backend::NodeTemplate {
            // Some exactly for rediss:// (then with the configured CA and client certificate).
            tls: certificates.clone(),
            username: username.clone(),
            password: password.clone(),
        };
        if let Some(seed) = seeds.first()
            && let Err(e) = template.check(seed)
        {
            issues.add(
                "affinity.redis",
                format!("cannot build the Redis Cluster client: {e}"),
            );
            return Err(issues.0);
        }
        Client::Cluster { seeds, template }
    } else {
        match infos.first().map(|i| standalone(with_credentials(i))) {
            Some(Ok(client)) => Client::Standalone(client),
            Some(Err(e)) => {
                issues.add(&field(0), format!("cannot build the Redis client: {e}"));
                return Err(issues.0);
            }
            None => return Err(issues.0),
        }
    };
    Ok(Some(RedisSettings {
        client,
        addresses: infos.iter().map(|i| i.addr().to_string()).collect(),
        prefix: affinity.redis_key_prefix.clone(),
        ttl: Duration::from_secs(affinity.ttl_seconds.max(1)),
        write_behind_capacity: redis.write_behind_capacity,
        replay_per_second: redis.replay_per_second,
        tuning,
    }))
}

/// The problems found so far.
#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, field: &str, problem: String) {
        self.0.push(ConfigIssue {
            field: field.to_owned(),
            problem,
        });
    }

    fn into_result<T>(self, ok: T) -> Result<T, Vec<ConfigIssue>> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self.0)
        }
    }
}

/// A credential given in the YAML (`plain`, user names only), a file or an environment variable.
fn read_secret(
    what: &str,
    plain: Option<&str>,
    file: Option<&str>,
    env: Option<&str>,
    issues: &mut Issues,
) -> Option<String> {
    let (field, value) = if let Some(value) = plain {
        (format!("affinity.redis.{what}"), Ok(value.to_owned()))
    } else if let Some(path) = file {
        (
            format!("affinity.redis.{what}_file"),
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}")),
        )
    } else if let Some(name) = env {
        (
            format!("affinity.redis.{what}_env"),
            std::env::var(name).map_err(|e| format!("environment variable {name}: {e}")),
        )
    } else {
        return None;
    };
    match value {
        // A file written by `echo` or a Secret made from one ends in a newline.
        Ok(v) => {
            let v = v.strip_suffix('\n').unwrap_or(&v);
            let v = v.strip_suffix('\r').unwrap_or(v);
            if v.is_empty() {
                issues.add(&field, format!("the {what} is empty"));
                None
            } else {
                Some(v.to_owned())
            }
        }
        Err(problem) => {
            issues.add(&field, problem);
            None
        }
    }
}

/// The CA bundle and client certificate for `rediss://`, read and checked now, so a bad file is
/// a clear startup error rather than a connection failure later.
fn read_certificates(affinity: &AffinityConfig, issues: &mut Issues) -> Option<TlsCertificates> {
    let tls = &affinity.redis.tls;
    let mut ok = true;
    let mut read = |field: &str, path: &Option<String>| -> Option<Vec<u8>> {
        let path = path.as_deref()?;
        match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                issues.add(field, format!("cannot read {path}: {e}"));
                ok = false;
                None
            }
        }
    };
    let ca = read("affinity.redis.tls.ca_file", &tls.ca_file);
    let cert = read("affinity.redis.tls.cert_file", &tls.cert_file);
    let key = read("affinity.redis.tls.key_file", &tls.key_file);
    if !ok {
        return None;
    }
    if let Some(ca) = &ca {
        check_ca(ca, issues);
    }
    let client_tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            check_key_pair(&cert, &key, issues)?;
            Some(ClientTlsConfig {
                client_cert: cert,
                client_key: key,
            })
        }
        _ => None,
    };
    if !issues.0.is_empty() {
        return None;
    }
    Some(TlsCertificates {
        client_tls,
        root_cert: ca,
    })
}

/// The CA bundle holds at least one usable certificate.
fn check_ca(ca: &[u8], issues: &mut Issues) {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(ca).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => {
            let mut roots = rustls::RootCertStore::empty();
            if roots.add_parsable_certificates(certs).0 == 0 {
                issues.add(
                    "affinity.redis.tls.ca_file",
                    "holds no usable CA certificate".into(),
                );
            }
        }
        Ok(_) => issues.add(
            "affinity.redis.tls.ca_file",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ),
        Err(e) => issues.add(
            "affinity.redis.tls.ca_file",
            format!("not a PEM bundle: {e}"),
        ),
    }
}

/// The client certificate parses, the key parses, and they belong together.
fn check_key_pair(cert: &[u8], key: &[u8], issues: &mut Issues) -> Option<()> {
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert).collect();
    let chain = match chain {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => {
            issues.add(
                "affinity.redis.tls.cert_file",
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            );
            return None;
        }
        Err(e) => {
            issues.add(
                "affinity.redis.tls.cert_file",
                format!("not a PEM certificate: {e}"),
            );
            return None;
        }
    };
    let key = match PrivateKeyDer::from_pem_slice(key) {
        Ok(key) => key,
        Err(e) => {
            issues.add(
                "affinity.redis.tls.key_file",
                format!("no PEM private key: {e}"),
            );
            return None;
        }
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let built = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, key)
        });
    match built {
        Ok(Ok(_)) => Some(()),
        Ok(Err(e)) | Err(e) => {
            issues.add(
                "affinity.redis.tls.key_file",
                format!("does not go with cert_file: {e}"),
            );
            None
        }
    }
}
