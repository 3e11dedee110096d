//! A native client for Mjölnir's wire protocol, for the server's end-to-end tests and the
//! load generator.
//!
//! The model is the one of [`mjolnir_core`]: a transaction reads keys at the versions it
//! sees, buffers its writes, and sends them in one commit that the server applies only if
//! every version read is still current. [`Client::run`] runs a closure that way, as a job
//! of the core's client engine ([`mjolnir_core::engine`]), the same state machine as the
//! browser runtime's: the engine keeps a cache of what the connection read (kept current by
//! pushes), decides when to fetch, to commit and to retry, and pipelines concurrent runs.
//! This crate only carries out what it decides (`driver.rs`):
//!
//! ```no_run
//! # async fn demo() -> Result<(), mjolnir_client::ClientError> {
//! use mjolnir_client::{Client, RetryPolicy, TxAbort};
//! use mjolnir_core::Key;
//! use serde_json::json;
//!
//! let client = Client::connect("ws://127.0.0.1:8080/ws", Some("alice")).await?;
//! let done = client
//!     .run(&RetryPolicy::default(), async |tx| {
//!         let alice = Key::row("users", "alice");
//!         let row = tx.get(alice.clone()).await?.ok_or(TxAbort::User("no alice".into()))?;
//!         let balance = row["balance"].as_i64().unwrap_or(0);
//!         let set = json!({"balance": balance + 1}).as_object().cloned().unwrap_or_default();
//!         tx.update(alice, set);
//!         Ok(balance + 1)
//!     })
//!     .await?;
//! println!("{} at version {:?} after {} attempts", done.value, done.version, done.attempts);
//! # Ok(()) }
//! ```
//!
//! Beside it, a raw API sends exactly what it is asked to ([`Client::read`],
//! [`Client::commit`], [`Client::send_raw`]), for tests of the server. One connection
//! carries many requests at once: [`Client`] is a cheap handle, each call sends its request
//! at once and waits only for its own reply. Replies are matched to requests by read id or
//! txn id, never by arrival order, because the server answers in whatever order its work
//! finishes; the engine's requests and the raw ones go through one table, so neither takes
//! the other's replies (`routes.rs`). Frames that answer nothing this client asked for are
//! kept for [`Client::next_unsolicited`], which is how bad-input tests see the server's
//! answers; pushes go to [`Client::pushes`] (and to the engine's cache).
//!
//! When the connection ends, for whatever reason, every waiting request and every later one
//! fails with [`ClientError::Disconnected`]; nothing waits forever.

mod connection;
mod driver;
mod error;
mod knobs;
mod routes;
mod socket;
mod transaction;

pub use connection::{Client, ClientOptions, CommitOutcome};
pub use error::ClientError;
pub use mjolnir_core::RetryPolicy;
pub use routes::Unsolicited;
pub use transaction::{Committed, Tx, TxAbort};

pub use mjolnir_core::protocol::{Entry, ErrorReply};
