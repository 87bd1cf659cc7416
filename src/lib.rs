//! responses-router: an Envoy ext_proc service that routes OpenAI API traffic — above all the
//! Responses API — across model servers, and keeps each conversation where its state lives.
//!
//! Layout (one concern per module):
//! - [`openai`]: request kinds, body parsing and model splice, text extraction, error bodies.
//! - [`classify`]: keyword/regex categories behind a `Classifier` trait.
//! - [`affinity`]: FNV-1a rendezvous hashing and the learned-affinity store interface.
//! - [`config`]: the routing YAML, validated and compiled into a `RoutingTable`.
//! - [`routing`]: the decision — request in, model + upstream + reason out — as plain Rust.
//! - [`api`]: the project's own gRPC API (Explain, GetConfig), from `proto/`.
//! - [`extproc`]: the tonic `ExternalProcessor` service translating Envoy messages to and from it.
//! - [`simulator`]: the bundled OpenAI-compatible model server used by the demo, tests, benchmarks.
//! - [`telemetry`]: Prometheus metrics and the admin HTTP port.

pub mod affinity;
pub mod api;
pub mod classify;
pub mod config;
pub mod extproc;
pub mod openai;
pub mod routing;
pub mod simulator;
pub mod telemetry;
