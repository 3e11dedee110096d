//! Dependencies: reads of values an earlier, still unanswered commit of the same page wrote.
//!
//! A page pipelines its transactions: a handler runs while the page's earlier commits are
//! in flight, and its commit is sent at once. A read of a key that such an earlier
//! transaction `T` wrote cannot name a version (the page does not know `T`'s yet), so it is
//! sent as a [`Dependency`]: "I read `key` as `T` left it, and saw `value`". The server
//! accepts it only if `T` committed, nothing changed `key` since, and `key` holds `value`
//! (see "Pipelined commits" in `docs/architecture.md`).

use crate::{Key, ReadSet, TxnId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

/// One read of a key as an earlier transaction of the same user left it.
///
/// On the wire: `{"key": …, "after": "<txn id>", "value": …}`; `value: null` means absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Dependency {
    pub key: Key,
    /// The transaction whose write of `key` was read.
    pub after: TxnId,
    /// The value read: what the page predicted `after` left at `key` (`None`: absent).
    #[serde(default)]
    pub value: Option<Value>,
}

/// Why a commit's dependencies cannot be taken as they are: the message for a `malformed`
/// refusal, or `None` if they are well formed. A key may be named once across `reads` and
/// `deps` (one read per key, as in a read set), and `after` must be a possible txn id.
pub fn misnamed(reads: &ReadSet, deps: &[Dependency]) -> Option<String> {
    let mut seen = BTreeSet::new();
    for d in deps {
        if d.after.0.is_empty() || d.after.0.len() > TxnId::MAX_LEN {
            return Some(format!(
                "dependency on {}: transaction ids are 1 to {} bytes",
                d.key,
                TxnId::MAX_LEN
            ));
        }
        if reads.get(&d.key).is_some() || !seen.insert(&d.key) {
            return Some(format!(
                "key {} read twice in one commit (reads and deps)",
                d.key
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;
    use serde_json::json;

    fn dep(key: &str, after: &str) -> Dependency {
        Dependency {
            key: Key::kv(key),
            after: TxnId(after.into()),
            value: Some(json!(1)),
        }
    }

    #[test]
    fn a_key_is_named_once_across_reads_and_deps() {
        let mut reads = ReadSet::new();
        reads.record(Key::kv("a"), Version(3));
        assert_eq!(misnamed(&reads, &[dep("b", "t1"), dep("c", "t1")]), None);
        assert!(misnamed(&reads, &[dep("a", "t1")]).is_some());
        assert!(misnamed(&reads, &[dep("b", "t1"), dep("b", "t2")]).is_some());
    }

    #[test]
    fn after_is_a_possible_txn_id() {
        let reads = ReadSet::new();
        assert!(misnamed(&reads, &[dep("a", "")]).is_some());
        let long = "x".repeat(TxnId::MAX_LEN + 1);
        assert!(misnamed(&reads, &[dep("a", &long)]).is_some());
        let longest = "x".repeat(TxnId::MAX_LEN);
        assert_eq!(misnamed(&reads, &[dep("a", &longest)]), None);
    }

    #[test]
    fn the_wire_form() {
        let d: Dependency = serde_json::from_value(
            json!({"key": {"kind": "kv", "key": "a"}, "after": "c:1", "value": null}),
        )
        .unwrap();
        assert_eq!(d.value, None);
        assert_eq!(
            serde_json::to_value(dep("a", "c:1")).unwrap(),
            json!({"key": {"kind": "kv", "key": "a"}, "after": "c:1", "value": 1})
        );
        // An absent prediction is written out, as `null`.
        let absent = Dependency {
            value: None,
            ..dep("a", "c:1")
        };
        assert_eq!(serde_json::to_value(absent).unwrap()["value"], json!(null));
        assert!(
            serde_json::from_value::<Dependency>(
                json!({"key": {"kind": "kv", "key": "a"}, "after": "c:1", "value": 1, "x": 2})
            )
            .is_err()
        );
    }
}
