//! TLS termination: picking the certificate for a client's SNI.
//!
//! Lookup order, as Kong: exact name → `*.x` (replacing only the first label)
//! → `x.*` → the `*` SNI → the default certificate. A certificate with an
//! alternative pair (RSA and ECDSA) offers both; the one the client can verify
//! is chosen.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
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
/// Each server configuration gets its own ticket keys and its own partition
/// of the one session cache, so a session is only ever resumed under the
/// configuration that made it: one made without a client certificate can
/// never be resumed on a route whose `mtls-auth` asks for one (a resumed
/// handshake verifies no certificate). The cache's size bounds all
/// partitions together, as Kong's one shared zone does. A configuration
/// change starts with fresh keys and an empty partition.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Stateless tickets (keys rotated by rustls).
    tickets: bool,
    /// Sessions kept for resumption by ID; `None` keeps none.
    cache: Option<Arc<ServerSessionMemoryCache>>,
}

impl Resumption {
    /// `cache` sessions at most, for every configuration together (0: none).
    pub fn new(tickets: bool, cache: usize) -> Resumption {
        Resumption { tickets, cache: (cache > 0).then(|| ServerSessionMemoryCache::new(cache)) }
    }

    pub(crate) fn apply(&self, config: &mut ServerConfig) -> Result<(), TlsError> {
        config.session_storage = match &self.cache {
            Some(shared) => Arc::new(Partition::new(shared.clone())),
            None => Arc::new(NoServerSessionStorage {}),
        };
        if self.tickets {
            config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        }
        if !self.tickets && self.cache.is_none() {
            // Nothing to resume with: send no NewSessionTicket at all.
            config.send_tls13_tickets = 0;
        }
        Ok(())
    }
}

impl Default for Resumption {
    /// Kong's defaults: tickets on, a 10 MB cache (about 40,000 sessions).
    fn default() -> Self {
        Resumption::new(true, 40_000)
    }
}

/// One configuration's share of the session cache: its keys carry a prefix
/// no other configuration of this process uses.
#[derive(Debug)]
struct Partition {
    prefix: [u8; 8],
    shared: Arc<ServerSessionMemoryCache>,
}

impl Partition {
    fn new(shared: Arc<ServerSessionMemoryCache>) -> Partition {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Partition { prefix: NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes(), shared }
    }

    fn key(&self, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + id.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(id);
        k
    }
}

impl StoresServerSessions for Partition {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.shared.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A TLS 1.2 + 1.3 server configuration that picks certificates from `store`.
pub fn server_config(store: Arc<CertStore>, resumption: &Resumption) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    resumption.apply(&mut config)?;
    Ok(Arc::new(config))
}
