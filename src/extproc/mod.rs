//! The ext_proc front-end: a tonic `ExternalProcessor` that turns Envoy's per-request message
//! streams into calls to the decision core and the decision back into header/body mutations.
//!
//! - [`driver`]: the one owner of Envoy's protocol (order, one reply per message, mode overrides,
//!   refusing violations), with hooks that return typed actions.
//! - [`routing`]: the routing filter's hooks (decide, carry the decision out, learn JSON ids).
//! - [`observe`]: the observer filter's hooks (learn SSE ids without holding the stream).
//! - [`pending`]: continuations never overtake what the observer is still learning.
//! - [`envoy`]: reading Envoy headers and building `ProcessingResponse`s.
//! - [`service`]: the gRPC service and the TCP / Unix-socket servers.

pub mod driver;
pub mod envoy;
pub mod observe;
pub mod pending;
pub mod routing;
pub mod service;

pub use service::{RouterService, serve};
