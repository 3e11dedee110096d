//! A private PostgreSQL server for `mjolnir dev` and the test suite, so neither depends on a
//! system-wide cluster, its port or its authentication settings.
//!
//! [`LocalCluster::start`] initialises a cluster directory on first use and starts it on a
//! free 127.0.0.1 port with trust authentication; when a server is already running on the
//! directory it attaches instead, so several processes can share one cluster.

mod binaries;
mod cluster;
mod error;

pub use cluster::LocalCluster;
pub use error::ClusterError;
