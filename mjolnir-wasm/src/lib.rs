//! Mjölnir's browser runtime: every event handler an atomic transaction.
//!
//! A thin wasm-bindgen layer over `mjolnir-core`: the transaction engine (cache, attempts,
//! retry policy) and the wire protocol are the core's, tested natively; this crate adds
//! only what needs a browser: the WebSocket ([`connection`]), rows as JavaScript proxies
//! ([`rows`]), the page state ([`state`]), DOM rollback ([`dom`]) and JavaScript errors
//! ([`error`]). [`runtime`] runs handlers as transactions; [`api`] is what pages see.
//! See `docs/client.md`.

pub mod api;
pub mod auto;
pub mod connection;
pub mod convert;
pub mod dom;
pub mod error;
pub mod rows;
pub mod runtime;
pub mod state;
pub mod templates;
pub mod tx;
