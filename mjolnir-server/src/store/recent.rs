//! What was committed lately: the newest version and value of each key written.
//!
//! Under contention most commits that reach the lane are already lost: every transaction
//! queued behind a batch read before that batch's winner. This memory lets the committer
//! answer such a commit as a conflict before it takes a lane's turn, without the database:
//! a read of version `v` is certainly stale if a write of the same key committed at
//! `w > v`, since a key's versions only grow.
//!
//! Each instance learns of its own commits when they are decided, and of every instance's
//! from the change feed (`Store::remember`), a moment later. It is only a shortcut: a key
//! it has not heard of yet, or has forgotten, goes to the database, which decides as
//! before. Two rules keep the shortcut right:
//! - only keys every user reads alike are kept (kv entries and rows of open tables, see
//!   [`Resolved::open_read`]), so the value given back is the one a read would give;
//! - only commits marked as a first send use it (`ClientMessage::Commit::first`): a re-sent
//!   commit may itself have written the key, and only the database's record of committed
//!   txn ids can say so.

use super::Resolved;
use mjolnir_core::Version;
use mjolnir_core::protocol::Entry;
use std::collections::HashMap;
use std::sync::Mutex;

/// How many keys one generation holds. When it fills, it becomes the old generation and the
/// one before is dropped, so at most twice this many keys are kept. Hot keys, the ones
/// this is for, are written again long before they would be dropped.
const GENERATION: usize = 8_192;

/// `(space, pk)` of a key, as [`Resolved`] has them.
type Slot = (String, String);

#[derive(Debug, Default)]
pub(super) struct Recent {
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    new: HashMap<Slot, Entry>,
    old: HashMap<Slot, Entry>,
}

impl Generations {
    fn get(&self, slot: &Slot) -> Option<&Entry> {
        self.new.get(slot).or_else(|| self.old.get(slot))
    }
}

impl Recent {
    /// Remembers committed changes (each with the key it resolved to), keeping the newer
    /// entry where one is already known: lanes may report out of version order.
    pub(super) fn record<'a>(&self, changes: impl IntoIterator<Item = (&'a Resolved, &'a Entry)>) {
        let mut g = self.inner.lock().expect("recent commits");
        for (r, entry) in changes {
            if !r.open_read() {
                continue;
            }
            let slot = (r.space.clone(), r.pk.clone());
            if g.get(&slot)
                .is_some_and(|known| known.version >= entry.version)
            {
                continue;
            }
            if g.new.len() >= GENERATION && !g.new.contains_key(&slot) {
                g.old = std::mem::take(&mut g.new);
            }
            g.new.insert(slot, entry.clone());
        }
    }

    /// The newer entries known for the reads that are certainly stale; empty if none is.
    pub(super) fn stale<'a>(
        &self,
        reads: impl IntoIterator<Item = &'a (Resolved, Version)>,
    ) -> Vec<Entry> {
        let g = self.inner.lock().expect("recent commits");
        if g.new.is_empty() && g.old.is_empty() {
            return Vec::new();
        }
        reads
            .into_iter()
            .filter_map(|(r, read)| {
                let known = g.get(&(r.space.clone(), r.pk.clone()))?;
                (known.version > *read).then(|| known.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mjolnir_core::Key;
    use serde_json::json;

    fn kv(name: &str) -> Resolved {
        Resolved {
            key: Key::kv(name),
            space: crate::catalog::KV_SPACE.to_owned(),
            pk: name.to_owned(),
            table: None,
        }
    }

    fn entry(name: &str, version: u64, value: i64) -> Entry {
        Entry {
            key: Key::kv(name),
            version: Version(version),
            value: Some(json!(value)),
        }
    }

    #[test]
    fn a_read_older_than_a_known_write_is_stale_and_gets_the_newest_value() {
        let recent = Recent::default();
        let (a, b) = (kv("a"), kv("b"));
        recent.record([(&a, &entry("a", 5, 50)), (&b, &entry("b", 6, 60))]);
        // Out of order: the older report does not replace the newer one.
        recent.record([(&a, &entry("a", 3, 30))]);

        assert!(
            recent.stale(&[(a.clone(), Version(5))]).is_empty(),
            "current"
        );
        assert!(recent.stale(&[(a.clone(), Version(7))]).is_empty(), "newer");
        assert!(recent.stale(&[(kv("c"), Version(0))]).is_empty(), "unknown");
        assert_eq!(
            recent.stale(&[(a.clone(), Version(4)), (b.clone(), Version(6))]),
            vec![entry("a", 5, 50)]
        );
    }

    #[test]
    fn memory_is_bounded_by_two_generations() {
        let recent = Recent::default();
        let keys: Vec<Resolved> = (0..GENERATION * 2 + 1)
            .map(|i| kv(&i.to_string()))
            .collect();
        for (i, r) in keys.iter().enumerate() {
            recent.record([(r, &entry(&r.pk, 1 + i as u64, 0))]);
        }
        let g = recent.inner.lock().unwrap();
        assert!(g.new.len() + g.old.len() <= GENERATION * 2);
        drop(g);
        // The first generation is gone; the newest key is kept.
        assert!(recent.stale(&[(keys[0].clone(), Version(0))]).is_empty());
        assert_eq!(
            recent
                .stale(&[(keys[GENERATION * 2].clone(), Version(0))])
                .len(),
            1
        );
    }
}
