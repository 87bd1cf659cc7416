//! Where the service keeps what it learns about response locations: in this process (the core's
//! memory store), or shared with every other replica through Redis ([`SharedStore`]).
//!
//! The core's store is synchronous; sharing means network I/O, so the service works through this
//! async [`Store`], which the memory store implements directly and Redis layers around it.

pub mod redis;

pub use responses_router_redis::SharedStore;

use std::sync::Arc;

use responses_router_core::affinity::{AffinityStore, Location, MemoryStore, NoStore};
use responses_router_core::routing::Prepared;
use tonic::async_trait;

/// What `store` knows about the state a prepared request names (`None` when it names none).
pub async fn pinned(store: &dyn Store, request: &Prepared<'_>) -> Option<Location> {
    store.lookup(request.state()?.id()).await
}

/// A store of `state id -> Location` as the service uses it.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where `id` was served, if known. A store that cannot answer returns `None`: routing then
    /// falls back to the hash, never fails the request.
    async fn lookup(&self, id: &str) -> Option<Location>;

    /// Records where `id` was served.
    async fn record(&self, id: &str, location: Location);

    /// Checks the store's backend now; `Err` says why it is unreachable (routing then runs on
    /// local knowledge and hashing). In-process stores are always reachable.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Entries held in this process, for the store-size metric.
    fn local_entries(&self) -> usize;

    /// The shared store's counters (write-behind queue, re-seeds, Redis errors), for metrics;
    /// `None` for an in-process store.
    fn shared_counters(&self) -> Option<Arc<responses_router_redis::Counters>> {
        None
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(&self, id: &str) -> Option<Location> {
        AffinityStore::lookup(self, id)
    }

    async fn record(&self, id: &str, location: Location) {
        AffinityStore::record(self, id, &location);
    }

    fn local_entries(&self) -> usize {
        self.len()
    }
}

#[async_trait]
impl Store for NoStore {
    async fn lookup(&self, _id: &str) -> Option<Location> {
        None
    }

    async fn record(&self, _id: &str, _location: Location) {}

    fn local_entries(&self) -> usize {
        0
    }
}
