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

    /// The socket directory is the only gate to a server that trusts every connection on it.
    #[error(
        "refusing to put the PostgreSQL socket in {}: {problem}; another user may have made it to reach \
         the server: remove it, or use a shorter cluster directory",
        path.display()
    )]
    UnsafeSocketDir {
        path: PathBuf,
        problem: SocketDirProblem,
    },

    /// An older mjolnir started servers on 127.0.0.1 with trust authentication; one still
    /// running lets every local user in, so it is not attached to.
    #[error(
        "the PostgreSQL server running on {data} listens on TCP ({listen_addresses}), where every local user \
         can connect as its superuser (an older mjolnir started it so): stop it with `pg_ctl stop -D {data}` \
         (as the user owning it) and start again",
        data = data.display()
    )]
    ListensOnTcp {
        data: PathBuf,
        listen_addresses: String,
    },

    #[error("another process kept {} locked for {secs} s while starting its cluster", path.display())]
    Locked { path: PathBuf, secs: u64 },

    /// Only one process may be the one that stops the server (see `LocalCluster::hold`).
    #[error(
        "another `mjolnir dev`{} is running with the PostgreSQL in {}: stop it first (Ctrl-C where it \
         runs), or use the server it started",
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        dir.display()
    )]
    Held { dir: PathBuf, pid: Option<u32> },

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

    #[error("postgres did not accept connections on {} within {secs} s: {source}", socket.display())]
    NotReady {
        socket: PathBuf,
        secs: u64,
        #[source]
        source: sqlx::Error,
    },

    #[error("`{query}` failed: {source}")]
    Query {
        query: &'static str,
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

/// What is wrong with a socket directory that [`ClusterError::UnsafeSocketDir`] refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketDirProblem {
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it belongs to uid {found}, not to the server's user (uid {expected})")]
    WrongOwner { found: u32, expected: u32 },
    #[error("it has mode {found:o}, not 700")]
    WrongMode { found: u32 },
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
