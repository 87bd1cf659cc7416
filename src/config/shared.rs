//! The routing table in force, shared by every stream and swapped as a whole on reload.

use std::sync::{Arc, RwLock};

use super::RoutingTable;

/// The routing table in force and its generation (1 at start, +1 per replacement), swappable as a
/// whole (hot reload) while streams keep the table they started with.
#[derive(Clone)]
pub struct SharedTable(Arc<RwLock<(u64, Arc<RoutingTable>)>>);

impl SharedTable {
    /// Wraps the initial table (generation 1).
    pub fn new(table: RoutingTable) -> Self {
        SharedTable(Arc::new(RwLock::new((1, Arc::new(table)))))
    }

    /// The table new streams use.
    pub fn current(&self) -> Arc<RoutingTable> {
        self.current_with_generation().1
    }

    /// The table in force and its generation, read together.
    pub fn current_with_generation(&self) -> (u64, Arc<RoutingTable>) {
        // A poisoned lock still holds a complete table (writers only swap an Arc).
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, Arc::clone(&guard.1))
    }

    /// Installs a new table for streams that start from now on; returns its generation.
    pub fn replace(&self, table: RoutingTable) -> u64 {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        *guard = (guard.0 + 1, Arc::new(table));
        guard.0
    }
}
