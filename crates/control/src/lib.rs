//! Strait's control plane: the one writer of the configuration, and the
//! keeping of a node in step with a shared store.
//!
//! [`Control`] (`control.rs`) holds the configuration served ([`Current`],
//! `current.rs`) and is the only thing that changes it: each change
//! (`change.rs`) is validated by the declarative loader, compiled into a
//! snapshot, persisted, then published to the proxy. `cache.rs` keeps the
//! last configuration for a node that starts while PostgreSQL is down;
//! `cluster.rs` follows the other nodes' writes. Errors are typed
//! ([`ChangeError`], [`ControlError`]); what they mean in HTTP is the Admin
//! API's business. No HTTP here, and nothing on the data path.

mod cache;
mod change;
pub mod cluster;
mod control;
mod current;

pub use change::{Applied, ChangeError, EditResult, replace_all};
pub use control::{Control, ControlError, ServerTls};
pub use current::{Current, config_hash, id_of, now};
