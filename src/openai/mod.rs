//! The OpenAI API surface as the router needs to see it: which request a path is, what a body says
//! about routing, which text to classify, how to swap the model, and how errors look on the wire.
//!
//! Nothing here knows about Envoy or gRPC; the ext_proc layer feeds bytes in and gets plain data out.

pub mod body;
pub mod error;
pub mod paths;
pub mod text;

pub use body::{ParsedBody, StateRef};
pub use error::{ApiError, ErrorKind};
pub use paths::RequestKind;
