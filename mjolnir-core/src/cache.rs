//! The client's copy of server state, and the snapshots attempts read from.
//!
//! The cache is fed by three kinds of server message that race each other: `values` replies
//! to reads, `conflict` replies to commits, and pushes. It never lets a key go back to an
//! older version, so whichever arrives last cannot undo a newer one that arrived first.
//!
//! Attempts never read the cache itself: they read a [`Snapshot`], an O(1) copy of the
//! persistent map, so that whatever is applied while a handler runs (or awaits) cannot
//! change what it already saw.

use crate::protocol::Entry;
use crate::{Key, Version};
use imbl::OrdMap;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Keys a [`Cache::new`] holds before [`Cache::evict`] starts dropping them.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Eviction removes at least this share of the capacity at once (when enough keys are
/// unpinned), so that its O(n) scan is paid once per that many insertions, not per insert.
const EVICT_BATCH_DIVISOR: usize = 10;

/// One key as the client last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub version: Version,
    /// `None`: the key is absent at `version` (never written, or deleted then). An absent
    /// key is cached like any other, so reading it is a hit that records its version, which
    /// is what makes two racing inserts of it conflict.
    pub value: Option<Value>,
}

/// A source of recency stamps, shared by a cache and every snapshot taken from it.
#[derive(Debug, Default)]
struct Clock(AtomicU64);

impl Clock {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Relaxed) + 1
    }
}

/// A cached key plus its recency stamp.
///
/// The stamp lives beside the value, behind the same `Arc` the snapshots share, so that a
/// read through a snapshot can mark the key used with one atomic store: no write to the
/// persistent map (which would copy a path of it) and no second map of cloned keys. It is
/// bookkeeping only; nothing a snapshot returns ever depends on it. Atomics rather than a
/// `Cell` keep the cache `Send` for native clients; on wasm they are plain loads and stores.
#[derive(Debug)]
struct Slot {
    cached: Cached,
    last_used: AtomicU64,
}

impl Slot {
    fn new(cached: Cached, clock: &Clock) -> Arc<Slot> {
        Arc::new(Slot {
            cached,
            last_used: AtomicU64::new(clock.tick()),
        })
    }

    fn stamp(&self, clock: &Clock) {
        self.last_used.store(clock.tick(), Relaxed);
    }
}

/// The cache as it was at one instant: what one attempt reads from.
///
/// Taking one is O(1) and it never changes afterwards, whatever the cache applies or
/// evicts: an attempt sees one state of its cache from start to end. Values sit behind an
/// `Arc`, so the copy-on-write of the cache's map after a snapshot clones pointers, not
/// JSON documents.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    entries: OrdMap<Key, Arc<Slot>>,
    clock: Arc<Clock>,
}

impl Snapshot {
    /// The key as of this snapshot, or `None` when the cache did not hold it (a miss, not
    /// an absent key). Counts as a use of the key for the cache's eviction order.
    pub fn get(&self, key: &Key) -> Option<&Cached> {
        let slot = self.entries.get(key)?;
        slot.stamp(&self.clock);
        Some(&slot.cached)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes `keys` as `older` had them: an attempt moved onto a newer snapshot keeps
    /// seeing what it already read.
    pub(crate) fn keep_from<'a>(
        &mut self,
        older: &Snapshot,
        keys: impl IntoIterator<Item = &'a Key>,
    ) {
        for key in keys {
            if let Some(slot) = older.entries.get(key) {
                self.entries.insert(key.clone(), slot.clone());
            }
        }
    }
}

/// Which entries may add a key the cache does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Any,
    HeldOrPinned,
}

/// The client's copy of server state: every key it has read, at the newest version it has
/// heard of, bounded in size.
///
/// # Eviction
///
/// Nothing is evicted behind the caller's back: [`Cache::apply`] may grow the cache past
/// its capacity, and [`Cache::evict`] brings it back, returning the keys it dropped so the
/// caller can send `unsubscribe` for them (a key the cache no longer holds must stop being
/// pushed, or the server would keep sending changes nobody reads).
///
/// - **What:** the least recently used keys that are not pinned. A key is used when an
///   attempt reads it through a snapshot, when [`Cache::get`] reads it, when an entry for it
///   is applied, and when it is pinned or unpinned.
/// - **When:** only when the cache holds more than its capacity; it then evicts down to
///   90% of the capacity, so that the next eviction waits for at least a tenth of the
///   capacity's worth of new keys.
/// - **Never:** a pinned key. Pin what attempts in progress have read or are fetching
///   ([`Cache::pin`]; pins count, so two attempts may pin one key): evicting a key an
///   attempt is waiting to re-read would make it miss again forever, and evicting a key
///   whose fetch is in flight would let that reply land without a version floor (see
///   [`Cache::apply`]). Pinned keys may keep the cache above capacity.
/// - **Cost:** recency is one counter tick and one atomic store per use. An eviction scans
///   the whole cache once (O(n log p) with p pinned keys) and selects the oldest in O(n);
///   since it removes a tenth of the capacity each time, that is amortised to a constant
///   number of key visits per inserted key. When pins prevent progress, each call still
///   pays the scan.
#[derive(Debug)]
pub struct Cache {
    entries: OrdMap<Key, Arc<Slot>>,
    clock: Arc<Clock>,
    /// Pin counts, including keys not (yet) cached: a key being fetched is pinned before
    /// its reply arrives. A list: a page pins what its waiting handlers read and what it
    /// is loading, tens of keys, and an ordered map with removal would add one more copy
    /// of the B-tree's code to the browser module.
    pins: Vec<(Key, u32)>,
    capacity: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Cache {
    /// A cache of [`DEFAULT_CAPACITY`] keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that [`Cache::evict`] keeps to at most `capacity` unpinned keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Cache {
            entries: OrdMap::new(),
            clock: Arc::default(),
            pins: Vec::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// O(1): later applies and evictions do not reach the snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            entries: self.entries.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// The key as the cache holds it now. Counts as a use (templates read this way).
    pub fn get(&self, key: &Key) -> Option<&Cached> {
        let slot = self.entries.get(key)?;
        slot.stamp(&self.clock);
        Some(&slot.cached)
    }

    /// The version the cache holds for `key`, without counting as a use: for checks, not
    /// for readers.
    pub fn version(&self, key: &Key) -> Option<Version> {
        self.entries.get(key).map(|slot| slot.cached.version)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    /// Every key the cache holds, in key order: what to read again after a reconnect, since
    /// subscriptions belong to the connection that took them.
    pub fn keys(&self) -> Vec<Key> {
        self.entries.keys().cloned().collect()
    }

    /// Applies entries from `values` replies (and any entry the caller knows the connection
    /// is subscribed to). Returns the keys whose cached value changed, including keys cached
    /// for the first time, in key order: what to re-render.
    ///
    /// An entry replaces the cached one only if its version is at least as new, because
    /// replies and pushes race: a read reply taken before a commit can arrive after that
    /// commit's push. An entry whose version equals the cached one replaces it too (it is
    /// the same commit) but is reported only if its value differs.
    ///
    /// The floor is only as good as what the cache holds: an evicted key forgets its
    /// version, so a stale reply for it would be taken as is. Pinning keys while their fetch
    /// is in flight rules that out. Never evicts: call [`Cache::evict`] afterwards.
    pub fn apply(&mut self, entries: &[Entry]) -> Vec<Key> {
        self.merge(entries, Admit::Any)
    }

    /// Applies pushes and `conflict` replies: like [`Cache::apply`], except that an entry
    /// for a key the cache neither holds nor has pinned is dropped.
    ///
    /// Such a key was evicted and unsubscribed, and the entry was already on its way. Taking
    /// it would bring the key back without a subscription, so no push would ever update it
    /// again and templates would show it frozen; dropping it only means the next attempt
    /// that reads it misses and fetches it (and so subscribes) afresh.
    pub fn refresh(&mut self, entries: &[Entry]) -> Vec<Key> {
        self.merge(entries, Admit::HeldOrPinned)
    }

    fn merge(&mut self, entries: &[Entry], admit: Admit) -> Vec<Key> {
        // A set rather than a sorted and deduplicated Vec: the wasm already holds a
        // `BTreeSet<Key>` (an attempt's misses), and the sort would be one more to ship.
        let mut changed = BTreeSet::new();
        for entry in entries {
            // `null` on the wire means absent, so a `Some(null)` built in process does too.
            let value = entry.value.as_ref().filter(|v| !v.is_null());
            match self.entries.get(&entry.key) {
                Some(slot) if slot.cached.version > entry.version => {
                    slot.stamp(&self.clock);
                    continue;
                }
                Some(slot) if slot.cached.value.as_ref() == value => {
                    if slot.cached.version == entry.version {
                        slot.stamp(&self.clock);
                        continue;
                    }
                }
                Some(_) => {
                    changed.insert(entry.key.clone());
                }
                None if admit == Admit::HeldOrPinned && !self.is_pinned(&entry.key) => {
                    continue;
                }
                None => {
                    changed.insert(entry.key.clone());
                }
            }
            let cached = Cached {
                version: entry.version,
                value: value.cloned(),
            };
            let slot = Slot::new(cached, &self.clock);
            self.entries.insert(entry.key.clone(), slot);
        }
        changed.into_iter().collect()
    }

    /// Keeps `keys` from eviction until as many [`Cache::unpin`]s. Pinning a key the cache
    /// does not hold is how a caller protects a fetch in flight.
    pub fn pin<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) {
        for key in keys {
            if let Some(slot) = self.entries.get(key) {
                slot.stamp(&self.clock);
            }
            match self.pins.iter_mut().find(|(k, _)| k == key) {
                Some((_, count)) => *count += 1,
                None => self.pins.push((key.clone(), 1)),
            }
        }
    }

    /// Undoes one [`Cache::pin`] of each key; unpinning a key that is not pinned does
    /// nothing. The keys count as just used, since an attempt has just finished with them.
    pub fn unpin<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) {
        for key in keys {
            if let Some(slot) = self.entries.get(key) {
                slot.stamp(&self.clock);
            }
            if let Some(at) = self.pins.iter().position(|(k, _)| k == key) {
                self.pins[at].1 -= 1;
                if self.pins[at].1 == 0 {
                    self.pins.swap_remove(at);
                }
            }
        }
    }

    pub fn is_pinned(&self, key: &Key) -> bool {
        self.pins.iter().any(|(k, _)| k == key)
    }

    /// If the cache holds more than its capacity, drops the least recently used unpinned
    /// keys until it holds 90% of it (or no unpinned key is left), and returns them, least
    /// recently used first. The caller should send `unsubscribe` for them.
    pub fn evict(&mut self) -> Vec<Key> {
        let len = self.entries.len();
        if len <= self.capacity {
            return Vec::new();
        }
        let target = self.capacity - self.capacity / EVICT_BATCH_DIVISOR;
        let excess = len - target;
        let mut oldest: Vec<(u64, &Key)> = self
            .entries
            .iter()
            .filter(|(key, _)| !self.is_pinned(key))
            .map(|(key, slot)| (slot.last_used.load(Relaxed), key))
            .collect();
        // A full sort rather than `select_nth_unstable` and a sort of the excess: a tenth of
        // the cache is evicted at a time, so this runs once per that many insertions, and
        // the selection algorithm would be shipped in the wasm for it (docs/client.md,
        // "Shipped size").
        oldest.sort_unstable_by_key(|&(last_used, _)| last_used);
        oldest.truncate(excess);
        let evicted: Vec<Key> = oldest.into_iter().map(|(_, key)| key.clone()).collect();
        for key in &evicted {
            self.entries.remove(key);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::{Attempt, Read};
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    fn entry(key: &str, version: u64, value: Option<Value>) -> Entry {
        Entry {
            key: Key::kv(key),
            version: Version(version),
            value,
        }
    }

    fn cached(version: u64, value: Value) -> Cached {
        Cached {
            version: Version(version),
            value: Some(value),
        }
    }

    #[test]
    fn versions_never_go_backwards() {
        let mut cache = Cache::new();
        assert_eq!(
            cache.apply(&[entry("a", 5, Some(json!("new")))]),
            [Key::kv("a")]
        );
        // A read reply taken before commit 5 arrives after its push.
        assert!(cache.apply(&[entry("a", 3, Some(json!("old")))]).is_empty());
        assert_eq!(cache.get(&Key::kv("a")), Some(&cached(5, json!("new"))));
        // Deleted at 7: absent is a value like any other.
        assert_eq!(cache.apply(&[entry("a", 7, None)]), [Key::kv("a")]);
        assert_eq!(cache.version(&Key::kv("a")), Some(Version(7)));
        assert_eq!(cache.get(&Key::kv("a")).unwrap().value, None);
    }

    #[test]
    fn only_value_changes_are_reported() {
        let mut cache = Cache::new();
        cache.apply(&[entry("a", 1, Some(json!(1))), entry("b", 1, None)]);
        // The same commit again, and a rewrite with the value it had: nothing to re-render.
        assert!(cache.apply(&[entry("a", 1, Some(json!(1)))]).is_empty());
        assert!(cache.apply(&[entry("a", 2, Some(json!(1)))]).is_empty());
        assert_eq!(cache.version(&Key::kv("a")), Some(Version(2)));
        // `null` is absent, as on the wire.
        assert!(cache.apply(&[entry("b", 1, Some(Value::Null))]).is_empty());
        let changed = cache.apply(&[
            entry("b", 3, Some(json!(2))),
            entry("a", 3, Some(json!(2))),
            entry("a", 4, Some(json!(3))),
        ]);
        assert_eq!(changed, [Key::kv("a"), Key::kv("b")]);
    }

    #[test]
    fn a_snapshot_does_not_see_later_applies() {
        let mut cache = Cache::new();
        cache.apply(&[entry("a", 1, Some(json!(10)))]);
        let snap = cache.snapshot();
        cache.apply(&[
            entry("a", 2, Some(json!(20))),
            entry("b", 2, Some(json!(1))),
        ]);
        cache.evict();
        assert_eq!(snap.get(&Key::kv("a")), Some(&cached(1, json!(10))));
        assert!(!snap.contains_key(&Key::kv("b")));
        assert_eq!(
            cache.snapshot().get(&Key::kv("a")),
            Some(&cached(2, json!(20)))
        );
    }

    #[test]
    fn refresh_only_updates_what_is_held_or_pinned() {
        let mut cache = Cache::new();
        cache.apply(&[entry("held", 1, Some(json!(1)))]);
        cache.pin([&Key::kv("fetching")]);
        let changed = cache.refresh(&[
            entry("held", 2, Some(json!(2))),
            entry("fetching", 2, Some(json!(2))),
            entry("evicted", 2, Some(json!(2))),
        ]);
        assert_eq!(changed, [Key::kv("fetching"), Key::kv("held")]);
        assert!(!cache.contains_key(&Key::kv("evicted")));
    }

    #[test]
    fn eviction_keeps_capacity_drops_the_least_recently_used_in_batches() {
        let mut cache = Cache::with_capacity(10);
        let entries: Vec<Entry> = (0..10).map(|i| entry(&i.to_string(), 1, None)).collect();
        cache.apply(&entries);
        assert!(cache.evict().is_empty(), "at capacity is not over it");
        // Use 0 and 1 through a snapshot (as attempts do), then go over capacity.
        let snap = cache.snapshot();
        snap.get(&Key::kv("0"));
        cache.get(&Key::kv("1"));
        cache.apply(&[entry("10", 1, None)]);
        // 11 keys, down to 9: the two oldest unused ones go, oldest first.
        assert_eq!(cache.evict(), [Key::kv("2"), Key::kv("3")]);
        assert_eq!(cache.len(), 9);
        assert!(cache.contains_key(&Key::kv("0")) && cache.contains_key(&Key::kv("1")));
        // The snapshot still has them.
        assert!(snap.contains_key(&Key::kv("2")));
    }

    #[test]
    fn pinned_keys_are_never_evicted() {
        let mut cache = Cache::with_capacity(2);
        cache.apply(&[entry("a", 1, None), entry("b", 1, None)]);
        cache.pin([&Key::kv("a"), &Key::kv("b")]);
        cache.pin([&Key::kv("a")]);
        cache.apply(&[entry("c", 1, None), entry("d", 1, None)]);
        assert_eq!(cache.evict(), [Key::kv("c"), Key::kv("d")]);
        cache.apply(&[entry("c", 1, None)]);
        assert_eq!(cache.evict(), [Key::kv("c")]);
        cache.unpin([&Key::kv("a"), &Key::kv("b")]);
        assert!(
            cache.is_pinned(&Key::kv("a")),
            "pinned twice, unpinned once"
        );
        assert!(!cache.is_pinned(&Key::kv("b")));
        cache.apply(&[entry("e", 1, None)]);
        // `a` is still pinned; `b` was last used (unpinned) before `e` arrived.
        assert_eq!(cache.evict(), [Key::kv("b")]);
        assert_eq!(cache.len(), cache.capacity());
        cache.unpin([&Key::kv("a"), &Key::kv("nobody")]);
        assert!(!cache.is_pinned(&Key::kv("a")));
    }

    #[test]
    fn reconnect_rereads_every_held_key() {
        let mut cache = Cache::new();
        cache.apply(&[entry("b", 1, None), entry("a", 1, None)]);
        assert_eq!(cache.keys(), [Key::kv("a"), Key::kv("b")]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply(Vec<(u8, u64)>),
        Refresh(Vec<(u8, u64)>),
        Snapshot,
        Read(usize, u8),
        Pin(u8),
        Unpin(u8),
        Evict,
    }

    fn op() -> impl Strategy<Value = Op> {
        let batch = || prop::collection::vec((0u8..6, 0u64..20), 0..4);
        prop_oneof![
            3 => batch().prop_map(Op::Apply),
            1 => batch().prop_map(Op::Refresh),
            2 => Just(Op::Snapshot),
            3 => (any::<usize>(), 0u8..6).prop_map(|(s, k)| Op::Read(s, k)),
            1 => (0u8..6).prop_map(Op::Pin),
            1 => (0u8..6).prop_map(Op::Unpin),
            1 => Just(Op::Evict),
        ]
    }

    fn key(k: u8) -> Key {
        Key::kv(k.to_string())
    }

    proptest! {
        /// Any interleaving of applies, refreshes, snapshots, reads, pins and evictions:
        /// a read through a snapshot returns exactly the newest version applied to its key
        /// before the snapshot was taken (so never an older one), unless the key was evicted
        /// since; the snapshot never changes after; and eviction keeps the bound and the pins.
        #[test]
        fn reads_never_go_behind_what_was_applied(
            capacity in 0usize..8,
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let mut cache = Cache::with_capacity(capacity);
            // The model: the newest version applied per key since it was last evicted.
            let mut newest: BTreeMap<u8, u64> = BTreeMap::new();
            let mut pins: BTreeMap<u8, u32> = BTreeMap::new();
            let mut snapshots: Vec<(Snapshot, BTreeMap<u8, u64>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Apply(batch) | Op::Refresh(batch) if batch.is_empty() => {}
                    Op::Apply(batch) => {
                        let entries: Vec<Entry> = batch.iter()
                            .map(|&(k, v)| entry(&k.to_string(), v, Some(json!(v))))
                            .collect();
                        cache.apply(&entries);
                        for (k, v) in batch {
                            let n = newest.entry(k).or_insert(v);
                            *n = (*n).max(v);
                        }
                    }
                    Op::Refresh(batch) => {
                        let entries: Vec<Entry> = batch.iter()
                            .map(|&(k, v)| entry(&k.to_string(), v, Some(json!(v))))
                            .collect();
                        cache.refresh(&entries);
                        for (k, v) in batch {
                            if newest.contains_key(&k) || pins.contains_key(&k) {
                                let n = newest.entry(k).or_insert(v);
                                *n = (*n).max(v);
                            }
                        }
                    }
                    Op::Snapshot => snapshots.push((cache.snapshot(), newest.clone())),
                    Op::Read(s, k) if !snapshots.is_empty() => {
                        let (snap, seen) = &snapshots[s % snapshots.len()];
                        let mut attempt = Attempt::new(snap.clone());
                        let read = attempt.read(key(k));
                        match seen.get(&k) {
                            None => prop_assert_eq!(read, Read::Miss),
                            Some(&v) => {
                                prop_assert_eq!(read, Read::Value(Some(json!(v))));
                                prop_assert_eq!(attempt.reads().get(&key(k)), Some(Version(v)));
                            }
                        }
                    }
                    Op::Read(..) => {}
                    Op::Pin(k) => {
                        cache.pin([&key(k)]);
                        *pins.entry(k).or_default() += 1;
                    }
                    Op::Unpin(k) => {
                        cache.unpin([&key(k)]);
                        if let Some(n) = pins.get_mut(&k) {
                            *n -= 1;
                            if *n == 0 {
                                pins.remove(&k);
                            }
                        }
                    }
                    Op::Evict => {
                        let evicted = cache.evict();
                        let unique: BTreeSet<&Key> = evicted.iter().collect();
                        prop_assert_eq!(unique.len(), evicted.len());
                        for key in &evicted {
                            let Key::Kv { key: k } = key else { unreachable!() };
                            let k: u8 = k.parse().unwrap();
                            prop_assert!(!pins.contains_key(&k), "evicted pinned key {}", k);
                            prop_assert!(newest.remove(&k).is_some(), "evicted uncached key {}", k);
                        }
                        let unpinned = newest.keys().filter(|k| !pins.contains_key(k)).count();
                        prop_assert!(cache.len() <= capacity || unpinned == 0);
                    }
                }
                let held: Vec<u8> = newest.keys().copied().collect();
                let cached: Vec<u8> = cache.keys().iter().map(|key| {
                    let Key::Kv { key: k } = key else { unreachable!() };
                    k.parse().unwrap()
                }).collect();
                prop_assert_eq!(held, cached);
                for (&k, &v) in &newest {
                    prop_assert_eq!(cache.version(&key(k)), Some(Version(v)));
                }
            }
        }
    }
}
