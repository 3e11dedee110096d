//! The conflict rule: when a read is stale.
//!
//! The rule that decides commits is the SQL of `mjolnir.commit_batch` (migration
//! `0007_pipelined_commits.sql`, its "A read is stale if …" query): a read of version `v`
//! of a key is current if the key's value last changed at or before `v` (and `v` is not
//! beyond the key's version); otherwise the commit conflicts. The server holds the locks
//! of every key it checks while it decides, which is what makes the check serializable
//! (`docs/architecture.md`).
//!
//! [`is_stale`] is the same rule in Rust, for the two places that judge a read before or
//! without the database: the server's memory of recent commits (`store/recent.rs` in
//! `mjolnir-server`), which answers some conflicts without a turn in the commit lane, and
//! the client's [`crate::Attempt::is_stale`], which decides whether a handler that threw
//! did so on a torn view. Each knows the version at which a key's value last changed only
//! for some keys, and decides what an unknown key means for itself.

use crate::Version;

/// Whether a read of version `read` is stale, given that the key's value last changed at
/// version `changed`.
///
/// A write that leaves a key's value as it was does not make earlier reads stale (the
/// database keeps the key's `changed` version; migration 0006); a write that changes it
/// does, even back to an earlier value (A-B-A), since versions, not values, are compared.
pub fn is_stale(read: Version, changed: Version) -> bool {
    changed > read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Key, ReadSet};
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
        /// OCC with [`is_stale`] against a brute-force model: run random transactions
        /// against snapshots of a store, commit those whose reads are all current, then
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
                // Every write here changes its key's value, so a key's version is the
                // version at which its value last changed.
                let stale = reads.iter().any(|(k, read)| {
                    let id: u8 = match k { Key::Kv { key } => key.parse().unwrap(), _ => unreachable!() };
                    is_stale(read, get(&store, id).0)
                });
                // The brute-force definition of staleness: some read key changed since.
                let changed = s.reads.iter().any(|&k| get(snap, k).0 != get(&store, k).0);
                prop_assert_eq!(stale, changed);
                if !stale {
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
        assert!(is_stale(Version::ABSENT, Version(1)));
        assert!(
            !is_stale(Version(1), Version(1)),
            "read at the change: current"
        );
        assert!(
            !is_stale(Version(3), Version(1)),
            "changed before the read: current"
        );
    }
}
