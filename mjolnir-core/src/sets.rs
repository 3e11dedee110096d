//! Read and write sets: what one transaction attempt saw and what it wants to change.

use crate::{Key, Version};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Every key an attempt read, with the version it saw.
///
/// Absent keys are recorded too (at [`Version::ABSENT`] or the version of the delete that
/// removed them): that is what makes two racing inserts of one key conflict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(as = "Vec<ReadEntry>"))]
pub struct ReadSet(BTreeMap<Key, Version>);

impl ReadSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a read. The first version seen wins: an attempt that reads a key twice and
    /// sees two versions has a torn view, and validating the older one makes it abort.
    pub fn record(&mut self, key: Key, version: Version) {
        self.0.entry(key).or_insert(version);
    }

    pub fn get(&self, key: &Key) -> Option<Version> {
        self.0.get(key).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, Version)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.keys()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Key, Version)> for ReadSet {
    fn from_iter<I: IntoIterator<Item = (Key, Version)>>(iter: I) -> Self {
        let mut set = ReadSet::new();
        for (k, v) in iter {
            set.record(k, v);
        }
        set
    }
}

/// One buffered change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum WriteOp {
    /// Create a row (all columns the app sets; the database fills defaults).
    Insert { row: Map<String, Value> },
    /// Change some columns of an existing row. Changing a primary-key column is rejected.
    Update { set: Map<String, Value> },
    /// Set a key/value entry.
    Put { value: Value },
    /// Remove a row or a key/value entry.
    Delete,
}

impl WriteOp {
    /// Applies this op to the value a key had before, giving the value after: how an
    /// attempt reads its own writes.
    pub fn apply(&self, before: Option<&Value>) -> Option<Value> {
        match self {
            WriteOp::Insert { row } => Some(Value::Object(row.clone())),
            WriteOp::Update { set } => {
                let mut row = match before {
                    Some(Value::Object(m)) => m.clone(),
                    _ => Map::new(),
                };
                row.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(Value::Object(row))
            }
            WriteOp::Put { value } => Some(value.clone()),
            WriteOp::Delete => None,
        }
    }

    /// The single op equivalent to `self` followed by `next` on the same key.
    pub fn then(self, next: WriteOp) -> WriteOp {
        match (self, next) {
            (WriteOp::Insert { mut row }, WriteOp::Update { set }) => {
                row.extend(set);
                WriteOp::Insert { row }
            }
            (WriteOp::Update { mut set }, WriteOp::Update { set: more }) => {
                set.extend(more);
                WriteOp::Update { set }
            }
            // Otherwise the later op decides. A delete followed by an insert of the same
            // key becomes a plain insert, which the server refuses while the row exists:
            // see "known limits" in docs/architecture.md.
            (_, next) => next,
        }
    }
}

/// One entry of a [`WriteSet`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Write {
    pub key: Key,
    #[serde(flatten)]
    pub op: WriteOp,
}

/// Every change an attempt buffered, at most one (merged) op per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(as = "Vec<Write>"))]
pub struct WriteSet(BTreeMap<Key, WriteOp>);

impl WriteSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers `op`, merging it with an earlier op on the same key. Inserting a row and
    /// deleting it again in one attempt leaves nothing to write (the read, if any, stays in
    /// the read set).
    pub fn push(&mut self, key: Key, op: WriteOp) {
        let merged = match (self.0.remove(&key), op) {
            (Some(WriteOp::Insert { .. }), WriteOp::Delete) => return,
            (Some(prev), op) => prev.then(op),
            (None, op) => op,
        };
        self.0.insert(key, merged);
    }

    pub fn get(&self, key: &Key) -> Option<&WriteOp> {
        self.0.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &WriteOp)> {
        self.0.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.keys()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for WriteSet {
    type Item = (Key, WriteOp);
    type IntoIter = std::collections::btree_map::IntoIter<Key, WriteOp>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Wire form of a read: `{"key": …, "version": "12"}`.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ReadEntry {
    pub key: Key,
    pub version: Version,
}

impl Serialize for ReadSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(key, version)| ReadEntry {
            key: key.clone(),
            version: *version,
        }))
    }
}

impl<'de> Deserialize<'de> for ReadSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<ReadEntry>::deserialize(d)?;
        let mut set = BTreeMap::new();
        for e in entries {
            if set.insert(e.key.clone(), e.version).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "key {} read twice in one read set",
                    e.key
                )));
            }
        }
        Ok(ReadSet(set))
    }
}

impl Serialize for WriteSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(key, op)| Write {
            key: key.clone(),
            op: op.clone(),
        }))
    }
}

impl<'de> Deserialize<'de> for WriteSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let writes = Vec::<Write>::deserialize(d)?;
        let mut set = BTreeMap::new();
        for w in writes {
            if set.contains_key(&w.key) {
                return Err(serde::de::Error::custom(format!(
                    "key {} written twice in one write set",
                    w.key
                )));
            }
            set.insert(w.key, w.op);
        }
        Ok(WriteSet(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn update_after_insert_stays_an_insert() {
        let mut w = WriteSet::new();
        let k = Key::row("users", "zoe");
        w.push(
            k.clone(),
            WriteOp::Insert {
                row: obj(json!({"name": "zoe", "balance": 0})),
            },
        );
        w.push(
            k.clone(),
            WriteOp::Update {
                set: obj(json!({"balance": 5})),
            },
        );
        assert_eq!(
            w.get(&k),
            Some(&WriteOp::Insert {
                row: obj(json!({"name": "zoe", "balance": 5}))
            })
        );
    }

    #[test]
    fn inserting_and_deleting_a_new_row_writes_nothing() {
        let mut w = WriteSet::new();
        let k = Key::row("todos", 1);
        w.push(
            k.clone(),
            WriteOp::Insert {
                row: obj(json!({"title": "x"})),
            },
        );
        w.push(k.clone(), WriteOp::Delete);
        assert!(w.is_empty());
    }

    #[test]
    fn reads_see_own_writes() {
        let before = json!({"name": "alice", "balance": 100});
        let op = WriteOp::Update {
            set: obj(json!({"balance": 90})),
        };
        assert_eq!(
            op.apply(Some(&before)),
            Some(json!({"name": "alice", "balance": 90}))
        );
        assert_eq!(WriteOp::Delete.apply(Some(&before)), None);
    }

    #[test]
    fn first_read_version_wins() {
        let mut r = ReadSet::new();
        r.record(Key::kv("a"), Version(3));
        r.record(Key::kv("a"), Version(5));
        assert_eq!(r.get(&Key::kv("a")), Some(Version(3)));
    }

    #[test]
    fn duplicate_keys_on_the_wire_are_rejected() {
        let k = json!({"kind": "kv", "key": "a"});
        let reads = json!([{"key": k, "version": "1"}, {"key": k, "version": "2"}]);
        assert!(serde_json::from_value::<ReadSet>(reads).is_err());
        let writes = json!([{"key": k, "op": "delete"}, {"key": k, "op": "put", "value": 1}]);
        assert!(serde_json::from_value::<WriteSet>(writes).is_err());
    }
}
