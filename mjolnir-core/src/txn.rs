//! One transaction attempt as a client builds it.

use crate::{Key, ReadSet, Version, WriteOp, WriteSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A client-chosen id naming one logical transaction across its re-sends.
///
/// The server remembers the outcome of every committed id, so a commit re-sent after a lost
/// reply is answered with the original outcome instead of being applied twice. Retries
/// after a conflict are new attempts and take new ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TxnId(pub String);

impl TxnId {
    /// Ids longer than this are refused: the server stores every committed one.
    pub const MAX_LEN: usize = 128;
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reads and buffered writes of one attempt.
///
/// Reads record the version seen; writes are merged per key. [`Transaction::view`] gives
/// read-your-writes on top of whatever the caller read.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    pub reads: ReadSet,
    pub writes: WriteSet,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key` was read at `version` and returns what the attempt sees there:
    /// `value` with this attempt's own writes applied.
    pub fn read(&mut self, key: Key, version: Version, value: Option<&Value>) -> Option<Value> {
        let seen = self.view(&key, value);
        self.reads.record(key, version);
        seen
    }

    /// What this attempt sees at `key`, given the committed `value` it read.
    pub fn view(&self, key: &Key, value: Option<&Value>) -> Option<Value> {
        match self.writes.get(key) {
            Some(op) => op.apply(value),
            None => value.cloned(),
        }
    }

    pub fn write(&mut self, key: Key, op: WriteOp) {
        self.writes.push(key, op);
    }

    /// True when there is nothing for the server to check or apply.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_attempt_reads_its_own_writes() {
        let mut t = Transaction::new();
        let k = Key::row("users", "alice");
        let committed = json!({"name": "alice", "balance": 100});
        let seen = t.read(k.clone(), Version(4), Some(&committed)).unwrap();
        assert_eq!(seen["balance"], 100);
        t.write(
            k.clone(),
            WriteOp::Update {
                set: json!({"balance": 60}).as_object().unwrap().clone(),
            },
        );
        assert_eq!(t.view(&k, Some(&committed)).unwrap()["balance"], 60);
        assert_eq!(t.reads.get(&k), Some(Version(4)));
        assert!(!t.is_read_only());
    }
}
