//! responses-router: the Envoy ext_proc service that routes OpenAI API traffic — above all the
//! Responses API — across model servers, and keeps each conversation where its state lives.
//!
//! The decision itself is the `responses-router-core` crate; this crate is the ext_proc front-end
//! around it (one concern per module):
//! - [`extproc`]: the tonic `ExternalProcessor`: a protocol driver with routing and learning hooks.
//! - [`store`]: the affinity store as the service uses it: memory, or memory + Redis.
//! - [`config`]: the routing YAML as the service loads it (the core's validation plus its own).
//! - [`reload`]: hot reload of the routing table (SIGHUP, file change).
//! - [`api`]: the project's own gRPC API (Explain, GetConfig), from `proto/`.
//! - [`telemetry`]: Prometheus metrics and the admin HTTP port.
//! - [`tls`]: mTLS for the TCP gRPC listener, with certificates re-read when they change.
//! - [`serve`]: all of the above as one library function with a shutdown future.
//! - [`explain`]: the `explain` command's JSON.

pub mod api;
pub mod config;
pub mod explain;
pub mod extproc;
pub mod reload;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
