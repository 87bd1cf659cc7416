//! Counter increments gathered in memory and handed to Envoy in batches.
//!
//! A labeled counter increment through the ABI costs Envoy a stat-name lookup (symbol table,
//! scope map, lock): about 9,000 instructions for the five-label `decisions` counter, a seventh
//! of the module's whole cost per request. Adding one to an entry here costs a few hundred; Envoy's
//! main thread publishes the sums a few times a second (`exports.rs`), so `/stats` lags by at
//! most that interval.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::host::Counter;

/// Shards, so that worker threads rarely share a lock (each takes one by its first use).
const SHARDS: usize = 16;

/// One counter with one set of label values, and the increments not yet published.
struct Entry {
    counter: Counter,
    labels: Vec<String>,
    count: u64,
}

/// Increments not yet published, by counter and label values.
#[derive(Default)]
pub struct Tally {
    shards: [Mutex<HashMap<Vec<u8>, Entry>>; SHARDS],
    pending: AtomicBool,
}

thread_local! {
    /// This thread's shard.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
    /// The key being looked up, reused so that a hit allocates nothing.
    static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes the key of (`counter`, `labels`): the counter, then each label's length and bytes, so
/// that no two label lists share a key whatever bytes they hold.
fn encode(key: &mut Vec<u8>, counter: Counter, labels: &[&str]) {
    key.clear();
    key.push(counter as u8);
    for label in labels {
        key.extend_from_slice(&(label.len() as u32).to_le_bytes());
        key.extend_from_slice(label.as_bytes());
    }
}

impl Tally {
    /// Counts one `counter` event with `labels`.
    pub fn add(&self, counter: Counter, labels: &[&str]) {
        self.add_n(counter, labels, 1);
    }

    /// Counts `n` `counter` events with `labels`.
    pub fn add_n(&self, counter: Counter, labels: &[&str], n: u64) {
        if n == 0 {
            return;
        }
        let shard = SHARD.with(|s| *s);
        KEY.with_borrow_mut(|key| {
            encode(key, counter, labels);
            let mut entries = self.shards[shard]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match entries.get_mut(key.as_slice()) {
                Some(entry) => entry.count += n,
                None => {
                    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
                    entries.insert(
                        key.clone(),
                        Entry {
                            counter,
                            labels,
                            count: n,
                        },
                    );
                }
            }
        });
        // A load first: most adds find the flag set and leave its cache line shared.
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Relaxed);
        }
    }

    /// Whether anything was counted since the last [`Tally::take`].
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The increments counted since the last call, summed per counter and labels. Entries idle
    /// since the last call are dropped, so label values a reload retired do not linger.
    pub fn take(&self) -> Vec<(Counter, Vec<String>, u64)> {
        self.pending.store(false, Ordering::Relaxed);
        let mut taken = Vec::new();
        for shard in &self.shards {
            let mut entries = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            entries.retain(|_, entry| {
                if entry.count == 0 {
                    return false;
                }
                taken.push((entry.counter, entry.labels.clone(), entry.count));
                entry.count = 0;
                true
            });
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sorted(mut taken: Vec<(Counter, Vec<String>, u64)>) -> Vec<(Counter, Vec<String>, u64)> {
        taken.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
        taken
    }

    #[test]
    fn sums_per_counter_and_labels_then_starts_again() {
        let tally = Tally::default();
        assert!(!tally.pending());
        tally.add(Counter::Affinity, &["hit"]);
        tally.add(Counter::Affinity, &["hit"]);
        tally.add(Counter::Affinity, &["miss"]);
        tally.add(Counter::Panics, &[]);
        assert!(tally.pending());
        assert_eq!(
            sorted(tally.take()),
            vec![
                (Counter::Affinity, vec!["hit".to_owned()], 2),
                (Counter::Affinity, vec!["miss".to_owned()], 1),
                (Counter::Panics, vec![], 1),
            ]
        );
        assert!(!tally.pending());
        assert!(
            tally.take().is_empty(),
            "published increments are not published again"
        );
        tally.add(Counter::Affinity, &["hit"]);
        assert_eq!(
            tally.take(),
            vec![(Counter::Affinity, vec!["hit".to_owned()], 1)]
        );
    }

    #[test]
    fn label_lists_that_concatenate_alike_stay_apart() {
        let tally = Tally::default();
        tally.add(Counter::Decisions, &["ab", "c", "", "", ""]);
        tally.add(Counter::Decisions, &["a", "bc", "", "", ""]);
        tally.add(Counter::Refusals, &["a"]);
        tally.add(Counter::Answered, &["a"]);
        assert_eq!(tally.take().len(), 4);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let tally = Arc::new(Tally::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let tally = Arc::clone(&tally);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        tally.add(Counter::LearnedIds, &["sse"]);
                    }
                })
            })
            .collect();
        let mut total = 0;
        for thread in threads {
            thread.join().expect("adder thread");
            total += tally.take().iter().map(|t| t.2).sum::<u64>();
        }
        total += tally.take().iter().map(|t| t.2).sum::<u64>();
        assert_eq!(total, 8000);
    }
}
