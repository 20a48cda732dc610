//! A compiled configuration: everything a session needs, immutable.
//!
//! One writer compiles a [`Snapshot`] from a validated `Config` and publishes
//! it with one atomic swap; each session loads it once at accept and keeps it
//! to the end, so a configuration change never disturbs an open session.
//! Sessions read routes and services as [`CompiledRoute`] and
//! [`CompiledService`] values, by index; plugins see only the `Config`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use strait_model::{Config, KeyPair, Protocol, ProtocolSet, ProxyProtocolOut, RouteIdx, ServiceIdx, UpstreamIdx};
use strait_plugin::{Chain, ChainError, Chains, Metrics, Plugins};
use strait_router::{ConnKind, Router};
use strait_tls::{CertStore, Resumption, UpstreamTlsOptions};
use strait_upstream::{Balanced, Upstreams};

use crate::live::Named;

/// Where a service's sessions go.
#[derive(Debug, Clone)]
pub enum Destination {
    Addr(SocketAddr),
    /// An upstream entity, or a host name balanced over its addresses.
    Balanced(Arc<Balanced>),
}

/// A route as sessions use it.
#[derive(Debug)]
pub struct CompiledRoute {
    pub idx: RouteIdx,
    /// For the access log, made once: no allocation per session.
    pub label: Arc<str>,
    /// Its id and name, for the sessions API.
    pub named: Arc<Named>,
    pub protocols: ProtocolSet,
    pub service: Option<ServiceIdx>,
    /// Forward the client's SNI to a `tls` upstream.
    pub preserve_host: bool,
    /// The route's plugins (with the global ones), if any apply.
    pub chain: Option<Arc<Chain>>,
}

impl CompiledRoute {
    /// How this route serves a session of `kind`: TLS is passed through or
    /// terminated only when a ClientHello arrived and the route says so.
    pub fn protocol_for(&self, kind: ConnKind) -> Protocol {
        match kind {
            ConnKind::Udp => Protocol::Udp,
            ConnKind::Plain => Protocol::Tcp,
            ConnKind::TlsOnPlain | ConnKind::TlsOnSsl if self.protocols.contains(Protocol::TlsPassthrough) => {
                Protocol::TlsPassthrough
            }
            ConnKind::TlsOnPlain | ConnKind::TlsOnSsl if self.protocols.contains(Protocol::Tls) => Protocol::Tls,
            ConnKind::TlsOnPlain | ConnKind::TlsOnSsl => Protocol::Tcp,
        }
    }
}

/// A service as sessions use it.
#[derive(Debug)]
pub struct CompiledService {
    /// For the access log, made once.
    pub label: Arc<str>,
    /// Its id and name, and its upstream entity's, for the sessions API.
    pub named: Arc<Named>,
    pub upstream: Option<Arc<Named>>,
    pub protocol: Protocol,
    pub destination: Destination,
    /// Set when the service's protocol is `tls`.
    pub tls: Option<Arc<ClientConfig>>,
    /// The upstream's `host_header`, used as upstream SNI after `preserve_host`.
    pub host_header: Option<String>,
    pub connect_timeout: Duration,
    /// Extra attempts after a failed one.
    pub retries: u16,
    /// A TCP session's idle timeout: Kong's `max(read_timeout, write_timeout)`.
    pub idle_timeout: Duration,
    /// A UDP session ends after this long without a datagram either way.
    pub read_timeout: Duration,
    pub proxy_protocol: ProxyProtocolOut,
}

/// An entity's id and name, made once per snapshot.
fn named(id: impl std::fmt::Display, name: Option<&str>) -> Arc<Named> {
    Arc::new(Named { id: id.to_string().into(), name: name.map(Arc::from) })
}

/// Why a configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("service '{service}': {reason}")]
    Service { service: String, reason: String },
    #[error("upstream '{upstream}': {reason}")]
    Upstream { upstream: String, reason: String },
    #[error("certificates: {0}")]
    Certificates(String),
    #[error(transparent)]
    Plugins(#[from] ChainError),
}

#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this was compiled from, shared with the control
    /// plane's view of it and with plugins.
    pub config: Arc<Config>,
    pub router: Router,
    pub tls_server: Arc<ServerConfig>,
    routes: Vec<CompiledRoute>,
    services: Vec<CompiledService>,
    /// Every balanced destination (upstreams, then service host names).
    balancers: Vec<Arc<Balanced>>,
    upstreams: Arc<Upstreams>,
    pub(crate) chains: Chains,
    pub(crate) metrics: Arc<Metrics>,
}

impl Snapshot {
    /// Compiles `config`. `default_cert` serves clients whose SNI matches no
    /// certificate; `resumption` says how TLS clients may resume; `upstreams`
    /// keeps balancer and health state across snapshots, `plugins` the
    /// plugins' state and the metrics. Nothing starts running until
    /// [`Snapshot::activate`].
    pub fn compile(
        config: Arc<Config>,
        default_cert: &KeyPair,
        resumption: &Resumption,
        upstreams: &Arc<Upstreams>,
        plugins: &Plugins,
    ) -> Result<Snapshot, CompileError> {
        let store =
            Arc::new(CertStore::new(&config, default_cert).map_err(|e| CompileError::Certificates(e.to_string()))?);
        let tls_server = strait_tls::server_config(store.clone(), resumption)
            .map_err(|e| CompileError::Certificates(e.to_string()))?;
        let chains = Chains::compile(&config, plugins, &|auth| {
            strait_tls::server_config_with_client_auth(store.clone(), auth, resumption).map_err(|e| e.to_string())
        })?;
        let upstream_of = |host: &str| config.upstreams.iter().position(|u| u.name.eq_ignore_ascii_case(host));

        let mut balancers = Vec::with_capacity(config.upstreams.len());
        for (i, up) in config.upstreams.iter().enumerate() {
            let hc = &up.healthchecks;
            let probe_tls = if hc.active_enabled() && hc.active.kind.is_tls() {
                // The trust of the services that use this upstream, plus the
                // system's roots when they name no CA.
                let cas = config
                    .services
                    .iter()
                    .filter(|s| upstream_of(&s.host) == Some(i))
                    .flat_map(|s| s.ca_certificates.iter().map(|c| &config.ca_certificates[c.0].cert))
                    .collect();
                let opts = UpstreamTlsOptions {
                    verify: hc.active.https_verify_certificate,
                    verify_depth: None,
                    ca_certificates: cas,
                    client_certificate: up.client_certificate.map(|c| &config.certificates[c.0].pair),
                };
                Some(
                    strait_tls::client_config(&opts)
                        .map_err(|e| CompileError::Upstream { upstream: up.name.clone(), reason: e.to_string() })?,
                )
            } else {
                None
            };
            balancers.push(upstreams.prepare(&config, UpstreamIdx(i), probe_tls));
        }
        let mut by_host: HashMap<(String, u16), Arc<Balanced>> = HashMap::new();

        let mut services = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            // Host names are case-insensitive; service hosts are stored lower case.
            let upstream = upstream_of(&svc.host).map(UpstreamIdx);
            let destination = match (upstream, svc.host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>()) {
                (Some(u), _) => Destination::Balanced(balancers[u.0].clone()),
                (None, Ok(ip)) => Destination::Addr(SocketAddr::new(ip, svc.port)),
                (None, Err(_)) => Destination::Balanced(
                    by_host
                        .entry((svc.host.clone(), svc.port))
                        .or_insert_with(|| upstreams.prepare_host(&svc.host, svc.port))
                        .clone(),
                ),
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
            services.push(CompiledService {
                label: Arc::from(svc.label()),
                named: named(svc.meta.id, svc.name.as_deref()),
                upstream: upstream.map(|u| {
                    let u = &config.upstreams[u.0];
                    named(u.meta.id, Some(&u.name))
                }),
                protocol: svc.protocol,
                destination,
                tls,
                host_header,
                connect_timeout: svc.connect_timeout,
                retries: svc.retries,
                idle_timeout: svc.idle_timeout(),
                read_timeout: svc.read_timeout,
                proxy_protocol: svc.proxy_protocol,
            });
        }
        balancers.extend(by_host.into_values());
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| CompiledRoute {
                idx: RouteIdx(i),
                label: Arc::from(r.label()),
                named: named(r.meta.id, r.name.as_deref()),
                protocols: r.protocols,
                service: r.service,
                preserve_host: r.preserve_host,
                chain: chains.route(RouteIdx(i)).cloned(),
            })
            .collect();
        let router = Router::new(&config);
        Ok(Snapshot {
            router,
            tls_server,
            routes,
            services,
            balancers,
            upstreams: upstreams.clone(),
            chains,
            metrics: plugins.metrics().clone(),
            config,
        })
    }

    pub fn route(&self, idx: RouteIdx) -> Option<&CompiledRoute> {
        self.routes.get(idx.0)
    }

    /// The route a session's record names (its label: name, or id).
    pub fn route_labelled(&self, label: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| &*r.label == label)
    }

    /// The process's upstreams (their state outlives snapshots).
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    pub fn service(&self, idx: ServiceIdx) -> Option<&CompiledService> {
        self.services.get(idx.0)
    }

    /// Makes this snapshot's upstreams live: their background tasks start
    /// (DNS, active probes) and upstreams it no longer has are retired. Call
    /// it right before publishing the snapshot.
    pub fn activate(&self) {
        self.upstreams.activate(&self.balancers);
        self.chains.announce();
    }
}
