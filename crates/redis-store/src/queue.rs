//! The write-behind queue: keys of ids learned while Redis (or the part of a cluster that holds
//! them) did not answer, written out once it does.
//!
//! Only the 16-byte key is queued: the location is read from the memory store when the key is
//! written, so an entry that expired or was evicted meanwhile is simply skipped, and a full queue
//! of the default 100,000 keys takes 1.6 MB. When full, the oldest key is dropped (and counted):
//! the newest ids are the likeliest to be continued. Writing takes the newest first for the same
//! reason.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use crate::Counters;

pub(crate) struct WriteBehind {
    keys: Mutex<Keys>,
    capacity: usize,
}

#[derive(Default)]
struct Keys {
    queued: VecDeque<u128>,
    /// Taken to be written and not yet written or put back: still "in the queue" for the
    /// length a front-end reports.
    in_flight: usize,
}

impl WriteBehind {
    pub(crate) fn new(capacity: usize) -> Self {
        WriteBehind {
            keys: Mutex::new(Keys::default()),
            capacity,
        }
    }

    /// Queues `key`, dropping the oldest key when full.
    pub(crate) fn push(&self, key: u128, counters: &Counters) {
        counters.queued.fetch_add(1, Ordering::Relaxed);
        self.append(std::iter::once(key), counters);
    }

    /// Ends a write of `taken` keys ([`take_newest`](Self::take_newest)), putting back the
    /// ones that could not be written yet (not counted as queued again).
    pub(crate) fn done(&self, taken: usize, put_back: Vec<u128>, counters: &Counters) {
        {
            let mut keys = lock(&self.keys);
            keys.in_flight = keys.in_flight.saturating_sub(taken);
        }
        self.append(put_back.into_iter().rev(), counters);
    }

    fn append(&self, keys: impl Iterator<Item = u128>, counters: &Counters) {
        let mut guard = lock(&self.keys);
        let Keys {
            queued: queue,
            in_flight,
        } = &mut *guard;
        for key in keys {
            if self.capacity == 0 {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if queue.len() == self.capacity {
                queue.pop_front();
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(key);
        }
        counters
            .queue_len
            .store((queue.len() + *in_flight) as u64, Ordering::Relaxed);
    }

    /// Takes up to `n` keys to write, newest first; [`done`](Self::done) ends the write.
    pub(crate) fn take_newest(&self, n: usize) -> Vec<u128> {
        let mut keys = lock(&self.keys);
        let take = n.min(keys.queued.len());
        let taken: Vec<u128> = (0..take).filter_map(|_| keys.queued.pop_back()).collect();
        keys.in_flight += taken.len();
        taken
    }

    /// Keys queued or being written.
    pub(crate) fn len(&self) -> usize {
        let keys = lock(&self.keys);
        keys.queued.len() + keys.in_flight
    }
}

/// Locks, recovering from poisoning: every critical section leaves the queue consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_dropped_newest_taken_first() {
        let counters = Counters::default();
        let queue = WriteBehind::new(3);
        for key in 1..=5 {
            queue.push(key, &counters);
        }
        let stats = counters.snapshot();
        assert_eq!((stats.queued, stats.dropped, stats.queue_len), (5, 2, 3));
        assert_eq!(queue.take_newest(2), [5, 4]);
        assert_eq!(queue.len(), 3, "keys being written still count");
        queue.done(2, vec![5, 4], &counters);
        assert_eq!(queue.take_newest(10), [5, 4, 3]);
        queue.done(3, vec![], &counters);
        assert_eq!(queue.len(), 0);
        assert_eq!(counters.snapshot().queue_len, 0);
        let none = WriteBehind::new(0);
        none.push(1, &counters);
        assert_eq!(none.len(), 0);
        assert_eq!(counters.snapshot().dropped, 3);
    }
}
