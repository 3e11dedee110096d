use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Why a [`LocalCluster`](super::LocalCluster) could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries not found: install them with `apt-get install postgresql` (Debian/Ubuntu) (looked in {})",
        searched.display()
    )]
    PostgresNotInstalled { searched: PathBuf },

    #[error(
        "running as root, but there is no `postgres` user to run the server as (PostgreSQL refuses to run as root): \
         `apt-get install postgresql` creates it"
    )]
    NoPostgresUser,

    #[error(
        "the `postgres` user cannot enter {path}, a parent of the cluster directory: \
         run `chmod o+x {path}` or put the cluster somewhere else",
        path = path.display()
    )]
    ParentNotTraversable { path: PathBuf },

    #[error(
        "socket path {} is longer than the 107 bytes unix sockets allow: use a shorter cluster directory",
        path.display()
    )]
    SocketPathTooLong { path: PathBuf },

    #[error("another process kept {} locked for {secs} s while starting its cluster", path.display())]
    Locked { path: PathBuf, secs: u64 },

    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        output: String,
    },

    #[error("postgres on port {port} did not accept connections within {secs} s: {source}")]
    NotReady {
        port: u16,
        secs: u64,
        #[source]
        source: sqlx::Error,
    },

    #[error("could not create database `{db}`: {source}")]
    CreateDatabase {
        db: String,
        #[source]
        source: sqlx::Error,
    },
}

impl ClusterError {
    /// Builds a `map_err` closure for I/O failures; `action` says what was being attempted.
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }

    /// Like [`io`](Self::io), for an action on `path`.
    pub(crate) fn io_at(action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        Self::io(format!("{action} {}", path.display()))
    }
}
