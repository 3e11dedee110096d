//! Why a named transaction did not run to its end.

use std::time::Duration;

/// A run's failure, typed: each names the transaction, so the reply and the log can.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The app declares no transaction of that name.
    #[error("no transaction is named {name:?}")]
    UnknownTransaction { name: String },
    /// Its `allow` said no to this user and these arguments.
    #[error("{name}: not allowed for this user")]
    Denied { name: String },
    /// The body (or the declarations) threw: the JavaScript message and stack.
    #[error("{name}: {message}")]
    Threw {
        name: String,
        message: String,
        stack: String,
    },
    /// The run took longer than the time limit and was stopped.
    #[error("{name}: stopped after {limit:?}, the time limit")]
    TimeLimit { name: String, limit: Duration },
    /// The run allocated past the memory limit and was stopped.
    #[error("{name}: stopped at the memory limit of {limit} bytes")]
    MemoryLimit { name: String, limit: usize },
    /// The engine itself failed.
    #[error("JavaScript engine: {0}")]
    Engine(String),
}
