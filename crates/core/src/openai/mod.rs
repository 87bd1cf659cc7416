//! The OpenAI API surface as the router needs to see it: which request a path is, what a body says
//! about routing, which text to classify, how to swap the model, and how errors look on the wire.
//!
//! - [`paths`]: request kinds from method and path.
//! - [`body`]: the single parse of a request body and the model splice.
//! - [`turns`]: what `input`/`messages` hold, gathered during that parse.
//! - [`text`]: the latest user turn, extracted from those turns.
//! - [`error`]: the one mapping from a refusal to an OpenAI error status and body.
//!
//! Nothing here knows about Envoy or gRPC; a front-end feeds bytes in and gets plain data out.

pub mod body;
pub mod error;
pub mod paths;
pub mod text;
pub mod turns;

pub use body::{ParsedBody, StateRef};
pub use error::{ApiError, ErrorKind};
pub use paths::RequestKind;

/// Whether a `content-encoding` value leaves a body as it is: empty or only `identity` codings
/// (a list such as `gzip, identity` still compresses). Requests and responses alike.
pub(crate) fn is_identity_encoding(value: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
}
