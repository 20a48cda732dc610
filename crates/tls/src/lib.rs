//! Strait's TLS configurations: choosing the server certificate by SNI (and
//! the resumption state every configuration shares), verifying client
//! certificates for mtls-auth, and building upstream client configurations.
//! Reading a ClientHello lives in `strait-wire`; sockets and handshakes in
//! the proxy crate.

pub mod client;
pub mod client_auth;
pub mod server;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use client::{UpstreamTlsOptions, client_config};
pub use client_auth::{
    ClientAuth, certificate_names, certificate_subject, client_auth, server_config_with_client_auth,
};
pub use server::{CertStore, Resumption, server_config};

/// Errors building TLS configurations from validated entities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("unusable private key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The one crypto provider Strait uses (ring: pure Rust and asm, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}
