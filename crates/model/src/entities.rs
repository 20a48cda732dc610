//! Typed entities: what a valid configuration is made of.
//!
//! Values of these types exist only after validation (see `declarative`), so
//! a `Route` always has a legal protocol set, parsed CIDRs and normalised SNIs.
//! References between entities are indices into the owning [`Config`].

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use uuid::Uuid;

pub use crate::healthchecks::{CheckType, Healthchecks};

/// Index of a service in [`Config::services`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceIdx(pub usize);
/// Index of a certificate in [`Config::certificates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertificateIdx(pub usize);
/// Index of a CA certificate in [`Config::ca_certificates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaCertificateIdx(pub usize);
/// Index of an upstream in [`Config::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamIdx(pub usize);
/// Index of a route in [`Config::routes`]; also its declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteIdx(pub usize);

/// The nine kinds of entity, in the order a declarative document lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    Services,
    Routes,
    Certificates,
    Snis,
    CaCertificates,
    Upstreams,
    Targets,
    Plugins,
    FilterChains,
}

impl EntityKind {
    pub const ALL: [EntityKind; 9] = [
        EntityKind::Services,
        EntityKind::Routes,
        EntityKind::Certificates,
        EntityKind::Snis,
        EntityKind::CaCertificates,
        EntityKind::Upstreams,
        EntityKind::Targets,
        EntityKind::Plugins,
        EntityKind::FilterChains,
    ];

    /// The list's name in a declarative document and the Admin API's path.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Services => "services",
            EntityKind::Routes => "routes",
            EntityKind::Certificates => "certificates",
            EntityKind::Snis => "snis",
            EntityKind::CaCertificates => "ca_certificates",
            EntityKind::Upstreams => "upstreams",
            EntityKind::Targets => "targets",
            EntityKind::Plugins => "plugins",
            EntityKind::FilterChains => "filter_chains",
        }
    }

    /// The Admin API's path segment (Kong's `admin_api_name`).
    pub fn admin_path(self) -> &'static str {
        match self {
            EntityKind::FilterChains => "filter-chains",
            other => other.as_str(),
        }
    }

    /// The kind an Admin API path segment names.
    pub fn from_admin_path(s: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| k.admin_path() == s)
    }

    /// Kong's name for one entity of the kind (`entity_type` in errors).
    pub fn singular(self) -> &'static str {
        match self {
            EntityKind::Services => "service",
            EntityKind::Routes => "route",
            EntityKind::Certificates => "certificate",
            EntityKind::Snis => "sni",
            EntityKind::CaCertificates => "ca_certificate",
            EntityKind::Upstreams => "upstream",
            EntityKind::Targets => "target",
            EntityKind::Plugins => "plugin",
            EntityKind::FilterChains => "filter_chain",
        }
    }

    pub fn parse(s: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub certificates: Vec<Certificate>,
    pub snis: Vec<Sni>,
    pub ca_certificates: Vec<CaCertificate>,
    pub upstreams: Vec<Upstream>,
    pub targets: Vec<Target>,
    pub plugins: Vec<Plugin>,
    pub filter_chains: Vec<FilterChain>,
}

/// Kong's protocol names, for services and routes alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Grpc,
    Grpcs,
    Http,
    Https,
    Tcp,
    Tls,
    TlsPassthrough,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 8] = [
        Protocol::Grpc,
        Protocol::Grpcs,
        Protocol::Http,
        Protocol::Https,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::TlsPassthrough,
        Protocol::Udp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Grpcs => "grpcs",
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::TlsPassthrough => "tls_passthrough",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Protocols served by the stream (L4) subsystem.
    pub fn is_stream(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls | Protocol::TlsPassthrough | Protocol::Udp)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of route protocols, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProtocolSet(u8);

impl ProtocolSet {
    pub fn insert(&mut self, p: Protocol) {
        self.0 |= p.bit();
    }
    pub fn contains(self, p: Protocol) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Protocol> {
        Protocol::ALL.into_iter().filter(move |p| self.contains(*p))
    }
    /// True when every protocol in the set is a stream protocol.
    pub fn is_stream(self) -> bool {
        !self.is_empty() && self.iter().all(Protocol::is_stream)
    }
    /// The route can serve a session whose client speaks TLS and wants it
    /// terminated or passed through.
    pub fn wants_tls(self) -> bool {
        self.contains(Protocol::Tls) || self.contains(Protocol::TlsPassthrough)
    }
}

impl fmt::Display for ProtocolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(Protocol::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// Common bookkeeping fields of every entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub id: Uuid,
    pub tags: Vec<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// An upstream application, reached by protocol, host and port.
#[derive(Debug, Clone)]
pub struct Service {
    pub meta: Meta,
    pub name: Option<String>,
    pub protocol: Protocol,
    /// An IP literal, a DNS name, or the name of an upstream.
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub retries: u16,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `None` keeps the default (off), as Kong leaves nginx's default.
    pub tls_verify: Option<bool>,
    pub tls_verify_depth: Option<u8>,
    pub ca_certificates: Vec<CaCertificateIdx>,
    pub client_certificate: Option<CertificateIdx>,
    pub enabled: bool,
    /// Strait extension: send the client's addresses to the upstream in a
    /// PROXY protocol header.
    pub proxy_protocol: ProxyProtocolOut,
}

/// A service's `proxy_protocol` (Strait extension; Kong can only send PROXY
/// protocol globally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocolOut {
    #[default]
    Off,
    V1,
    V2,
}

impl ProxyProtocolOut {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolOut::Off => "off",
            ProxyProtocolOut::V1 => "v1",
            ProxyProtocolOut::V2 => "v2",
        }
    }
}

impl Service {
    /// Kong's stream idle timeout: `max(read_timeout, write_timeout)`.
    pub fn idle_timeout(&self) -> Duration {
        self.read_timeout.max(self.write_timeout)
    }

    /// A name for logs: the service's name, else its id.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.meta.id.to_string())
    }
}

/// What an address field of a route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpMatch {
    /// Written as a plain address: Kong's `ip ==` (weight 8).
    Exact(IpAddr),
    /// Written with a prefix length: Kong's `ip in` (weight 1).
    Cidr(IpNet),
}

impl IpMatch {
    pub fn matches(&self, ip: IpAddr) -> bool {
        match self {
            IpMatch::Exact(a) => *a == ip,
            IpMatch::Cidr(net) => net.contains(&ip),
        }
    }

    /// Prefix length, for the tie-break "longer prefix first".
    pub fn prefix_len(&self) -> u8 {
        match self {
            IpMatch::Exact(IpAddr::V4(_)) => 32,
            IpMatch::Exact(IpAddr::V6(_)) => 128,
            IpMatch::Cidr(net) => net.prefix_len(),
        }
    }
}

/// One entry of a route's `sources` or `destinations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: Option<IpMatch>,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.ip.is_none_or(|m| m.matches(ip)) && self.port.is_none_or(|p| p == port)
    }
}

/// A server-name pattern on a route or an SNI entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SniPattern {
    /// `example.com` (stored lower case, without a trailing dot).
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Suffix(String),
    /// `example.*`, stored as `example`.
    Prefix(String),
    /// `*` alone: any name (SNI entities only).
    Any,
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Exact(s) => f.write_str(s),
            SniPattern::Suffix(s) => write!(f, "*.{s}"),
            SniPattern::Prefix(s) => write!(f, "{s}.*"),
            SniPattern::Any => f.write_str("*"),
        }
    }
}

/// Rules that send sessions to a service.
#[derive(Debug, Clone)]
pub struct Route {
    pub meta: Meta,
    pub name: Option<String>,
    pub protocols: ProtocolSet,
    pub sources: Vec<Endpoint>,
    pub destinations: Vec<Endpoint>,
    pub snis: Vec<SniPattern>,
    pub service: Option<ServiceIdx>,
    /// In stream mode: send the client's SNI to a TLS upstream.
    pub preserve_host: bool,
    /// HTTP-only fields (`hosts`, `strip_path`, …) as given, so that HTTP
    /// routes and deck dumps survive an export.
    pub http: serde_json::Map<String, serde_json::Value>,
}

impl Route {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.meta.id.to_string())
    }
}

/// What a PEM key is, so alternative certificates can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ecdsa,
    Ed25519,
    Other,
}

/// A private key's PEM text; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A certificate chain and its private key, DER-encoded and checked to match,
/// with the PEM text they came from (for export).
#[derive(Debug)]
pub struct KeyPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub key_type: KeyType,
    pub cert_pem: String,
    pub key_pem: SecretPem,
}

impl Clone for KeyPair {
    fn clone(&self) -> Self {
        KeyPair {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            key_type: self.key_type,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Certificate {
    pub meta: Meta,
    pub pair: KeyPair,
    pub alt: Option<KeyPair>,
}

/// A server name served with a certificate.
#[derive(Debug, Clone)]
pub struct Sni {
    pub meta: Meta,
    pub name: SniPattern,
    pub certificate: CertificateIdx,
}

#[derive(Debug, Clone)]
pub struct CaCertificate {
    pub meta: Meta,
    pub cert: CertificateDer<'static>,
    pub pem: String,
    pub cert_digest: Option<String>,
}

/// Kong's balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    ConsistentHashing,
    LeastConnections,
    Latency,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "round-robin" => Algorithm::RoundRobin,
            "consistent-hashing" => Algorithm::ConsistentHashing,
            "least-connections" => Algorithm::LeastConnections,
            "latency" => Algorithm::Latency,
            _ => return None,
        })
    }
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::ConsistentHashing => "consistent-hashing",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::Latency => "latency",
        }
    }
}

/// What `consistent-hashing` hashes. On an L4 session only `ip` has a value;
/// the others (HTTP request parts, consumers) are accepted for Kong configs
/// and yield nothing, so the fallback applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashOn {
    None,
    Consumer,
    Ip,
    Header,
    Cookie,
    Path,
    QueryArg,
    UriCapture,
}

impl HashOn {
    pub const NAMES: [&'static str; 8] =
        ["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"];

    pub fn parse(s: &str) -> Option<HashOn> {
        Some(match s {
            "none" => HashOn::None,
            "consumer" => HashOn::Consumer,
            "ip" => HashOn::Ip,
            "header" => HashOn::Header,
            "cookie" => HashOn::Cookie,
            "path" => HashOn::Path,
            "query_arg" => HashOn::QueryArg,
            "uri_capture" => HashOn::UriCapture,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// A virtual host name balanced over targets. The HTTP-only hash inputs
/// (`hash_on_header`, …) are kept as given so they survive a round trip.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub meta: Meta,
    pub name: String,
    pub algorithm: Algorithm,
    pub slots: u32,
    pub hash_on: HashOn,
    pub hash_fallback: HashOn,
    pub host_header: Option<String>,
    pub client_certificate: Option<CertificateIdx>,
    pub healthchecks: Healthchecks,
    pub use_srv_name: bool,
    /// Strait: what open sessions do when health checks mark their target
    /// down (`None`: not set, as `keep`).
    pub on_target_down: Option<OnTargetDown>,
    /// Strait: what open sessions do when their target is deleted or set to
    /// weight 0 (`None`: not set, as `keep`).
    pub on_target_removed: Option<OnTargetRemoved>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `on_target_down`: sessions stay (Kong's behaviour), or close as HAProxy's
/// `on-marked-down shutdown-sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTargetDown {
    Keep,
    Close,
}

impl OnTargetDown {
    pub const NAMES: [&'static str; 2] = ["keep", "close"];

    pub fn parse(s: &str) -> Option<OnTargetDown> {
        match s {
            "keep" => Some(OnTargetDown::Keep),
            "close" => Some(OnTargetDown::Close),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// `on_target_removed`: sessions stay, close at once, or drain (close at
/// the gateway's `drain_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTargetRemoved {
    Keep,
    Close,
    Drain,
}

impl OnTargetRemoved {
    pub const NAMES: [&'static str; 3] = ["keep", "close", "drain"];

    pub fn parse(s: &str) -> Option<OnTargetRemoved> {
        match s {
            "keep" => Some(OnTargetRemoved::Keep),
            "close" => Some(OnTargetRemoved::Close),
            "drain" => Some(OnTargetRemoved::Drain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub meta: Meta,
    pub upstream: UpstreamIdx,
    /// The host part of `target`.
    pub host: String,
    pub port: u16,
    pub weight: u16,
}

impl Target {
    /// `host:port` as Kong writes `target` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A plugin instance: a native plugin of the binary's registry, one of
/// Kong's that Strait keeps without running, or a Wasm filter configured as
/// a plugin (Kong 3.9).
#[derive(Debug, Clone)]
pub struct Plugin {
    pub meta: Meta,
    pub name: String,
    pub instance_name: Option<String>,
    pub config: PluginConfig,
    pub service: Option<ServiceIdx>,
    pub route: Option<RouteIdx>,
    pub protocols: Option<ProtocolSet>,
    pub enabled: bool,
}

/// A plugin's `config`.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    /// A record, with the plugin's defaults filled in (every plugin but filters).
    Record(serde_json::Map<String, serde_json::Value>),
    /// A Wasm filter's configuration as given: any JSON its schema accepts
    /// (a string when it has none), or none at all.
    Filter(Option<serde_json::Value>),
}

impl PluginConfig {
    /// The record of a native plugin (`None` for a filter).
    pub fn record(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        match self {
            PluginConfig::Record(m) => Some(m),
            PluginConfig::Filter(_) => None,
        }
    }

    /// As the Admin API and the declarative export show it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            PluginConfig::Record(m) => serde_json::Value::Object(m.clone()),
            PluginConfig::Filter(v) => v.clone().unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Kong's `filter_chains`: proxy-wasm filters run, in order, on the
/// sessions of one route or one service.
#[derive(Debug, Clone)]
pub struct FilterChain {
    pub meta: Meta,
    pub name: Option<String>,
    pub enabled: bool,
    /// Exactly one of `route` and `service` is set.
    pub route: Option<RouteIdx>,
    pub service: Option<ServiceIdx>,
    /// At least one.
    pub filters: Vec<FilterEntry>,
}

/// One filter of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterEntry {
    /// A filter the `wasm_filters` setting enables.
    pub name: String,
    pub enabled: bool,
    /// As given (see [`PluginConfig::Filter`]).
    pub config: Option<serde_json::Value>,
}

impl FilterChain {
    /// The name, or the id when it has none (for logs).
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.meta.id.to_string())
    }
}
