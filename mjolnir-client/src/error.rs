//! The client's errors.

use mjolnir_core::Key;
use mjolnir_core::protocol::ErrorReply;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// Why a client call failed.
///
/// A conflict is not an error: [`crate::Client::commit`] returns it as
/// [`crate::CommitOutcome::Conflict`], and [`crate::Client::run`] retries it. Only running
/// out of attempts becomes [`ClientError::TooManyConflicts`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket could not be opened, or the hello could not be sent.
    #[error("could not connect: {0}")]
    Connect(Box<tungstenite::Error>),
    /// The server accepted the socket but did not welcome us in time.
    #[error("no welcome within {0:?}")]
    HandshakeTimeout(Duration),
    /// The server closed the connection instead of welcoming us.
    #[error("the server closed the connection during the handshake (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// The connection is gone (closed by either side, or broken).
    ///
    /// A commit that fails this way may or may not have been applied: re-send it with the
    /// same txn id on a new connection and the server answers with the original outcome.
    #[error("disconnected")]
    Disconnected,
    /// The server refused a request (a read, or the hello).
    #[error("request refused: {}: {}", .0.code, .0.message)]
    Server(ErrorReply),
    /// The server refused a commit for a reason retrying cannot fix.
    #[error("commit rejected: {}: {}", .0.code, .0.message)]
    Rejected(ErrorReply),
    /// [`crate::Client::run`] used up its attempts; `key` is a stale key of the last conflict.
    #[error("gave up after {attempts} attempts, the last one conflicting on {key}")]
    TooManyConflicts { attempts: u32, key: Key },
    /// The transaction's closure chose to stop.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}
