//! Mjölnir's browser runtime.
//!
//! Empty until the browser-runtime issue: it will be a thin wasm-bindgen layer over
//! `mjolnir-core`'s transaction engine and wire protocol, so that the browser and the
//! server share one definition of every message.

pub use mjolnir_core as core;
