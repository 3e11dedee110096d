//! What was committed lately: the newest version at which each key's value changed.
//!
//! Under contention most commits that reach the lane are already lost: every transaction
//! queued behind a batch read before that batch's winner. This memory lets the committer
//! tell such a commit is a conflict before it takes a lane's turn and its locks: a read of
//! version `v` is certainly stale if the key's value changed at `w > v`
//! ([`mjolnir_core::is_stale`], the database's rule in Rust).
//!
//! Each instance learns of its own commits when they are decided, and of every instance's
//! from the change feed (`Store::remember`), a moment later. It is only a shortcut: a key
//! it has not heard of yet, or has forgotten, goes to the database, which decides as
//! before. Two rules keep the shortcut right:
//! - it holds versions, never values: the stale keys' values a conflict carries are read
//!   as the committing user, as every read is, so what the app's policies hide now stays
//!   hidden however the policies were when the value was committed. (A version is no
//!   secret: the database's own check tells a conflict just the same.) Only writes that
//!   changed their key's value are recorded, since one that changed nothing leaves earlier
//!   reads current (migration 0006);
//! - only commits marked as a first send use it (`ClientMessage::Commit::first`): a re-sent
//!   commit may itself have written the key, and only the database's record of committed
//!   txn ids can say so.

use super::Resolved;
use mjolnir_core::Version;
use prometheus_client::metrics::counter::Counter;
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
    /// Conflicts answered from this memory.
    known_stale: Counter,
}

#[derive(Debug, Default)]
struct Generations {
    new: HashMap<Slot, Version>,
    old: HashMap<Slot, Version>,
}

impl Generations {
    fn get(&self, slot: &Slot) -> Option<Version> {
        self.new.get(slot).or_else(|| self.old.get(slot)).copied()
    }
}

impl Recent {
    /// A memory that counts the conflicts it answers in `known_stale`.
    pub(super) fn new(known_stale: Counter) -> Recent {
        Recent {
            inner: Mutex::default(),
            known_stale,
        }
    }

    /// The keys a commit read stale, by what this instance knows was committed since, if
    /// any: a conflict answered without the database. Only for a first send (`first`):
    /// see the module's doc.
    ///
    /// Asked twice per commit: when it arrives, and when a lane takes it, since the batches
    /// committed while it waited in the queue may have made it stale.
    pub(super) fn known_stale(
        &self,
        first: bool,
        reads: &[(Resolved, Version)],
    ) -> Option<Vec<Resolved>> {
        if !first {
            return None;
        }
        let stale = self.stale(reads);
        if stale.is_empty() {
            return None;
        }
        self.known_stale.inc();
        Some(stale)
    }

    /// Remembers that each key's value changed at the version given, keeping the newer
    /// version where one is already known: lanes may report out of version order.
    pub(super) fn record<'a>(&self, changes: impl IntoIterator<Item = (&'a Resolved, Version)>) {
        let mut g = self.inner.lock().expect("recent commits");
        for (r, version) in changes {
            let slot = (r.space.clone(), r.pk.clone());
            if g.get(&slot).is_some_and(|known| known >= version) {
                continue;
            }
            if g.new.len() >= GENERATION && !g.new.contains_key(&slot) {
                g.old = std::mem::take(&mut g.new);
            }
            g.new.insert(slot, version);
        }
    }

    /// The keys read that are certainly stale: their value changed after the version read.
    fn stale<'a>(&self, reads: impl IntoIterator<Item = &'a (Resolved, Version)>) -> Vec<Resolved> {
        let g = self.inner.lock().expect("recent commits");
        if g.new.is_empty() && g.old.is_empty() {
            return Vec::new();
        }
        reads
            .into_iter()
            .filter(|(r, read)| {
                g.get(&(r.space.clone(), r.pk.clone()))
                    .is_some_and(|changed| mjolnir_core::is_stale(*read, changed))
            })
            .map(|(r, _)| r.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mjolnir_core::Key;

    fn kv(name: &str) -> Resolved {
        Resolved {
            key: Key::kv(name),
            space: crate::catalog::KV_SPACE.to_owned(),
            pk: name.to_owned(),
            table: None,
            query: None,
        }
    }

    fn keys(stale: Vec<Resolved>) -> Vec<Key> {
        stale.into_iter().map(|r| r.key).collect()
    }

    #[test]
    fn a_read_older_than_a_known_change_is_stale() {
        let recent = Recent::default();
        let (a, b) = (kv("a"), kv("b"));
        recent.record([(&a, Version(5)), (&b, Version(6))]);
        // Out of order: the older report does not replace the newer one.
        recent.record([(&a, Version(3))]);

        assert!(
            recent.stale(&[(a.clone(), Version(5))]).is_empty(),
            "current"
        );
        assert!(recent.stale(&[(a.clone(), Version(7))]).is_empty(), "newer");
        assert!(recent.stale(&[(kv("c"), Version(0))]).is_empty(), "unknown");
        assert_eq!(
            keys(recent.stale(&[(a.clone(), Version(4)), (b.clone(), Version(6))])),
            vec![Key::kv("a")]
        );
    }

    #[test]
    fn memory_is_bounded_by_two_generations() {
        let recent = Recent::default();
        let keys: Vec<Resolved> = (0..GENERATION * 2 + 1)
            .map(|i| kv(&i.to_string()))
            .collect();
        for (i, r) in keys.iter().enumerate() {
            recent.record([(r, Version(1 + i as u64))]);
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
