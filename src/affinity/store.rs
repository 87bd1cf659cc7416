//! The learned-affinity store interface.
//!
//! The ext_proc layer asks the store where a state id lives before it calls the (pure) routing
//! decision, and tells it where each new response was served. Implementations decide durability
//! and sharing (in-process, Redis); the default [`NoStore`] knows nothing, which leaves routing to
//! the stateless hash.

use tonic::async_trait;

/// Where a response or conversation was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The Envoy cluster.
    pub cluster: String,
    /// The host inside the cluster (`ip:port`), when the cluster has several.
    pub host: Option<String>,
}

/// A store of `state id -> Location`.
#[async_trait]
pub trait AffinityStore: Send + Sync {
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
    fn local_entries(&self) -> usize {
        0
    }
}

/// A store that remembers nothing: routing is by hash only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStore;

#[async_trait]
impl AffinityStore for NoStore {
    async fn lookup(&self, _id: &str) -> Option<Location> {
        None
    }

    async fn record(&self, _id: &str, _location: Location) {}
}
