//! What operators see: Prometheus metrics and the admin HTTP port (health, readiness, metrics).
//! Plain counters and label values only: the front-end projects its decisions onto them.

pub mod admin;
pub mod metrics;

pub use metrics::Metrics;
