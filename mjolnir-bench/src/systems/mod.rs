//! The three systems under test, each as a way to run transfers and measure them.

pub mod endpoint;
pub mod mjolnir;
pub mod pgbench;
