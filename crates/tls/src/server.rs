//! TLS termination: picking the certificate for a client's SNI.
//!
//! Lookup order, as Kong: exact name → `*.x` (replacing only the first label)
//! → `x.*` → the `*` SNI → the default certificate. A certificate with an
//! alternative pair (RSA and ECDSA) offers both; the one the client can verify
//! is chosen.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use strait_model::{Config, KeyPair, SniPattern};

use crate::TlsError;

/// The certificates a certificate entity offers: its main pair and maybe an alternative.
type Offer = Arc<[Arc<CertifiedKey>]>;

/// Certificates by server name, compiled once per configuration.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Offer>,
    suffix: HashMap<String, Offer>,
    prefix: HashMap<String, Offer>,
    any: Option<Offer>,
    default: Offer,
}

pub(crate) fn certified(provider: &CryptoProvider, pair: &KeyPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = provider.key_provider.load_private_key(pair.key.clone_key()).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(pair.chain.clone(), key)))
}

fn offer(provider: &CryptoProvider, main: &KeyPair, alt: Option<&KeyPair>) -> Result<Offer, TlsError> {
    let mut v = vec![certified(provider, main)?];
    if let Some(alt) = alt {
        v.push(certified(provider, alt)?);
    }
    Ok(v.into())
}

impl CertStore {
    /// Builds the store from the configuration's SNIs and the default pair.
    pub fn new(config: &Config, default: &KeyPair) -> Result<CertStore, TlsError> {
        let provider = crate::provider();
        let offers = config
            .certificates
            .iter()
            .map(|c| offer(&provider, &c.pair, c.alt.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut store = CertStore {
            exact: HashMap::new(),
            suffix: HashMap::new(),
            prefix: HashMap::new(),
            any: None,
            default: offer(&provider, default, None)?,
        };
        for sni in &config.snis {
            let Some(o) = offers.get(sni.certificate.0) else {
                continue;
            };
            let o = o.clone();
            match &sni.name {
                SniPattern::Exact(n) => store.exact.insert(n.clone(), o),
                SniPattern::Suffix(n) => store.suffix.insert(n.clone(), o),
                SniPattern::Prefix(n) => store.prefix.insert(n.clone(), o),
                SniPattern::Any => store.any.replace(o),
            };
        }
        Ok(store)
    }

    /// The certificates to offer for `sni`.
    pub fn lookup(&self, sni: Option<&str>) -> &[Arc<CertifiedKey>] {
        let Some(sni) = sni else {
            return &self.default;
        };
        let sni = sni.trim_end_matches('.');
        let lowered;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = sni.to_ascii_lowercase();
            lowered.as_str()
        } else {
            sni
        };
        if let Some(o) = self.exact.get(sni) {
            return o;
        }
        if let Some((_, rest)) = sni.split_once('.') {
            if let Some(o) = self.suffix.get(rest) {
                return o;
            }
        }
        if let Some((head, _)) = sni.rsplit_once('.') {
            if let Some(o) = self.prefix.get(head) {
                return o;
            }
        }
        self.any.as_deref().unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offer = self.lookup(hello.server_name());
        let schemes = hello.signature_schemes();
        offer.iter().find(|ck| ck.key.choose_scheme(schemes).is_some()).or_else(|| offer.first()).cloned()
    }
}

/// How clients may resume a TLS session instead of a full handshake: Kong's
/// `ssl_session_tickets` and `ssl_session_cache_size`.
///
/// Each server configuration gets its own ticket keys and session cache, so a
/// session is only ever resumed under the configuration that made it: one
/// made without a client certificate can never be resumed on a route whose
/// `mtls-auth` asks for one (a resumed handshake verifies no certificate). A
/// configuration change therefore starts with fresh keys and an empty cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// Stateless tickets (keys rotated every six hours by rustls).
    pub tickets: bool,
    /// Sessions kept for resumption by ID; 0 keeps none.
    pub cache: usize,
}

impl Default for Resumption {
    /// Kong's defaults: tickets on, a 10 MB cache (about 40,000 sessions).
    fn default() -> Self {
        Resumption { tickets: true, cache: 40_000 }
    }
}

impl Resumption {
    pub(crate) fn apply(self, config: &mut ServerConfig) -> Result<(), TlsError> {
        config.session_storage = if self.cache == 0 {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            rustls::server::ServerSessionMemoryCache::new(self.cache)
        };
        if self.tickets {
            config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        }
        if !self.tickets && self.cache == 0 {
            // Nothing to resume with: send no NewSessionTicket at all.
            config.send_tls13_tickets = 0;
        }
        Ok(())
    }
}

/// A TLS 1.2 + 1.3 server configuration that picks certificates from `store`.
pub fn server_config(store: Arc<CertStore>, resumption: Resumption) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    resumption.apply(&mut config)?;
    Ok(Arc::new(config))
}
