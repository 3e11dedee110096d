//! The optimistic-concurrency check.

use crate::{Key, ReadSet, Version};

/// A read that is no longer current: the attempt saw `read`, the key is now at `current`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub key: Key,
    pub read: Version,
    pub current: Version,
}

/// Returns every read of `reads` whose version is no longer the key's `current` version.
///
/// An empty result means the attempt's view is still the latest state of every key it
/// read, so applying its writes now is equivalent to running it alone at this instant:
/// that is the whole serializability argument, and why the server must call this while it
/// holds the locks of every key it checks (see `docs/architecture.md`).
///
/// A false conflict is possible and accepted: a key rewritten with the value it already had
/// still gets a new version. Comparing values instead would save a retry but could not
/// detect an A-B-A change.
pub fn find_stale(reads: &ReadSet, mut current: impl FnMut(&Key) -> Version) -> Vec<Stale> {
    reads
        .iter()
        .filter_map(|(key, read)| {
            let now = current(key);
            (now != read).then(|| Stale {
                key: key.clone(),
                read,
                current: now,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// One generated transaction: it starts (takes its snapshot) after `start` earlier
    /// commit attempts, reads `reads`, and writes to each of `writes` the sum of what it read
    /// plus its own id, so that its effect depends on exactly what it saw.
    #[derive(Clone, Debug)]
    struct Spec {
        start: usize,
        reads: Vec<u8>,
        writes: Vec<u8>,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0usize..8,
            prop::collection::vec(0u8..4, 0..4),
            prop::collection::vec(0u8..4, 0..3),
        )
            .prop_map(|(start, reads, writes)| Spec {
                start,
                reads,
                writes,
            })
    }

    type Store = BTreeMap<u8, (Version, i64)>;

    fn get(store: &Store, k: u8) -> (Version, i64) {
        store.get(&k).copied().unwrap_or((Version::ABSENT, 0))
    }

    fn key(k: u8) -> Key {
        Key::kv(k.to_string())
    }

    fn effect(id: usize, seen: &[(u8, i64)], writes: &[u8]) -> Vec<(u8, i64)> {
        let sum: i64 = seen.iter().map(|(_, v)| v).sum();
        writes.iter().map(|w| (*w, sum + id as i64 + 1)).collect()
    }

    proptest! {
        /// OCC with `find_stale` against a brute-force model: run random transactions
        /// against snapshots of a store, commit those `find_stale` accepts in order, then
        /// replay only the committed ones serially in commit order from the initial state.
        /// Every replayed transaction must see exactly what it saw optimistically and the
        /// final stores must match: the accepted history is serializable in commit order.
        #[test]
        fn accepted_histories_are_serializable_in_commit_order(specs in prop::collection::vec(spec(), 1..8)) {
            let mut store = Store::new();
            let mut snapshots: Vec<Store> = vec![store.clone()];
            let mut next_version = 1u64;
            let mut committed = Vec::new();

            for (id, s) in specs.iter().enumerate() {
                let snap = &snapshots[s.start.min(snapshots.len() - 1)];
                let mut reads = ReadSet::new();
                let mut seen = Vec::new();
                for &k in &s.reads {
                    let (v, val) = get(snap, k);
                    reads.record(key(k), v);
                    seen.push((k, val));
                }
                let stale = find_stale(&reads, |k| {
                    let id: u8 = match k { Key::Kv { key } => key.parse().unwrap(), Key::Row { .. } => unreachable!() };
                    get(&store, id).0
                });
                // The brute-force definition of staleness: some read key changed since.
                let changed = s.reads.iter().any(|&k| get(snap, k).0 != get(&store, k).0);
                prop_assert_eq!(!stale.is_empty(), changed);
                if stale.is_empty() {
                    for (k, val) in effect(id, &seen, &s.writes) {
                        store.insert(k, (Version(next_version), val));
                    }
                    next_version += 1;
                    committed.push((id, seen));
                }
                snapshots.push(store.clone());
            }

            let mut serial = Store::new();
            for (id, seen) in committed {
                let s = &specs[id];
                let now: Vec<(u8, i64)> = s.reads.iter().map(|&k| (k, get(&serial, k).1)).collect();
                prop_assert_eq!(&now, &seen, "transaction {} saw a state no serial order produces", id);
                for (k, val) in effect(id, &now, &s.writes) {
                    let v = get(&serial, k).0;
                    serial.insert(k, (Version(v.0 + 1), val));
                }
            }
            let values = |s: &Store| s.iter().map(|(k, (_, v))| (*k, *v)).collect::<Vec<_>>();
            prop_assert_eq!(values(&serial), values(&store));
        }
    }

    #[test]
    fn insert_race_is_a_conflict() {
        // Both attempts read the missing key at ABSENT; the first insert moves it on.
        let mut reads = ReadSet::new();
        reads.record(Key::row("users", "k"), Version::ABSENT);
        let stale = find_stale(&reads, |_| Version(1));
        assert_eq!(
            stale,
            vec![Stale {
                key: Key::row("users", "k"),
                read: Version::ABSENT,
                current: Version(1)
            }]
        );
    }
}
