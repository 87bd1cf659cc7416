//! What the store keeps in Redis, and where it lands in a cluster.
//!
//! **Keys.** An id is stored under `prefix + hex(xxh3-128(id))`: the 128-bit key the memory store
//! already keeps ([`responses_router_core::affinity::id_key`]). Ids themselves are never kept in
//! memory, so this is what lets a replica write back what it knows (re-seed, write-behind) with
//! nothing but its memory. It also spreads keys evenly over a cluster's 16,384 slots: a hash has
//! no `{hash tag}` (and the prefix may not hold one in cluster mode). Earlier versions used
//! `prefix + id`; see the README for the one-time effect of that change.
//!
//! **Values.** `cluster`, or `cluster\thost` (tabs cannot occur in cluster names or `ip:port`).
//!
//! **Markers.** Keys `prefix + "marker"` (standalone) or one `prefix + "marker:N"` in each of the
//! [`RANGES`] slot ranges (cluster), with no TTL. A marker that is gone means that Redis (or the
//! master holding that range) lost its data: restarted without persistence, flushed, replaced.

use responses_router_core::affinity::Location;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Slot ranges of a cluster: back-off and emptiness are tracked per range of `SLOTS / RANGES`
/// slots, so one failed master (which owns whole ranges, give or take its edges) does not switch
/// sharing off for the keys of the others.
pub const RANGES: usize = 64;
const SLOTS_PER_RANGE: u16 = SLOTS / RANGES as u16;

/// The Redis key of the entry kept under `key`.
pub fn redis_key(prefix: &str, key: u128) -> String {
    format!("{prefix}{key:032x}")
}

/// The cluster slot of a Redis key: CRC16 (XMODEM) of the key, or of its `{hash tag}`.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// The range a slot belongs to.
pub fn range_of_slot(slot: u16) -> usize {
    usize::from(slot / SLOTS_PER_RANGE)
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The marker keys: one for a standalone Redis, one in each slot range of a cluster (the first
/// `prefix + "marker:N"` whose slot falls in that range), so every master owning at least
/// `SLOTS / RANGES` contiguous slots holds one.
pub fn markers(prefix: &str, cluster: bool) -> Vec<String> {
    if !cluster {
        return vec![format!("{prefix}marker")];
    }
    let mut found: Vec<Option<String>> = vec![None; RANGES];
    let mut left = RANGES;
    let mut n = 0u64;
    while left > 0 {
        let key = format!("{prefix}marker:{n}");
        let range = range_of_slot(slot(key.as_bytes()));
        if found[range].is_none() {
            found[range] = Some(key);
            left -= 1;
        }
        n += 1;
    }
    found.into_iter().flatten().collect()
}

/// The stored form of a location.
pub fn encode(location: &Location) -> String {
    match &location.host {
        Some(host) => format!("{}\t{host}", location.cluster),
        None => location.cluster.clone(),
    }
}

/// A location read back; `None` for a value this store never writes.
pub fn decode(value: &str) -> Option<Location> {
    let (cluster, host) = match value.split_once('\t') {
        Some((c, h)) => (c, Some(h.to_owned())),
        None => (value, None),
    };
    (!cluster.is_empty()).then(|| Location {
        cluster: cluster.to_owned(),
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` (Redis 7.0).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "empty tag: whole key"
        );
        assert_eq!(slot(b"{}"), crc16(b"{}") % SLOTS);
    }

    #[test]
    fn hashed_keys_spread_over_the_slot_ranges() {
        let mut per_range = [0usize; RANGES];
        for i in 0..64_000u32 {
            let key = redis_key(
                "responses-router:affinity:",
                u128::from(i) * 0x9e37_79b9_7f4a_7c15,
            );
            per_range[range_of_slot(slot(key.as_bytes()))] += 1;
        }
        // 1000 expected per range.
        assert!(
            per_range.iter().all(|&n| (800..1200).contains(&n)),
            "{per_range:?}"
        );
    }

    #[test]
    fn one_marker_per_range() {
        let markers = markers("p:", true);
        assert_eq!(markers.len(), RANGES);
        let mut ranges: Vec<usize> = markers
            .iter()
            .map(|m| range_of_slot(slot(m.as_bytes())))
            .collect();
        ranges.sort_unstable();
        assert_eq!(ranges, (0..RANGES).collect::<Vec<_>>());
        assert_eq!(super::markers("p:", false), ["p:marker"]);
    }

    #[test]
    fn encoding_round_trips() {
        for location in [
            Location {
                cluster: "code".into(),
                host: None,
            },
            Location {
                cluster: "stories".into(),
                host: Some("10.0.0.7:8000".into()),
            },
            Location {
                cluster: "v6".into(),
                host: Some("[::1]:8000".into()),
            },
        ] {
            assert_eq!(decode(&encode(&location)), Some(location));
        }
        assert_eq!(decode(""), None);
    }
}
