//! The routing YAML as the service loads it: the core's validation, plus what only the service
//! can check: its Redis client must accept the Redis addresses, and (unless told to skip them)
//! the credential and certificate files and variables `affinity.redis` names must be usable.

use std::path::Path;

use responses_router_core::config::{self, Compiled, ConfigError};
pub use responses_router_redis::Secrets;

/// Loads and validates a routing YAML file for the service, reading the files and variables it
/// names (as `serve` will).
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    load_with(path, Secrets::Read)
}

/// Loads and validates a routing YAML file; with [`Secrets::Skip`] the credential and
/// certificate files and variables it names are not read (CI without the Secrets).
pub fn load_with(path: &Path, secrets: Secrets) -> Result<Compiled, ConfigError> {
    let compiled = config::load(path)?;
    let issues = responses_router_redis::check(&compiled.settings.affinity, secrets);
    if issues.is_empty() {
        Ok(compiled)
    } else {
        Err(ConfigError::Invalid(issues))
    }
}
