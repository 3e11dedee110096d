//! What a page sees beyond what the server has confirmed: the writes of its transactions
//! still in flight.
//!
//! A page pipelines its transactions (see [`crate::engine`]): a handler runs while the
//! page's earlier commits are in flight and sees their writes, as if they had committed,
//! so the user sees a click's effect at once. A [`Speculation`] holds, for each key such a
//! transaction writes, the last of them in send order and the value it gives the key. A
//! read of such a key is not a read at a version (the page does not know the version its
//! own transaction will get) but a [`Dependency`] on that transaction, which the server
//! validates when it decides the reader.
//!
//! Pending effects are the page's own: other clients see only committed state.
//!
//! It also holds, for a while, the rows the page's transactions wrote that have committed
//! ([`Settling`]): the reply to a commit arrives a moment before the push that brings the
//! new results of the queries it changed (the server re-runs them after the commit), and
//! in between the cached result of a query would leave out a row the page inserted, which
//! the page showed while its commit was in flight.

use crate::{Dependency, Key, TxnId, Version};
use serde_json::Value;
use std::sync::Arc;

/// A key as an in-flight transaction of this page leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub txn: TxnId,
    /// `None`: the transaction deletes the key.
    pub value: Option<Value>,
}

impl Pending {
    /// A read of this value, as sent with the reader's commit.
    pub fn dependency(&self, key: Key) -> Dependency {
        Dependency {
            key,
            after: self.txn.clone(),
            value: self.value.clone(),
        }
    }
}

/// A row a transaction of the page wrote, committed at `version`, whose queries' new
/// results may not have arrived yet: kept until a push of `version` or later has (the
/// server pushes a connection's changes in commit order, and a commit's changed query
/// results in the same push as its rows).
#[derive(Clone, Debug, PartialEq)]
pub struct Settling {
    pub key: Key,
    pub version: Version,
    /// The row before that commit, as the cache held it; `None`: absent.
    pub before: Option<Value>,
    /// The row as that commit left it; `None`: deleted.
    pub after: Option<Value>,
}

/// At most this many committed rows wait for their push: a push that never comes (a key
/// evicted meanwhile, so not pushed) cannot make the list grow.
const MAX_SETTLING: usize = 256;

/// The writes of a page's in-flight transactions, the last writer of each key winning;
/// and its committed writes waiting for their push ([`Settling`]).
///
/// Cloned into every attempt, so shared: O(1) to clone. A list searched from its end
/// rather than a persistent map: a page has tens of writes in flight, not thousands, and
/// one more instance of a persistent map's code would be shipped in the browser module
/// (measured in docs/client.md, "Shipped size").
#[derive(Clone, Debug, Default)]
pub struct Speculation {
    pending: Arc<Vec<(Key, Pending)>>,
    settling: Arc<Vec<Settling>>,
    /// The latest push: a commit's reply may come after its push.
    pushed: Version,
}

impl Speculation {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same committed writes waiting for their push, and no write in flight: what
    /// the speculation is rebuilt from.
    pub fn settled_only(&self) -> Self {
        Speculation {
            pending: Arc::default(),
            settling: self.settling.clone(),
            pushed: self.pushed,
        }
    }

    /// Layers transaction `txn`'s writes (each key's value after it) on top.
    pub fn push(&mut self, txn: &TxnId, written: &[(Key, Option<Value>)]) {
        let layers = Arc::make_mut(&mut self.pending);
        for (key, value) in written {
            layers.push((
                key.clone(),
                Pending {
                    txn: txn.clone(),
                    value: value.clone(),
                },
            ));
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Pending> {
        self.pending
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p)
    }

    /// Whether no write is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Rows written by a transaction that committed at `version`, until a push of that
    /// version or later arrives ([`Speculation::pushed`]).
    pub fn settle(&mut self, rows: impl IntoIterator<Item = Settling>) {
        let pushed = self.pushed;
        let list = Arc::make_mut(&mut self.settling);
        list.extend(rows.into_iter().filter(|s| s.version > pushed));
        let excess = list.len().saturating_sub(MAX_SETTLING);
        list.drain(..excess);
    }

    /// A push of `version` arrived: the commits up to it have brought their queries' new
    /// results (or changed none).
    pub fn pushed(&mut self, version: Version) {
        self.pushed = self.pushed.max(version);
        if self.settling.iter().any(|s| s.version <= version) {
            Arc::make_mut(&mut self.settling).retain(|s| s.version > version);
        }
    }

    /// The committed rows of `table` that a result read at `version` does not show yet,
    /// each once: its value before the first such commit, and after the last.
    pub fn settling_of(&self, table: &str, version: Version) -> Vec<Settling> {
        let mut rows: Vec<Settling> = Vec::new();
        for s in self.settling.iter() {
            if s.version <= version || s.key.table() != Some(table) {
                continue;
            }
            match rows.iter_mut().find(|r| r.key == s.key) {
                Some(r) => {
                    r.after.clone_from(&s.after);
                    r.version = s.version;
                }
                None => rows.push(s.clone()),
            }
        }
        rows
    }

    /// The rows of `table` that in-flight transactions write, each once, with the value
    /// the last of them gives it, in the order they were first written.
    pub fn rows_of(&self, table: &str) -> Vec<(Key, Option<Value>)> {
        let mut rows: Vec<(Key, Option<Value>)> = Vec::new();
        for (key, pending) in self.pending.iter() {
            if key.table() != Some(table) || !matches!(key, Key::Row { .. }) {
                continue;
            }
            match rows.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = pending.value.clone(),
                None => rows.push((key.clone(), pending.value.clone())),
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_committed_row_settles_until_a_push_of_its_version() {
        let mut s = Speculation::new();
        let row = |n: i64| Key::row("t", n);
        let settling = |n: i64, v: u64, before: Option<Value>, after: Option<Value>| Settling {
            key: row(n),
            version: Version(v),
            before,
            after,
        };
        s.settle([settling(1, 5, None, Some(json!({"n": 1})))]);
        s.settle([
            settling(1, 7, Some(json!({"n": 1})), Some(json!({"n": 2}))),
            settling(2, 7, None, Some(json!({"n": 3}))),
        ]);
        s.push(&TxnId("p:9".into()), &[(Key::kv("x"), None)]);
        let rebuilt = s.settled_only();
        assert!(rebuilt.is_empty() && rebuilt.get(&Key::kv("x")).is_none());
        // A result read at 4 shows neither commit: row 1 from absent to its last value.
        assert_eq!(
            rebuilt.settling_of("t", Version(4)),
            vec![
                settling(1, 7, None, Some(json!({"n": 2}))),
                settling(2, 7, None, Some(json!({"n": 3})))
            ]
        );
        assert_eq!(rebuilt.settling_of("t", Version(7)), vec![]);
        assert_eq!(rebuilt.settling_of("u", Version(4)), vec![]);
        s.pushed(Version(5));
        assert_eq!(s.settling_of("t", Version(0)).len(), 2);
        assert_eq!(
            s.settling_of("t", Version(0))[0].before,
            Some(json!({"n": 1}))
        );
        s.pushed(Version(8));
        assert_eq!(s.settling_of("t", Version(0)), vec![]);
        // A commit whose push came before its reply has nothing left to wait for.
        s.settle([settling(3, 8, None, None)]);
        assert_eq!(s.settling_of("t", Version(0)), vec![]);
        s.settle((0..300).map(|n| settling(n, 9, None, None)));
        assert_eq!(s.settling_of("t", Version(0)).len(), MAX_SETTLING);
    }

    #[test]
    fn the_last_writer_of_a_key_wins_and_others_stay() {
        let mut s = Speculation::new();
        let (a, b) = (Key::kv("a"), Key::kv("b"));
        s.push(
            &TxnId("p:1".into()),
            &[(a.clone(), Some(json!(1))), (b.clone(), Some(json!(1)))],
        );
        let before = s.clone();
        s.push(&TxnId("p:2".into()), &[(a.clone(), None)]);
        assert_eq!(s.get(&a).map(|p| p.txn.0.as_str()), Some("p:2"));
        assert_eq!(s.get(&a).and_then(|p| p.value.clone()), None);
        assert_eq!(s.get(&b).map(|p| p.txn.0.as_str()), Some("p:1"));
        assert_eq!(
            before.get(&a).and_then(|p| p.value.clone()),
            Some(json!(1)),
            "a clone taken before is not changed"
        );
        assert_eq!(
            s.get(&b).unwrap().dependency(b.clone()),
            Dependency {
                key: b,
                after: TxnId("p:1".into()),
                value: Some(json!(1))
            }
        );
    }
}
