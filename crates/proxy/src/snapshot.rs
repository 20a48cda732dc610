//! A compiled configuration: everything a session needs, immutable.
//!
//! One writer compiles a [`Snapshot`] from a validated `Config` and publishes
//! it with one atomic swap; each session loads it once at accept and keeps it
//! to the end, so a configuration change never disturbs an open session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use rustls::{ClientConfig, ServerConfig};
use strait_model::{Config, KeyPair, Protocol, UpstreamIdx};
use strait_router::Router;
use strait_tls::{CertStore, UpstreamTlsOptions};

/// Where a service's sessions go.
#[derive(Debug, Clone)]
pub enum Destination {
    Addr(SocketAddr),
    /// A DNS name, resolved per session.
    Name(String, u16),
    /// An upstream entity: its targets, tried in turn.
    Upstream(UpstreamIdx),
}

/// Per-service data compiled for the data path.
#[derive(Debug)]
pub struct ServiceRuntime {
    pub destination: Destination,
    /// Set when the service's protocol is `tls`.
    pub tls: Option<Arc<ClientConfig>>,
    /// The upstream's `host_header`, used as upstream SNI after `preserve_host`.
    pub host_header: Option<String>,
    /// Rotates the first target tried for upstream destinations.
    pub next: AtomicUsize,
}

/// Why a configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("service '{service}': {reason}")]
    Service { service: String, reason: String },
    #[error("certificates: {0}")]
    Certificates(String),
}

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub tls_server: Arc<ServerConfig>,
    /// Indexed like `config.services`.
    pub services: Vec<ServiceRuntime>,
}

impl Snapshot {
    /// Compiles `config`. `default_cert` serves clients whose SNI matches no certificate.
    pub fn compile(config: Config, default_cert: &KeyPair) -> Result<Snapshot, CompileError> {
        let store = CertStore::new(&config, default_cert).map_err(|e| CompileError::Certificates(e.to_string()))?;
        let tls_server =
            strait_tls::server_config(Arc::new(store)).map_err(|e| CompileError::Certificates(e.to_string()))?;
        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            // Host names are case-insensitive; service hosts are stored lower case.
            let upstream =
                config.upstreams.iter().position(|u| u.name.eq_ignore_ascii_case(&svc.host)).map(UpstreamIdx);
            let destination = match (upstream, svc.host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>()) {
                (Some(u), _) => Destination::Upstream(u),
                (None, Ok(ip)) => Destination::Addr(SocketAddr::new(ip, svc.port)),
                (None, Err(_)) => Destination::Name(svc.host.clone(), svc.port),
            };
            let host_header = upstream.and_then(|u| config.upstreams[u.0].host_header.clone());
            let tls = if svc.protocol == Protocol::Tls {
                // The service's client certificate wins over the upstream's (as Kong).
                let client_certificate = svc
                    .client_certificate
                    .or_else(|| upstream.and_then(|u| config.upstreams[u.0].client_certificate))
                    .map(|c| &config.certificates[c.0].pair);
                let opts = UpstreamTlsOptions {
                    verify: svc.tls_verify.unwrap_or(false),
                    verify_depth: svc.tls_verify_depth,
                    ca_certificates: svc.ca_certificates.iter().map(|c| &config.ca_certificates[c.0].cert).collect(),
                    client_certificate,
                };
                Some(
                    strait_tls::client_config(&opts)
                        .map_err(|e| CompileError::Service { service: svc.label(), reason: e.to_string() })?,
                )
            } else {
                None
            };
            services.push(ServiceRuntime { destination, tls, host_header, next: AtomicUsize::new(0) });
        }
        let router = Router::new(&config);
        Ok(Snapshot { config, router, tls_server, services })
    }
}
