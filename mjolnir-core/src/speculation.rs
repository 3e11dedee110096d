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

use crate::{Dependency, Key, TxnId};
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

/// The writes of a page's in-flight transactions, the last writer of each key winning.
///
/// Cloned into every attempt, so shared: O(1) to clone. A list searched from its end
/// rather than a persistent map: a page has tens of writes in flight, not thousands, and
/// one more instance of a persistent map's code would be shipped in the browser module
/// (measured in docs/client.md, "Shipped size").
#[derive(Clone, Debug, Default)]
pub struct Speculation(Arc<Vec<(Key, Pending)>>);

impl Speculation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Layers transaction `txn`'s writes (each key's value after it) on top.
    pub fn push(&mut self, txn: &TxnId, written: &[(Key, Option<Value>)]) {
        let layers = Arc::make_mut(&mut self.0);
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
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, p)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rows of `table` that in-flight transactions write, each once, with the value
    /// the last of them gives it, in the order they were first written.
    pub fn rows_of(&self, table: &str) -> Vec<(Key, Option<Value>)> {
        let mut rows: Vec<(Key, Option<Value>)> = Vec::new();
        for (key, pending) in self.0.iter() {
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
