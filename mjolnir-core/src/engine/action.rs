//! What the engine is told and what it asks its adapter to do.

use crate::protocol::ErrorReply;
use crate::{ClientMessage, Key, TxnId, Version};
use std::time::Duration;

/// One call of a handler, from the call until its promise settles (across all its
/// attempts). Numbered in call order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// A fetch the adapter asked for with [`crate::engine::Engine::fetch`] (the async form's
/// reads, which wait for a missing key instead of re-running the handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchId(pub u64);

/// How a handler runs: synchronously, inside [`Action::Run`], or as an `async` function
/// that may await between its reads (then the adapter reports its end later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sync,
    Async,
}

/// How an attempt of a handler ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It returned (or its promise resolved).
    Returned,
    /// It threw (or its promise rejected). The adapter keeps the error: it is the app's
    /// own unless the engine decides it came from a torn view or a cache miss.
    Threw,
}

/// Why a job failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The handler threw on a consistent view: its own error, which the adapter kept.
    Threw,
    /// The server refused its commit; nothing was applied.
    Rejected(ErrorReply),
    /// The server refused to read a key it needed (an unknown table, say).
    FetchRefused(ErrorReply),
    /// It conflicted as often as the retry policy allows.
    Conflicts { key: Key, attempts: u32 },
    /// It kept reading keys that were not loaded, a different set on every run.
    TooManyMisses,
}

/// What the adapter must do, in the order the engine returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this message if the connection is open; drop it otherwise (everything still
    /// waiting is sent again after the next welcome).
    Send(ClientMessage),
    /// Run the job's handler now: [`crate::engine::Engine::begin`], the handler, then
    /// [`crate::engine::Engine::finish`].
    Run(JobId),
    /// The job's last attempt ended and its effects on the page stay, for now.
    Keep(JobId),
    /// Undo the effects of the job's last attempt on the page.
    Revert(JobId),
    /// Call [`crate::engine::Engine::wake`] for this job after the delay (a retry's
    /// back-off).
    Wake(JobId, Duration),
    /// These cached keys changed value: re-render what shows them.
    Changed(Vec<Key>),
    /// The job's attempt conflicted and will run again (or fail, if the policy is spent).
    Conflicted { job: JobId, key: Option<Key> },
    /// The job's promise settles: committed at a version, done with nothing to commit
    /// (`None`), or failed. Given once per job.
    Settle(JobId, Result<Option<Version>, Failure>),
    /// The engine will never run the job again: its handler and its effects' undo record
    /// can go. Usually right after its [`Action::Settle`]; for a page-only handler that
    /// finished while an earlier commit of the page was in flight, only once that commit
    /// is decided, since until then a cascade may undo it and run it again.
    Release(JobId),
    /// The job committed: for the page's `commit` event, after its `Settle`.
    Committed {
        job: JobId,
        txn: TxnId,
        version: Version,
    },
    /// A fetch asked for with [`crate::engine::Engine::fetch`] is answered; its entries
    /// are in the cache.
    Fetched(FetchId, Result<(), ErrorReply>),
    /// Something the developer should hear of, that no request waits for: an unreadable
    /// server message, or an `error` naming no request.
    Warn(String),
}
