//! The client engine: everything a client of the protocol decides, with no I/O.
//!
//! A page's transactions, the requests waiting for replies, what to send again after a
//! reconnect, when to retry a conflict and what the cache holds are decided here once, as
//! a state machine in the style of sans-I/O protocol libraries: the caller feeds it events
//! (a handler was called, an attempt ended, a message arrived, a timer fired, the
//! connection was welcomed) and carries out the [`Action`]s it returns (send this, run that
//! handler, undo its effects, settle its promise, wake it later). The browser runtime
//! (`mjolnir-wasm`) and the native client (`mjolnir-client`) are adapters that own the
//! socket, the timers and the handlers; neither decides anything of the protocol itself.
//!
//! Because nothing here waits or touches a socket, the whole engine is tested natively,
//! against a simulated server, with any interleaving of replies a network can produce
//! (`tests.rs`).

mod action;
mod page;
mod requests;
#[cfg(test)]
mod tests;

pub use action::{Action, Ended, Failure, FetchId, JobId, Kind};
pub use page::{Engine, MAX_MISS_ROUNDS};
pub use requests::{Requests, Routed, Verdict};
