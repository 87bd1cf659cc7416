//! The routing YAML as the service loads it: the core's validation, plus what only the service
//! can check (its Redis client must accept `affinity.redis_url`).

use std::path::Path;

use responses_router_core::config::{self, Compiled, ConfigError, ConfigIssue};

/// Loads and validates a routing YAML file for the service.
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    let compiled = config::load(path)?;
    if let Some(Err(e)) = compiled
        .settings
        .affinity
        .redis_url
        .as_deref()
        .map(redis::Client::open)
    {
        return Err(ConfigError::Invalid(vec![ConfigIssue {
            field: "affinity.redis_url".to_owned(),
            problem: format!("not a usable Redis URL: {e}"),
        }]));
    }
    Ok(compiled)
}
