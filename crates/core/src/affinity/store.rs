//! The learned-affinity store interface.
//!
//! A front-end asks the store where a state id lives before it calls the (pure) routing decision,
//! and tells it where each new response was served. The trait is synchronous: an in-process store
//! answers at once, and a front-end that shares knowledge over the network (Redis) does that I/O
//! itself, around this store, so the core never waits on the network.

/// Where a response or conversation was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The Envoy cluster.
    pub cluster: String,
    /// The host inside the cluster (`ip:port`), when the cluster has several.
    pub host: Option<String>,
}

/// An in-process store of `state id -> Location`.
pub trait AffinityStore: Send + Sync {
    /// Where `id` was served, if known.
    fn lookup(&self, id: &str) -> Option<Location>;

    /// Records where `id` was served.
    fn record(&self, id: &str, location: &Location);

    /// Entries held, for the store-size metric.
    fn len(&self) -> usize;

    /// Whether the store holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A store that remembers nothing (learning off): routing is by hash only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStore;

impl AffinityStore for NoStore {
    fn lookup(&self, _id: &str) -> Option<Location> {
        None
    }

    fn record(&self, _id: &str, _location: &Location) {}

    fn len(&self) -> usize {
        0
    }
}
