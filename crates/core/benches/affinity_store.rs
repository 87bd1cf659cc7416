//! The in-memory affinity store at 1 million entries: lookup (hit and miss), insert into a full
//! store (which evicts the oldest), and heap bytes per entry (target <= 100).
//!
//! Bytes per entry are counted by a global allocator wrapper, so they are exact heap figures for
//! the store, not a resident-set estimate disturbed by the benchmark harness.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use responses_router_core::affinity::{Location, MemoryStore};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

const ENTRIES: usize = 1_000_000;

fn id(i: usize) -> String {
    format!(
        "resp_{i:032x}{:016x}",
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn location(i: usize) -> Location {
    Location {
        cluster: format!("cluster-{}", i % 4),
        host: (i % 4 == 3).then(|| format!("10.0.0.{}:8000", i % 8)),
    }
}

/// A full store in its steady state: twice the capacity recorded, so every shard is at its share of
/// the capacity and evicting (shards fill unevenly, so one capacity's worth leaves some short).
fn filled() -> (MemoryStore, usize) {
    let before = counting_alloc::live_bytes();
    let store = MemoryStore::new(ENTRIES, Duration::from_secs(86_400));
    for i in 0..2 * ENTRIES {
        store.put(&id(i), &location(i));
    }
    let bytes = counting_alloc::live_bytes().saturating_sub(before);
    (store, bytes)
}

fn store(c: &mut Criterion) {
    let (store, bytes) = filled();
    assert_eq!(store.len(), ENTRIES);
    println!(
        "affinity_store/bytes_per_entry: {:.1} heap bytes per entry at {ENTRIES} entries",
        bytes as f64 / ENTRIES as f64
    );
    // The newest 400k ids: kept by every shard, however unevenly the ids fell into them.
    let ids: Vec<String> = (0..4096).map(|i| id(2 * ENTRIES - 1 - i * 97)).collect();
    let unknown: Vec<String> = (0..4096).map(|i| id(ENTRIES * 3 + i)).collect();
    let mut group = c.benchmark_group("affinity_store_1M");
    let mut n = 0usize;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(store.get(&ids[n % ids.len()]))
        })
    });
    group.bench_function("lookup_miss", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(store.get(&unknown[n % unknown.len()]))
        })
    });
    let loc = location(1);
    let mut next = 3 * ENTRIES + 4096;
    group.bench_function("insert_full_evicting", |b| {
        b.iter_batched(
            || {
                next += 1;
                id(next)
            },
            |new_id| store.put(&new_id, &loc),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(store.len(), ENTRIES, "a full store stays at capacity");
}

criterion_group!(benches, store);
criterion_main!(benches);
