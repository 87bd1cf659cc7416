//! responses-router as an Envoy dynamic module: the same decision core as the ext_proc service,
//! inside Envoy's own process, so a request costs Envoy no gRPC stream and no extra messages.
//!
//! - [`abi`]: the raw `extern "C"` surface of Envoy 1.40's dynamic-module ABI (the subset used).
//! - `envoy`: safe wrappers over it (the stream's [`host::Host`], the stats and their publisher).
//! - [`tally`]: counter increments gathered between publications (the ABI's are costly).
//! - [`host`]: what the per-stream logic needs from Envoy, as a trait (unit tests fake it).
//! - [`filter`]: one stream: decide on the headers or the buffered body, carry the decision
//!   out, learn the created id from the response as it passes.
//! - [`router`]: what every worker shares: the routing table (hot-reloaded), the store.
//! - [`shared`]: the store shared with other Envoys, reached off the worker threads.
//! - [`redis`]: that store: the service's Redis store, on a thread of its own.
//! - `exports`: the hooks Envoy calls, each behind `catch_unwind`.
//! - [`log`]: Envoy's log.
//!
//! Build: `cargo build --release -p responses-router-envoy-module` gives
//! `target/release/libresponses_router_envoy.so`, which Envoy loads by the name
//! `responses_router_envoy` from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (deploy/envoy-module.yaml).

pub mod abi;
#[cfg(not(test))]
mod envoy;
#[cfg(not(test))]
mod exports;
pub mod filter;
pub mod host;
pub mod log;
pub mod redis;
pub mod router;
pub mod shared;
pub mod tally;
