//! The routing table in force, shared by every stream and swapped as a whole on reload.

use std::sync::{Arc, RwLock};

use super::RoutingTable;

/// The routing table in force, swappable as a whole (hot reload) while streams keep the one they
/// started with.
#[derive(Clone)]
pub struct SharedTable(Arc<RwLock<Arc<RoutingTable>>>);

impl SharedTable {
    /// Wraps the initial table.
    pub fn new(table: RoutingTable) -> Self {
        SharedTable(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The table new streams use.
    pub fn current(&self) -> Arc<RoutingTable> {
        // A poisoned lock still holds a complete table (writers only swap an Arc).
        match self.0.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Installs a new table for streams that start from now on.
    pub fn replace(&self, table: RoutingTable) {
        let table = Arc::new(table);
        match self.0.write() {
            Ok(mut guard) => *guard = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }
}
