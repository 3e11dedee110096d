//! What PostgreSQL's errors mean for a commit: the SQLSTATEs `mjolnir.commit_batch` raises
//! itself, the transient ones worth a re-run, the app's refusals, and a lost connection.

use mjolnir_core::ErrorKind;
use mjolnir_core::protocol::ErrorReply;

/// SQLSTATE raised by `mjolnir.commit_batch` for a transaction id that already committed
/// (a re-sent commit racing its first attempt on another connection).
pub(super) const ALREADY_COMMITTED: &str = "MJ001";
/// SQLSTATEs `mjolnir.commit_batch` raises when an update or delete matched no row: the
/// row exists but the app's policies hide it from the user, or it does not exist.
pub(super) const HIDDEN_ROW: &str = "MJ403";
pub(super) const MISSING_ROW: &str = "MJ404";

pub(super) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Deadlocks and serialization failures roll the whole transaction back: re-running it is
/// safe and usually succeeds.
pub(super) fn is_transient_code(code: &str) -> bool {
    matches!(code, "40001" | "40P01")
}

/// The typed refusal for an error the app's schema or policies raised, if it is one.
pub(super) fn classify(e: &sqlx::Error) -> Option<ErrorReply> {
    let db = e.as_database_error()?;
    classify_code(&db.code()?, db.message())
}

/// [`classify`] for an error caught inside `mjolnir.commit_batch`: its SQLSTATE and message.
pub(super) fn classify_code(code: &str, message: &str) -> Option<ErrorReply> {
    let kind = match code {
        // insufficient_privilege: a row-level-security WITH CHECK, or no grant.
        "42501" => ErrorKind::Forbidden,
        c if c.starts_with("23") => ErrorKind::ConstraintViolation,
        // data_exception: a value PostgreSQL could not convert to the column's type.
        c if c.starts_with("22") => ErrorKind::WrongType,
        // A plain RAISE EXCEPTION from an app trigger: the app's own rule refused the
        // write. (A trigger raises with ERRCODE 'insufficient_privilege' for Forbidden.)
        "P0001" => ErrorKind::ConstraintViolation,
        _ => return None,
    };
    Some(ErrorReply::new(kind, message.to_owned()))
}

/// Whether `e` says the connection is gone rather than that the statement failed: an I/O
/// or protocol error, or PostgreSQL's `08…` (connection exception) and `57P0…` (the backend
/// was terminated or the server is shutting down).
pub(super) fn connection_lost(e: &sqlx::Error) -> bool {
    match sqlstate(e) {
        Some(code) => code.starts_with("08") || code.starts_with("57P0"),
        None => matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_)),
    }
}
