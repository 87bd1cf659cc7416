//! Where conversation state lives: stateless hashing plus a store of learned locations.
//!
//! `hash` gives every id a deterministic home (identical on every replica and across restarts);
//! `store` remembers where a response was actually served, which the hash alone cannot know
//! because the backend mints the id. The routing decision takes what the store knows as plain
//! data, so a new store plugs in without touching the decision or its callers.

pub mod hash;
pub mod memory;
pub mod redis;
pub mod store;

pub use hash::{Candidate, fnv1a64, rendezvous};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use store::{AffinityStore, Location, NoStore};
