//! Server errors, and how each becomes a reply.

use mjolnir_core::ErrorKind;
use mjolnir_core::protocol::ErrorReply;

/// Why a request failed inside the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A refusal the client should see as is.
    #[error("{}: {}", .0.code, .0.message)]
    Reply(ErrorReply),
    /// A database failure. Logged with its details; the client only learns `internal`.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A database error caught inside a commit function (`mjolnir.commit_batch`), by its
    /// SQLSTATE. Logged like [`ServerError::Db`].
    #[error("database error {code}: {message}")]
    Database { code: String, message: String },
}

impl ServerError {
    pub fn reply(code: ErrorKind, message: impl Into<String>) -> Self {
        ServerError::Reply(ErrorReply::new(code, message))
    }

    /// The reply for the client. Internal details stay in the log.
    pub fn into_reply(self) -> ErrorReply {
        match self {
            ServerError::Reply(r) => r,
            ServerError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ErrorReply::new(ErrorKind::Internal, "internal error")
            }
            e @ ServerError::Database { .. } => {
                tracing::error!(error = %e, "database error");
                ErrorReply::new(ErrorKind::Internal, "internal error")
            }
        }
    }
}

impl From<ErrorReply> for ServerError {
    fn from(r: ErrorReply) -> Self {
        ServerError::Reply(r)
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;
