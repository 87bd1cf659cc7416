//! The affinity store's memory budget: at most 100 heap bytes per entry at 1 million entries
//! (issue 7), counted exactly by a global allocator, so the figure does not depend on the machine.

use std::time::Duration;

use responses_router_core::affinity::{Location, MemoryStore};

#[path = "../benches/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn a_full_store_of_a_million_ids_takes_at_most_100_bytes_each() {
    const ENTRIES: usize = 1_000_000;
    let location = |i: usize| Location {
        cluster: format!("cluster-{}", i % 4),
        host: (i % 4 == 3).then(|| format!("10.0.0.{}:8000", i % 8)),
    };
    let before = counting_alloc::live_bytes();
    let store = MemoryStore::new(ENTRIES, Duration::from_secs(3600));
    // Twice the capacity: the second million evicts the first, so this is the steady state.
    for i in 0..2 * ENTRIES {
        store.put(&format!("resp_{i:040x}"), &location(i));
    }
    let per_entry = counting_alloc::live_bytes().saturating_sub(before) as f64 / ENTRIES as f64;
    assert_eq!(store.len(), ENTRIES);
    assert!(
        per_entry <= 100.0,
        "{per_entry:.1} heap bytes per entry, budget 100"
    );
    assert!(
        store
            .get(&format!("resp_{:040x}", 2 * ENTRIES - 1))
            .is_some(),
        "the newest id is kept"
    );
    assert!(
        store.get(&format!("resp_{:040x}", 0)).is_none(),
        "the oldest id was evicted"
    );
}
