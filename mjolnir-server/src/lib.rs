//! Mjölnir's server.
pub mod vstack;
