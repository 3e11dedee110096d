//! Error kinds every end of the protocol agrees on.

use serde::{Deserialize, Serialize};

/// Why a request or a commit was refused. Carried in [`crate::protocol::ErrorReply`].
///
/// Only a conflict is worth retrying, and conflicts are not errors (they have their own
/// reply, [`crate::ServerMessage::Conflict`]). Every kind here is final for the request
/// that caused it: retrying the same attempt gives the same answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum ErrorKind {
    /// The frame is not valid JSON or not a valid message of a known type.
    #[error("malformed message")]
    Malformed,
    /// Valid JSON whose `type` is not a message this server knows.
    #[error("unknown message type")]
    UnknownMessage,
    /// The hello named a protocol version this server does not speak.
    #[error("unsupported protocol version")]
    ProtocolVersion,
    /// A request before the hello, or a second hello.
    #[error("hello expected first, and once")]
    Handshake,
    /// The identity in the hello was not accepted.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The frame is larger than the server accepts.
    #[error("message too large")]
    TooLarge,
    /// No app table of that name.
    #[error("unknown table")]
    UnknownTable,
    /// The table has no column of that name.
    #[error("unknown column")]
    UnknownColumn,
    /// A value does not fit its column (or a key does not fit the table's primary key).
    #[error("wrong type")]
    WrongType,
    /// A query asks for something no query may: a limit over the maximum, an operand that
    /// does not fit its operator, too many conditions, or more rows than it may return.
    #[error("invalid query")]
    InvalidQuery,
    /// An update tried to change a primary-key column.
    #[error("primary key change")]
    PrimaryKeyChange,
    /// The op does not fit the key (for example `put` on a table row).
    #[error("invalid write")]
    InvalidWrite,
    /// An update or delete of a row that does not exist (only possible for blind writes:
    /// a read of the row would have made this a conflict).
    #[error("not found")]
    NotFound,
    /// The app's row-level-security policies refused the read or write.
    #[error("forbidden")]
    Forbidden,
    /// A CHECK, NOT NULL, UNIQUE or FOREIGN KEY constraint refused the write.
    #[error("constraint violation")]
    ConstraintViolation,
    /// Something went wrong inside the server; details are in its log, not on the wire.
    #[error("internal error")]
    Internal,
}
