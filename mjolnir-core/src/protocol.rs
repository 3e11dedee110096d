//! The wire protocol: JSON text frames over one WebSocket per client.
//!
//! Defined once, here, and used by the server, the native client and the browser runtime.
//! Every message is an object tagged by `type`. See `docs/protocol.md` for the exchange.

use crate::{Dependency, ErrorKind, Key, QueryRead, ReadSet, TxnId, Version, WriteSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Bumped on every incompatible change; the server refuses a hello with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close codes the server uses, beyond the standard ones (1009 for a frame over
/// the size limit, 1001 when the server shuts down).
pub mod close_code {
    /// The hello asked for a protocol version the server does not speak.
    pub const PROTOCOL_VERSION: u16 = 4000;
    /// The first message was not a hello, or the identity was refused.
    pub const HANDSHAKE: u16 = 4001;
    /// The client did not read its pushes and replies fast enough: its outgoing queue filled.
    pub const SLOW_CONSUMER: u16 = 4002;
    /// The server lost its change feed and cannot promise pushes for what the client holds:
    /// reconnect and re-read.
    pub const FEED_LOST: u16 = 4003;
}

/// A value of one key at one version. `value: null` means absent (never written, or
/// deleted at `version`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Entry {
    pub key: Key,
    pub version: Version,
    pub value: Option<Value>,
}

/// What a client needs to know of one app table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TableInfo {
    /// The primary-key column.
    pub pk: String,
    /// How its values look: `text`, `integer` or `uuid`.
    pub pk_kind: PkKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum PkKind {
    Text,
    Integer,
    Uuid,
}

/// A typed refusal. `message` is for people; programs match on `code`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ErrorReply {
    pub code: ErrorKind,
    pub message: String,
    /// The key the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Key>,
}

impl ErrorReply {
    pub fn new(code: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            key: None,
        }
    }

    pub fn with_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum ClientMessage {
    /// First message on every connection.
    Hello {
        protocol: u32,
        /// Stable across reconnects of one client; the server logs it with the connection.
        client_id: String,
        /// The identity the client claims. Only `mjolnir dev` accepts a bare claim.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Read keys at their latest committed versions, and subscribe to their changes.
    Read { id: u32, keys: Vec<Key> },
    /// Validate `reads` and apply `writes` atomically.
    Commit {
        txn: TxnId,
        reads: ReadSet,
        writes: WriteSet,
        /// Set on the first send of `txn` only. Such a commit cannot have been applied
        /// already, so a server that knows one of its reads is stale may answer the
        /// conflict at once, without the database. A re-send after a lost connection
        /// leaves it out: its own first send may have made its reads stale, so only the
        /// database's record of committed ids can answer it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        first: bool,
        /// Reads of keys that earlier transactions of this user wrote, sent before their
        /// outcome was known (pipelining): valid only if each `after` committed, nothing
        /// changed its key since, and the key holds the value read. A key appears at most
        /// once across `reads` and `deps`. Left out when empty, so a commit without
        /// dependencies reads as it did before the field existed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deps: Vec<Dependency>,
        /// The page's previous commit, still unanswered when this one was sent: this one
        /// is decided only if that one committed (as this user); otherwise it is a
        /// conflict with no stale keys. A page that pipelines its commits counts on this:
        /// when one fails, every later one is known to fail too, so the page can undo them
        /// all and run them again without applying any twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        follows: Option<TxnId>,
        /// The queries the attempt read, each with the result it saw: valid only if the
        /// query gives the same result at the commit point (see [`crate::query`]). The
        /// rows it returned are in `reads` (or `deps`) like any other read.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        queries: Vec<QueryRead>,
    },
    /// Stop pushing changes of these keys (the client evicted them from its cache).
    Unsubscribe { keys: Vec<Key> },
}

/// What the server sends. Deserialized by hand (`tagged.rs`), not derived: the browser
/// runtime reads every one of these, and serde's derived reader would buffer each first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum ServerMessage {
    /// Answer to a hello: the identity the server confirmed.
    Welcome {
        protocol: u32,
        #[serde(default)]
        user: Option<String>,
        /// Which server instance this connection landed on (for logs and tests).
        instance: String,
        /// The app's tables, so a client can find the key of a row it inserts.
        #[serde(default)]
        tables: BTreeMap<String, TableInfo>,
    },
    /// Answer to a read: one entry per key asked, in the order asked.
    Values { id: u32, entries: Vec<Entry> },
    /// The commit is durable at `version`.
    Committed { txn: TxnId, version: Version },
    /// Some reads were stale; nothing was applied. `stale` holds the current value of
    /// each stale key so the client can refresh its cache and retry at once.
    Conflict { txn: TxnId, stale: Vec<Entry> },
    /// The commit was refused for a reason retrying cannot fix; nothing was applied.
    Rejected { txn: TxnId, error: ErrorReply },
    /// Keys this connection has read changed in the commit at `version`. Pushes arrive in
    /// commit order.
    Push {
        version: Version,
        changes: Vec<Entry>,
    },
    /// A request (or a frame that could not be understood) was refused. `id` names the
    /// read it answers, when known.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        error: ErrorReply,
    },
}

/// Message types a client may send, for telling a misspelled field from an unknown type.
const CLIENT_TYPES: [&str; 4] = ["hello", "read", "commit", "unsubscribe"];

impl ClientMessage {
    /// A commit sent for the first time, with no dependencies and following nothing: what
    /// a client that does not pipeline sends.
    pub fn commit(txn: TxnId, reads: ReadSet, writes: WriteSet) -> ClientMessage {
        ClientMessage::Commit {
            txn,
            reads,
            writes,
            first: true,
            deps: Vec::new(),
            follows: None,
            queries: Vec::new(),
        }
    }

    /// Parses a frame, telling malformed JSON and unknown message types apart.
    ///
    /// The fast path is one serde pass; only a frame that fails it is parsed again to say
    /// what is wrong with it.
    pub fn parse(text: &str) -> Result<ClientMessage, ErrorReply> {
        match serde_json::from_str(text) {
            Ok(msg) => Ok(msg),
            Err(err) => Err(diagnose(text, err)),
        }
    }

    pub fn to_json(&self) -> String {
        // `expect` would format the error with `Debug`, which the wasm otherwise never needs.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("client messages serialize"))
    }

    /// This message as sent again after a reconnect: a commit loses its `first` mark.
    pub fn resent(mut self) -> ClientMessage {
        if let ClientMessage::Commit { first, .. } = &mut self {
            *first = false;
        }
        self
    }
}

impl ServerMessage {
    pub fn parse(text: &str) -> Result<ServerMessage, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("server messages serialize"))
    }
}

/// The request a client message names, read even from a message that is refused, so that
/// the refusal reaches whatever waits for that request. A client with several commits in
/// flight cannot tell which one an unnamed `error` is about, and would wait for ever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// A commit's `txn`, when it is a string of 1 to [`TxnId::MAX_LEN`] bytes.
    Commit(TxnId),
    /// A read's `id`.
    Read(u32),
}

impl Named {
    /// What `text` names, if it is a JSON object of type `commit` with a readable `txn`, or
    /// of type `read` with a readable `id`, however wrong the rest of it is.
    pub fn of(text: &str) -> Option<Named> {
        let value: Value = serde_json::from_str(text).ok()?;
        match value.get("type")?.as_str()? {
            "commit" => {
                let txn = value.get("txn")?.as_str()?;
                (!txn.is_empty() && txn.len() <= TxnId::MAX_LEN)
                    .then(|| Named::Commit(TxnId(txn.to_owned())))
            }
            "read" => {
                let id = value.get("id")?.as_u64()?;
                Some(Named::Read(u32::try_from(id).ok()?))
            }
            _ => None,
        }
    }
}

fn diagnose(text: &str, err: serde_json::Error) -> ErrorReply {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ErrorReply::new(ErrorKind::Malformed, format!("not JSON: {err}"));
    };
    match value.get("type").and_then(Value::as_str) {
        None => ErrorReply::new(
            ErrorKind::Malformed,
            "expected an object with a string field `type`",
        ),
        Some(t) if !CLIENT_TYPES.contains(&t) => ErrorReply::new(
            ErrorKind::UnknownMessage,
            format!("unknown message type {t:?}"),
        ),
        Some(t) => ErrorReply::new(
            ErrorKind::Malformed,
            format!("invalid {t:?} message: {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pk, WriteOp};

    #[test]
    fn a_refused_message_still_names_its_request() {
        let twice = r#"{"type":"commit","txn":"t-1","reads":[
            {"key":{"kind":"kv","key":"a"},"version":"1"},
            {"key":{"kind":"kv","key":"a"},"version":"1"}],"writes":[]}"#;
        assert!(ClientMessage::parse(twice).is_err());
        assert_eq!(Named::of(twice), Some(Named::Commit(TxnId("t-1".into()))));
        let number = r#"{"type":"commit","txn":"t-2","reads":[
            {"key":{"kind":"kv","key":"a"},"version":1}],"writes":[]}"#;
        assert!(ClientMessage::parse(number).is_err());
        assert_eq!(Named::of(number), Some(Named::Commit(TxnId("t-2".into()))));
        let read = r#"{"type":"read","id":7,"keys":[{"kind":"table"}]}"#;
        assert!(ClientMessage::parse(read).is_err());
        assert_eq!(Named::of(read), Some(Named::Read(7)));
        for unnamed in [
            "{not json",
            r#"{"type":"commit","txn":5}"#,
            r#"{"type":"commit","txn":""}"#,
            r#"{"type":"read","id":-1}"#,
            r#"{"type":"read","id":4294967296}"#,
            r#"{"type":"unsubscribe","txn":"t"}"#,
        ] {
            assert_eq!(Named::of(unnamed), None, "{unnamed}");
        }
        let long = format!(
            r#"{{"type":"commit","txn":"{}"}}"#,
            "x".repeat(TxnId::MAX_LEN + 1)
        );
        assert_eq!(Named::of(&long), None);
    }
    use proptest::prelude::*;
    use serde_json::{Map, json};

    fn arb_key() -> impl Strategy<Value = Key> {
        prop_oneof![
            (
                "[a-z_]{1,8}",
                prop_oneof![any::<i64>().prop_map(Pk::Int), ".{0,8}".prop_map(Pk::Text)]
            )
                .prop_map(|(table, pk)| Key::Row { table, pk }),
            ".{0,12}".prop_map(|key| Key::Kv { key }),
        ]
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        any::<u64>().prop_map(Version)
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            ".{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_row() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    fn arb_op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            arb_row().prop_map(|row| WriteOp::Insert { row }),
            arb_row().prop_map(|set| WriteOp::Update { set }),
            arb_json().prop_map(|value| WriteOp::Put { value }),
            Just(WriteOp::Delete),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (arb_key(), arb_version(), prop::option::of(arb_json())).prop_map(
            |(key, version, value)| {
                // `Some(null)` and `None` are one thing on the wire: absent.
                let value = value.filter(|v| !v.is_null());
                Entry {
                    key,
                    version,
                    value,
                }
            },
        )
    }

    fn arb_error() -> impl Strategy<Value = ErrorReply> {
        (
            prop_oneof![
                Just(ErrorKind::Forbidden),
                Just(ErrorKind::WrongType),
                Just(ErrorKind::Malformed)
            ],
            ".{0,20}",
            prop::option::of(arb_key()),
        )
            .prop_map(|(code, message, key)| ErrorReply { code, message, key })
    }

    fn arb_txn() -> impl Strategy<Value = TxnId> {
        "[a-z0-9:-]{1,40}".prop_map(TxnId)
    }

    fn arb_client() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            (any::<u32>(), ".{0,10}", prop::option::of(".{0,10}")).prop_map(
                |(protocol, client_id, user)| ClientMessage::Hello {
                    protocol,
                    client_id,
                    user
                }
            ),
            (any::<u32>(), prop::collection::vec(arb_key(), 0..5))
                .prop_map(|(id, keys)| ClientMessage::Read { id, keys }),
            (
                arb_txn(),
                prop::collection::vec((arb_key(), arb_version()), 0..5),
                prop::collection::vec((arb_key(), arb_op()), 0..5),
                any::<bool>(),
                prop::collection::vec((arb_key(), arb_txn(), prop::option::of(arb_json())), 0..3)
            )
                .prop_map(|(txn, reads, writes, first, deps)| {
                    let reads = reads.into_iter().collect();
                    let mut ws = WriteSet::new();
                    for (k, op) in writes {
                        ws.push(k, op);
                    }
                    // `Some(null)` and `None` are one thing on the wire: absent.
                    let deps = deps
                        .into_iter()
                        .map(|(key, after, value)| Dependency {
                            key,
                            after,
                            value: value.filter(|v| !v.is_null()),
                        })
                        .collect();
                    ClientMessage::Commit {
                        txn,
                        reads,
                        writes: ws,
                        first,
                        deps,
                        follows: None,
                        queries: Vec::new(),
                    }
                }),
            prop::collection::vec(arb_key(), 0..5)
                .prop_map(|keys| ClientMessage::Unsubscribe { keys }),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerMessage> {
        prop_oneof![
            (
                any::<u32>(),
                prop::option::of(".{0,10}"),
                ".{0,10}",
                prop::collection::btree_map(
                    "[a-z]{1,6}",
                    (
                        "[a-z]{1,6}",
                        prop_oneof![
                            Just(PkKind::Text),
                            Just(PkKind::Integer),
                            Just(PkKind::Uuid)
                        ]
                    )
                        .prop_map(|(pk, pk_kind)| TableInfo { pk, pk_kind }),
                    0..3
                )
            )
                .prop_map(|(protocol, user, instance, tables)| {
                    ServerMessage::Welcome {
                        protocol,
                        user,
                        instance,
                        tables,
                    }
                }),
            (any::<u32>(), prop::collection::vec(arb_entry(), 0..4))
                .prop_map(|(id, entries)| ServerMessage::Values { id, entries }),
            (arb_txn(), arb_version())
                .prop_map(|(txn, version)| ServerMessage::Committed { txn, version }),
            (arb_txn(), prop::collection::vec(arb_entry(), 0..4))
                .prop_map(|(txn, stale)| ServerMessage::Conflict { txn, stale }),
            (arb_txn(), arb_error())
                .prop_map(|(txn, error)| ServerMessage::Rejected { txn, error }),
            (arb_version(), prop::collection::vec(arb_entry(), 0..4))
                .prop_map(|(version, changes)| ServerMessage::Push { version, changes }),
            (prop::option::of(any::<u32>()), arb_error())
                .prop_map(|(id, error)| ServerMessage::Error { id, error }),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_roundtrip(msg in arb_client()) {
            let text = msg.to_json();
            prop_assert_eq!(ClientMessage::parse(&text).unwrap(), msg);
        }

        #[test]
        fn server_messages_roundtrip(msg in arb_server()) {
            let text = msg.to_json();
            prop_assert_eq!(ServerMessage::parse(&text).unwrap(), msg);
        }

        #[test]
        fn garbage_never_panics(text in ".{0,64}") {
            let _ = ClientMessage::parse(&text);
        }
    }

    #[test]
    fn malformed_and_unknown_frames_are_told_apart() {
        assert_eq!(
            ClientMessage::parse("{not json").unwrap_err().code,
            ErrorKind::Malformed
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"launch"}"#)
                .unwrap_err()
                .code,
            ErrorKind::UnknownMessage
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"read","id":1}"#)
                .unwrap_err()
                .code,
            ErrorKind::Malformed
        );
        assert_eq!(
            ClientMessage::parse("[1,2]").unwrap_err().code,
            ErrorKind::Malformed
        );
    }

    #[test]
    fn a_commit_reads_like_the_docs() {
        let text = r#"{"type":"commit","txn":"c1:1",
            "reads":[{"key":{"kind":"row","table":"users","pk":"alice"},"version":"7"}],
            "writes":[{"key":{"kind":"row","table":"users","pk":"alice"},"op":"update","set":{"balance":90}}]}"#;
        let ClientMessage::Commit { reads, writes, .. } = ClientMessage::parse(text).unwrap()
        else {
            panic!()
        };
        assert_eq!(reads.get(&Key::row("users", "alice")), Some(Version(7)));
        assert!(matches!(
            writes.get(&Key::row("users", "alice")),
            Some(WriteOp::Update { .. })
        ));
    }

    /// A commit without `deps` (every client before pipelining) has none, and one without
    /// dependencies is sent as before; a commit with them names each key once.
    #[test]
    fn dependencies_are_optional_on_the_wire() {
        let text = r#"{"type":"commit","txn":"c1:1","reads":[],"writes":[]}"#;
        let ClientMessage::Commit { deps, .. } = ClientMessage::parse(text).unwrap() else {
            panic!()
        };
        assert!(deps.is_empty());
        let msg = ClientMessage::parse(text).unwrap();
        assert!(!msg.to_json().contains("deps"));
        let text = r#"{"type":"commit","txn":"c1:2","reads":[],
            "writes":[{"key":{"kind":"kv","key":"n"},"op":"put","value":2}],
            "deps":[{"key":{"kind":"kv","key":"n"},"after":"c1:1","value":1}]}"#;
        let ClientMessage::Commit { deps, .. } = ClientMessage::parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(
            deps,
            vec![Dependency {
                key: Key::kv("n"),
                after: TxnId("c1:1".into()),
                value: Some(serde_json::json!(1)),
            }]
        );
    }

    /// A commit without `first` (every client before the field existed) is taken as a
    /// possible re-send, the safe reading; a re-sent message drops the mark.
    #[test]
    fn only_a_marked_commit_is_a_first_send() {
        let text = r#"{"type":"commit","txn":"c1:1","reads":[],"writes":[]}"#;
        let msg = ClientMessage::parse(text).unwrap();
        assert!(matches!(msg, ClientMessage::Commit { first: false, .. }));
        let first = ClientMessage::Commit {
            txn: TxnId("c1:2".into()),
            reads: ReadSet::new(),
            writes: WriteSet::new(),
            first: true,
            deps: Vec::new(),
            follows: None,
            queries: Vec::new(),
        };
        assert!(first.to_json().contains(r#""first":true"#));
        let again = first.resent();
        assert!(!again.to_json().contains("first"));
        assert!(matches!(again, ClientMessage::Commit { first: false, .. }));
    }
}
