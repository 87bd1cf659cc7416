//! Helpers shared by the core's integration tests.

#[path = "../../benches/support/models.rs"]
pub mod models;
