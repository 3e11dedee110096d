//! Mjölnir's browser runtime: every event handler an atomic transaction.
//!
//! A thin wasm-bindgen layer over `mjolnir-core`: the client engine (which handler runs
//! when, the cache, requests, resends and retries) and the wire protocol are the core's,
//! tested natively; this crate adds only what needs a browser: the WebSocket
//! ([`connection`]), running handlers ([`attempts`], [`job`]), rows as JavaScript proxies
//! ([`rows`]) and queries of them ([`query`]), the page state ([`state`]), DOM rollback
//! ([`dom`]), listeners ([`events`]) and JavaScript errors ([`error`]). [`runtime`] carries
//! out the engine's actions; [`api`] is what pages see.
//! See `docs/client.md`.

pub mod api;
pub mod attempts;
pub mod auto;
pub mod connection;
pub mod convert;
pub mod dom;
pub mod error;
pub mod events;
pub mod forms;
pub mod job;
pub mod query;
pub mod rows;
pub mod runtime;
pub mod state;
pub mod templates;
pub mod tx;
