//! responses-router-core: the routing decision of responses-router, as a library any front-end
//! embeds (the ext_proc service, the Envoy dynamic module, the `explain` tool).
//!
//! Request in (method, path, headers, body), model + upstream + reason out; learned locations in.
//! It has no gRPC, HTTP-server, Redis or async-runtime dependency, holds no global state (a
//! front-end owns the store and the compiled table and hands them in) and never waits on I/O.
//!
//! - [`openai`]: request kinds from paths, body parse and model splice, text extraction, errors.
//! - [`classify`]: categories scored by keyword and regex rules.
//! - [`affinity`]: rendezvous hashing, the affinity-store trait and the in-memory store.
//! - [`config`]: the routing YAML: schema, validation (= compilation) into a [`RoutingTable`].
//! - [`routing`]: the decision, as a value, and the headers that carry it to Envoy.
//! - [`learn`]: reading a created response's id from its JSON or SSE body as it passes.
//!
//! The public API a front-end needs: [`config::load`] a YAML into settings and a table;
//! [`RequestKind::from_request`] and [`routing::check_head`] on the headers; [`routing::prepare`],
//! then [`AffinityStore::lookup`] of the state it names, then [`routing::decide`]; and
//! [`learn::IdCapture`] + [`AffinityStore::record`] on the response.

pub mod affinity;
pub mod classify;
pub mod config;
pub mod learn;
pub mod openai;
pub mod routing;

pub use affinity::{AffinityStore, Location, MemoryStore, NoStore};
pub use config::{RoutingTable, Settings};
pub use openai::{ApiError, RequestKind};
pub use routing::Decision;
