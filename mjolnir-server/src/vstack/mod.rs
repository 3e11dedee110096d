//! A private PostgreSQL server for `mjolnir dev`, `mjolnir pg` and the test suite, so none
//! depends on a system-wide cluster, its port or its authentication settings.
//!
//! [`LocalCluster::start`] initialises a cluster directory on first use and starts it
//! listening on no TCP port, only on a unix socket in a directory that only the server's OS
//! user may enter (mode 0700; `run/` in the cluster directory, or under `/tmp` when that path
//! is too long for a socket). Connections on that socket are trusted: whoever can reach it
//! can read the data directory anyway. When a server is already running on the directory it
//! attaches instead, so several processes can share one cluster.
//!
//! [`LocalCluster::hold`] is for the one process that stops the server when it exits
//! (`mjolnir dev`): a second one is refused while the first lives, and a server the first
//! left running (it was killed) is adopted by the next. [`ClusterDir::for_dir`] decides
//! where a cluster lives when root runs mjolnir in a directory `postgres` cannot enter.

mod binaries;
mod cluster;
mod error;
mod locks;
mod pg_ctl;
mod place;
mod postmaster;
mod run_as;
mod socket;

pub use cluster::{LocalCluster, Log};
pub use error::{ClusterError, SocketDirProblem};
pub use place::ClusterDir;
