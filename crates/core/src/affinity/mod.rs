//! Where conversation state lives: stateless hashing plus a store of learned locations.
//!
//! [`hash`] gives every id a deterministic home (identical on every replica and across restarts);
//! [`store`] remembers where a response was actually served, which the hash alone cannot know
//! because the backend mints the id, and [`memory`] is the bounded in-process store. The routing
//! decision takes what a store knows as plain data, so a front-end may layer any sharing (Redis)
//! around the memory store without touching the decision.

pub mod hash;
pub mod memory;
pub mod store;

pub use hash::{Candidate, fnv1a64, rendezvous};
pub use memory::{Entry, MemoryStore, ReplayCursor, id_key};
pub use store::{AffinityStore, Location, NoStore};
