//! The `strait` binary's library: command-line interface and the wiring that
//! turns settings and a declarative file into a running proxy.
//!
//! Kept out of `main.rs` so tests and other front ends can call it.

mod admin;
pub mod app;
pub mod certs;
pub mod cli;
mod ctl;
pub mod example;
mod gateway;
mod logging;
mod systemd;
mod upgrade;
