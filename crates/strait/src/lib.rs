//! The `strait` binary's library: command-line interface and the wiring that
//! turns settings and a declarative file into a running proxy.
//!
//! Kept out of `main.rs` so tests and other front ends can call it.

pub mod app;
pub mod certs;
pub mod cli;
pub mod example;
