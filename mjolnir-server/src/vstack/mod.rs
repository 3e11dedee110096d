//! A private PostgreSQL server for `mjolnir dev` and the test suite, so neither depends on a
//! system-wide cluster, its port or its authentication settings.
//!
//! [`LocalCluster::start`] initialises a cluster directory on first use and starts it
//! listening on no TCP port, only on a unix socket in a directory that only the server's OS
//! user may enter (mode 0700; `run/` in the cluster directory, or under `/tmp` when that path
//! is too long for a socket). Connections on that socket are trusted: whoever can reach it
//! can read the data directory anyway. When a server is already running on the directory it
//! attaches instead, so several processes can share one cluster.

mod binaries;
mod cluster;
mod error;
mod socket;

pub use cluster::LocalCluster;
pub use error::{ClusterError, SocketDirProblem};
