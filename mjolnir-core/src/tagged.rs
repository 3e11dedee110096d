//! Deserializers for the wire's tagged types that the browser runtime reads: [`Key`] (tagged
//! by `kind`), [`Pk`] (a number or a string) and [`ServerMessage`] (tagged by `type`).
//!
//! serde's derived deserializer for an internally tagged or untagged enum first copies the
//! whole value into its private `Content` tree, because the tag may come after the fields
//! it decides, then deserializes the variant again from that copy. That costs a second pass
//! per message and, in the wasm, a second instantiation of every nested type's deserializer
//! against `Content`: about a fifth of the module. These read each field once, in place,
//! into a slot per field name, and check the slots against the tag at the end. They accept
//! and refuse what the derived ones did (`deny_unknown_fields` included) and serialize is
//! still derived, so the wire format is unchanged; `protocol.rs` tests the round trips.

use crate::protocol::{Entry, ErrorReply, ServerMessage, TableInfo};
use crate::{Key, Pk, Query, TxnId, Version};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// Reads a map key as its index in `names`, refusing any other name.
struct FieldIndex(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for FieldIndex {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| E::unknown_field(name, self.0))
    }
}

/// Which of `names` a map held. The first name is the tag.
struct Seen {
    names: &'static [&'static str],
    bits: u32,
}

impl Seen {
    fn new(names: &'static [&'static str]) -> Self {
        debug_assert!(names.len() <= 32);
        Seen { names, bits: 0 }
    }

    /// Reads the next key, refusing a name given twice.
    fn next<'de, A: MapAccess<'de>>(&mut self, map: &mut A) -> Result<Option<usize>, A::Error> {
        let Some(i) = map.next_key_seed(FieldIndex(self.names))? else {
            return Ok(None);
        };
        if self.has(i) {
            return Err(A::Error::duplicate_field(self.names[i]));
        }
        self.bits |= 1 << i;
        Ok(Some(i))
    }

    fn has(&self, i: usize) -> bool {
        self.bits & (1 << i) != 0
    }

    /// Whether the map held `name`, whatever its value (`null` included).
    fn given(&self, name: &str) -> bool {
        self.names
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.has(i))
    }

    /// Refuses any field the variant does not have: as `deny_unknown_fields` did, a field
    /// of another variant is unknown to this one.
    fn only<E: de::Error>(&self, allowed: &'static [&'static str]) -> Result<(), E> {
        for (i, name) in self.names.iter().enumerate().skip(1) {
            if self.has(i) && !allowed.contains(name) {
                return Err(E::unknown_field(name, allowed));
            }
        }
        Ok(())
    }
}

fn required<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| E::missing_field(name))
}

impl<'de> Deserialize<'de> for Pk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pk, D::Error> {
        d.deserialize_any(PkVisitor)
    }
}

struct PkVisitor;

impl Visitor<'_> for PkVisitor {
    type Value = Pk;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Pk, E> {
        Ok(Pk::Int(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Pk, E> {
        i64::try_from(n)
            .map(Pk::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Pk, E> {
        Ok(Pk::Text(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Pk, E> {
        Ok(Pk::Text(s))
    }
}

const KEY_FIELDS: &[&str] = &[
    "kind", "table", "pk", "key", "where", "order", "limit", "count", "search",
];

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeyKind {
    Row,
    Kv,
    Query,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_map(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key: an object with `kind` \"row\", \"kv\" or \"query\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let mut seen = Seen::new(KEY_FIELDS);
        let (mut kind, mut table, mut pk, mut key) = (None, None, None, None);
        let mut query = Query::table("");
        while let Some(i) = seen.next(&mut map)? {
            match i {
                0 => kind = Some(map.next_value::<KeyKind>()?),
                1 => table = Some(map.next_value::<String>()?),
                2 => pk = Some(map.next_value::<Pk>()?),
                3 => key = Some(map.next_value::<String>()?),
                4 => query.filter = map.next_value()?,
                5 => query.order = map.next_value()?,
                6 => query.limit = map.next_value()?,
                7 => query.count = map.next_value()?,
                _ => query.search = map.next_value()?,
            }
        }
        match required(kind, "kind")? {
            KeyKind::Row => {
                seen.only(&["table", "pk"])?;
                Ok(Key::Row {
                    table: required(table, "table")?,
                    pk: required(pk, "pk")?,
                })
            }
            KeyKind::Kv => {
                seen.only(&["key"])?;
                Ok(Key::Kv {
                    key: required(key, "key")?,
                })
            }
            KeyKind::Query => {
                seen.only(&["table", "where", "order", "limit", "count", "search"])?;
                query.table = required(table, "table")?;
                Ok(Key::query(query))
            }
        }
    }
}

const SERVER_FIELDS: &[&str] = &[
    "type", "protocol", "user", "instance", "tables", "id", "entries", "txn", "version", "stale",
    "error", "changes",
];

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ServerType {
    Welcome,
    Values,
    Committed,
    Conflict,
    Rejected,
    Push,
    Error,
}

impl<'de> Deserialize<'de> for ServerMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerMessage, D::Error> {
        d.deserialize_map(ServerMessageVisitor)
    }
}

struct ServerMessageVisitor;

/// One slot per name in [`SERVER_FIELDS`] after the tag. `id` is a number in `values` and
/// may be null in `error`, so it is read as the looser of the two and checked at the end;
/// `user` may be null, which is the same as leaving it out.
#[derive(Default)]
struct ServerSlots {
    protocol: Option<u32>,
    user: Option<String>,
    instance: Option<String>,
    tables: Option<BTreeMap<String, TableInfo>>,
    id: Option<u32>,
    entries: Option<Vec<Entry>>,
    txn: Option<TxnId>,
    version: Option<Version>,
    stale: Option<Vec<Entry>>,
    error: Option<ErrorReply>,
    changes: Option<Vec<Entry>>,
}

impl<'de> Visitor<'de> for ServerMessageVisitor {
    type Value = ServerMessage;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a server message: an object with a string field `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerMessage, A::Error> {
        let mut seen = Seen::new(SERVER_FIELDS);
        let mut tag = None;
        let mut s = ServerSlots::default();
        while let Some(i) = seen.next(&mut map)? {
            match i {
                0 => tag = Some(map.next_value::<ServerType>()?),
                1 => s.protocol = Some(map.next_value()?),
                2 => s.user = map.next_value()?,
                3 => s.instance = Some(map.next_value()?),
                4 => s.tables = Some(map.next_value()?),
                5 => s.id = map.next_value()?,
                6 => s.entries = Some(map.next_value()?),
                7 => s.txn = Some(map.next_value()?),
                8 => s.version = Some(map.next_value()?),
                9 => s.stale = Some(map.next_value()?),
                10 => s.error = Some(map.next_value()?),
                _ => s.changes = Some(map.next_value()?),
            }
        }
        Ok(match required(tag, "type")? {
            ServerType::Welcome => {
                seen.only(&["protocol", "user", "instance", "tables"])?;
                ServerMessage::Welcome {
                    protocol: required(s.protocol, "protocol")?,
                    user: s.user,
                    instance: required(s.instance, "instance")?,
                    tables: s.tables.unwrap_or_default(),
                }
            }
            ServerType::Values => {
                seen.only(&["id", "entries"])?;
                let id = match s.id {
                    Some(id) => id,
                    None if seen.given("id") => {
                        return Err(A::Error::invalid_type(
                            de::Unexpected::Unit,
                            &"a u32 read id",
                        ));
                    }
                    None => return Err(A::Error::missing_field("id")),
                };
                ServerMessage::Values {
                    id,
                    entries: required(s.entries, "entries")?,
                }
            }
            ServerType::Committed => {
                seen.only(&["txn", "version"])?;
                ServerMessage::Committed {
                    txn: required(s.txn, "txn")?,
                    version: required(s.version, "version")?,
                }
            }
            ServerType::Conflict => {
                seen.only(&["txn", "stale"])?;
                ServerMessage::Conflict {
                    txn: required(s.txn, "txn")?,
                    stale: required(s.stale, "stale")?,
                }
            }
            ServerType::Rejected => {
                seen.only(&["txn", "error"])?;
                ServerMessage::Rejected {
                    txn: required(s.txn, "txn")?,
                    error: required(s.error, "error")?,
                }
            }
            ServerType::Push => {
                seen.only(&["version", "changes"])?;
                ServerMessage::Push {
                    version: required(s.version, "version")?,
                    changes: required(s.changes, "changes")?,
                }
            }
            ServerType::Error => {
                seen.only(&["id", "error"])?;
                ServerMessage::Error {
                    id: s.id,
                    error: required(s.error, "error")?,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde_json::json;

    fn server(v: serde_json::Value) -> Result<ServerMessage, String> {
        ServerMessage::parse(&v.to_string()).map_err(|e| e.to_string())
    }

    fn key(v: serde_json::Value) -> Result<Key, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn the_tag_may_come_last() {
        assert_eq!(
            server(json!({"txn": "t1", "version": "9", "type": "committed"})),
            Ok(ServerMessage::Committed {
                txn: TxnId("t1".into()),
                version: Version(9)
            })
        );
        assert_eq!(
            key(json!({"pk": 7, "table": "todos", "kind": "row"})),
            Ok(Key::row("todos", 7))
        );
    }

    #[test]
    fn optional_fields_may_be_left_out_or_null() {
        let welcome = ServerMessage::Welcome {
            protocol: 1,
            user: None,
            instance: "i".into(),
            tables: BTreeMap::new(),
        };
        assert_eq!(
            server(json!({"type": "welcome", "protocol": 1, "instance": "i"})),
            Ok(welcome.clone())
        );
        assert_eq!(
            server(json!({"type": "welcome", "protocol": 1, "instance": "i", "user": null})),
            Ok(welcome)
        );
        let error = ErrorReply::new(ErrorKind::Malformed, "bad");
        assert_eq!(
            server(json!({"type": "error", "id": null, "error": error})),
            Ok(ServerMessage::Error { id: None, error })
        );
    }

    #[test]
    fn what_the_derived_deserializers_refused_is_refused() {
        let refused = [
            // No tag, or an unknown one.
            (json!({"txn": "t", "version": "1"}), "missing field `type`"),
            (json!({"type": "hello"}), "unknown variant `hello`"),
            // A field no message has, and a field of another message.
            (
                json!({"type": "committed", "txn": "t", "version": "1", "extra": 1}),
                "unknown field `extra`",
            ),
            (
                json!({"type": "committed", "txn": "t", "version": "1", "stale": []}),
                "unknown field `stale`, expected `txn` or `version`",
            ),
            // A required field left out, null or of the wrong type.
            (
                json!({"type": "committed", "txn": "t"}),
                "missing field `version`",
            ),
            (
                json!({"type": "values", "entries": []}),
                "missing field `id`",
            ),
            (
                json!({"type": "values", "id": null, "entries": []}),
                "invalid type: null",
            ),
            (
                json!({"type": "values", "id": "1", "entries": []}),
                "invalid type: string",
            ),
        ];
        for (message, why) in refused {
            let err = server(message.clone()).expect_err(&message.to_string());
            assert!(err.contains(why), "{message}: {err}");
        }
        let twice = r#"{"type": "committed", "txn": "t", "txn": "u", "version": "1"}"#;
        let err = ServerMessage::parse(twice).unwrap_err().to_string();
        assert!(err.contains("duplicate field `txn`"), "{err}");
        for (k, why) in [
            (json!({"table": "t", "pk": 1}), "missing field `kind`"),
            (json!({"kind": "row", "pk": 1}), "missing field `table`"),
            (
                json!({"kind": "kv", "key": "k", "pk": 1}),
                "unknown field `pk`",
            ),
            (json!({"kind": "doc", "key": "k"}), "unknown variant `doc`"),
            (
                json!({"kind": "row", "table": "t", "pk": 1.5}),
                "an integer or a string",
            ),
            (
                json!({"kind": "row", "table": "t", "pk": u64::MAX}),
                "invalid value",
            ),
            (
                json!({"kind": "row", "table": "t", "pk": null}),
                "invalid type: null",
            ),
            (json!(["row", "t", 1]), "invalid type: sequence"),
        ] {
            let err = key(k.clone()).expect_err(&k.to_string());
            assert!(err.contains(why), "{k}: {err}");
        }
    }
}
