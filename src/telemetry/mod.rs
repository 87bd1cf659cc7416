//! What operators see: Prometheus metrics (and, later, tracing setup and health).

pub mod admin;
pub mod metrics;

pub use metrics::Metrics;
