//! What a commit comes to: the outcome a client is told, and the decisions that lead to it.

use super::Resolved;
use mjolnir_core::Version;
use mjolnir_core::protocol::{Entry, ErrorReply};

/// How a commit ended.
#[derive(Debug)]
pub enum Outcome {
    /// Applied at `version`; `changes` are the new values, as the change feed carries them.
    Committed {
        version: Version,
        changes: Vec<Entry>,
    },
    /// This transaction id had already committed at `version`; nothing was applied now.
    Duplicate { version: Version },
    /// Some reads were stale; nothing was applied. The current values of the stale keys.
    Conflict { stale: Vec<Entry> },
    /// Refused for a reason a retry cannot fix; nothing was applied.
    Rejected(ErrorReply),
}

/// What the database decided for one transaction.
#[derive(Debug)]
pub(super) enum Decision {
    Final(Outcome),
    /// A conflict: these keys were read stale. Their current values, which the conflict
    /// carries, are still to be read as the committing user (`Committer::finish`).
    Stale(Vec<Resolved>),
}

/// What a transaction of a batch came to.
pub(super) enum Decided {
    Outcome(Decision),
    /// Failed in a way the batch does not classify (a deadlock, a concurrent commit of its
    /// txn id, …), with the error's SQLSTATE and message, or with the whole batch (`None`):
    /// nothing of it was applied; it is committed again on its own.
    Alone(Option<(String, String)>),
}
