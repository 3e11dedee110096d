//! Keys: what a transaction reads and writes.

use crate::query::Query;
use serde::Serialize;
use std::fmt;

/// A primary-key value. Apps' tables have a text, integer or uuid primary key; uuids travel
/// as text.
///
/// Integer keys travel as JSON numbers, so they must stay within ±2^53 to survive a trip
/// through JavaScript; the server rejects larger ones with a typed error.
/// Deserialized by hand (`tagged.rs`), not derived, to skip serde's buffering.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Pk {
    Int(#[cfg_attr(feature = "ts", ts(type = "number"))] i64),
    Text(String),
}

impl fmt::Display for Pk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pk::Int(n) => write!(f, "{n}"),
            Pk::Text(s) => f.write_str(&quoted(s)),
        }
    }
}

impl From<&str> for Pk {
    fn from(s: &str) -> Self {
        Pk::Text(s.to_owned())
    }
}

impl From<String> for Pk {
    fn from(s: String) -> Self {
        Pk::Text(s)
    }
}

impl From<i64> for Pk {
    fn from(n: i64) -> Self {
        Pk::Int(n)
    }
}

/// One unit of shared state that has its own [`crate::Version`]: a table row or a
/// key/value entry.
///
/// The derived order is the canonical order of keys in read and write sets, so that equal
/// sets always serialize the same way. Deserialized by hand (`tagged.rs`), not derived, to
/// skip serde's buffering.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Key {
    /// A row of an app table, by primary key.
    Row { table: String, pk: Pk },
    /// An entry of the app's key/value store.
    Kv { key: String },
    /// The result of a query: the primary keys of the rows it matches, in order, or their
    /// count (see [`crate::query`]). Read like a key, never written.
    Query(Box<Query>),
}

impl Key {
    pub fn row(table: impl Into<String>, pk: impl Into<Pk>) -> Key {
        Key::Row {
            table: table.into(),
            pk: pk.into(),
        }
    }

    pub fn kv(key: impl Into<String>) -> Key {
        Key::Kv { key: key.into() }
    }

    pub fn query(query: Query) -> Key {
        Key::Query(Box::new(query))
    }

    /// The table this key is in, if it is a row or a query.
    pub fn table(&self) -> Option<&str> {
        match self {
            Key::Row { table, .. } => Some(table),
            Key::Query(q) => Some(&q.table),
            Key::Kv { .. } => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Row { table, pk } => write!(f, "{table}[{pk}]"),
            Key::Kv { key } => write!(f, "kv[{}]", quoted(key)),
            Key::Query(q) => write!(f, "{q}"),
        }
    }
}

/// `text` as a JSON string literal (which JavaScript reads the same), for messages: a
/// JavaScript developer reads JSON's escapes more easily than `{:?}`'s Rust ones.
pub fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged() {
        let json = serde_json::to_value(Key::row("users", "alice")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "row", "table": "users", "pk": "alice"})
        );
        let json = serde_json::to_value(Key::row("todos", 7)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "row", "table": "todos", "pk": 7})
        );
        let json = serde_json::to_value(Key::kv("motd")).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "kv", "key": "motd"}));
    }

    #[test]
    fn display_names_the_key() {
        assert_eq!(Key::row("users", "alice").to_string(), "users[\"alice\"]");
        assert_eq!(Key::row("todos", 3).to_string(), "todos[3]");
        assert_eq!(Key::kv("a\"b\n").to_string(), r#"kv["a\"b\n"]"#);
    }
}
