//! Mjölnir's server: one binary that validates each client transaction with optimistic
//! concurrency control against PostgreSQL, commits it atomically and pushes the change to
//! every connection holding the keys it wrote.
//!
//! Layout: [`app`] (HTTP and WebSocket framing) → [`session`] (one connection's requests)
//! → [`store`] (reads and commits in PostgreSQL) and [`feed`] (pushes, fed by
//! `LISTEN/NOTIFY`). [`catalog`] knows the app's tables; [`files`] decides which of the app
//! directory's files browsers may fetch, [`origin`] which pages may open a WebSocket; [`vstack`] runs a private PostgreSQL for
//! `mjolnir dev`. An instance keeps no state another instance needs, so any
//! number of them can share one database.

pub mod app;
pub mod catalog;
pub mod db;
pub mod error;
pub mod feed;
pub mod files;
pub mod identity;
pub mod knobs;
pub mod metrics;
pub mod origin;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod vstack;
