//! Affinity shared between router replicas through Redis: the `responses-router-redis` crate's
//! [`SharedStore`] (memory first, bounded Redis waits, write-behind and re-seed after an outage,
//! Redis Cluster, TLS), seen through the service's [`Store`]. The semantics live in that crate so
//! the in-process Envoy module runs the very same store.

use std::sync::Arc;

use responses_router_core::affinity::Location;
use responses_router_redis::{Counters, SharedStore};
use tonic::async_trait;

use super::Store;

#[async_trait]
impl Store for SharedStore {
    async fn lookup(&self, id: &str) -> Option<Location> {
        SharedStore::lookup(self, id).await
    }

    async fn record(&self, id: &str, location: Location) {
        SharedStore::record(self, id, location).await
    }

    async fn check(&self) -> Result<(), String> {
        SharedStore::check(self).await.map_err(|e| e.to_string())
    }

    fn local_entries(&self) -> usize {
        self.local().len()
    }

    fn shared_counters(&self) -> Option<Arc<Counters>> {
        Some(self.counters())
    }
}
