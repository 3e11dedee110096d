//! Mjölnir's core: what the browser runtime, the native client and the server agree on.
//!
//! The model (see `docs/architecture.md`): every event handler is an optimistic transaction.
//! It reads keys at the [`Version`] it saw and buffers its writes; the server commits it
//! only if every read version is still current (see [`conflict`]), so committed
//! transactions are serializable in commit-version order.
//!
//! This crate knows nothing of browsers, tokio or sqlx, so it builds for
//! `wasm32-unknown-unknown` and is tested natively. The wire protocol is defined here once
//! ([`protocol`]) and used unchanged by both ends.

pub mod attempt;
pub mod cache;
pub mod conflict;
pub mod deps;
pub mod engine;
pub mod error;
pub mod key;
pub mod number;
pub mod overlay;
pub mod protocol;
pub mod query;
pub mod retry;
pub mod sets;
pub mod speculation;
mod tagged;
pub mod template;
pub mod txn;
pub mod version;

pub use attempt::{Attempt, Finish, Read};
pub use cache::{Cache, Cached, Snapshot};
pub use conflict::is_stale;
pub use deps::Dependency;
pub use error::ErrorKind;
pub use key::{Key, Pk};
pub use protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
pub use query::{Op, Query, QueryRead};
pub use retry::RetryPolicy;
pub use sets::{ReadSet, WriteOp, WriteSet};
pub use txn::{Transaction, TxnId};
pub use version::Version;
