//! TLS termination: picking the certificate for a client's SNI.
//!
//! Lookup order, as Kong: exact name → `*.x` (replacing only the first label)
//! → `x.*` → the `*` SNI → the default certificate. A certificate with an
//! alternative pair (RSA and ECDSA) offers both; the one the client can verify
//! is chosen.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, pki_types::CertificateDer};
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
    /// Which certificate each name gets (see [`identity`]).
    identity: u64,
}

/// A digest of what makes two TLS server configurations the same: two with
/// the same one may resume each other's sessions. Keyed with a secret
/// random to this process, so no one can make two different configurations
/// collide on purpose.
pub(crate) fn identity<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let mut h = KEY.get_or_init(RandomState::new).build_hasher();
    for p in parts {
        h.write_usize(p.len());
        h.write(p);
    }
    h.finish()
}

/// The identity of a certificate chain offered under a name (`kind` tells
/// exact names, suffixes, prefixes, `*` and the default apart).
fn named_chains(kind: u8, name: &str, chains: &[&[CertificateDer<'static>]]) -> u64 {
    // Each chain's length first, so that where one ends is never in doubt.
    let lengths: Vec<[u8; 8]> = chains.iter().map(|c| c.len().to_be_bytes()).collect();
    let kind = [kind];
    let mut parts: Vec<&[u8]> = vec![&kind, name.as_bytes()];
    for (chain, len) in chains.iter().zip(&lengths) {
        parts.push(len);
        parts.extend(chain.iter().map(|d| d.as_ref()));
    }
    identity(parts)
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
            identity: 0,
        };
        // Summed, so that the order the SNIs come in does not matter.
        let mut names = named_chains(0, "", &[&default.chain]);
        for sni in &config.snis {
            let (Some(o), Some(c)) = (offers.get(sni.certificate.0), config.certificates.get(sni.certificate.0)) else {
                continue;
            };
            let chains: Vec<&[CertificateDer<'static>]> =
                std::iter::once(&c.pair).chain(c.alt.as_ref()).map(|p| p.chain.as_slice()).collect();
            let o = o.clone();
            let (kind, name) = match &sni.name {
                SniPattern::Exact(n) => {
                    store.exact.insert(n.clone(), o);
                    (1, n.as_str())
                }
                SniPattern::Suffix(n) => {
                    store.suffix.insert(n.clone(), o);
                    (2, n.as_str())
                }
                SniPattern::Prefix(n) => {
                    store.prefix.insert(n.clone(), o);
                    (3, n.as_str())
                }
                SniPattern::Any => {
                    store.any = Some(o);
                    (4, "*")
                }
            };
            names = names.wrapping_add(named_chains(kind, name, &chains));
        }
        store.identity = identity([&names.to_be_bytes()[..]]);
        Ok(store)
    }

    /// What names get which certificates, as a digest: equal for two
    /// stores built from the same certificates and SNIs.
    pub fn identity(&self) -> u64 {
        self.identity
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
/// Each distinct server configuration gets its own ticket keys and its own
/// partition of the one session cache, so a session is only ever resumed
/// under a configuration like the one that made it: one made without a
/// client certificate can never be resumed on a route whose `mtls-auth` asks
/// for one (a resumed handshake verifies no certificate). Configurations are
/// told apart by their identity (which certificate each name gets, and for
/// client certificates which CAs and names are accepted), so a configuration
/// change that leaves TLS alone (routes, services, upstreams, targets)
/// keeps every session resumable, and one that changes a certificate starts
/// that configuration afresh, as nginx's session ID context does. The
/// cache's size bounds all partitions together, as Kong's one shared zone
/// does.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Stateless tickets (keys rotated by rustls).
    tickets: bool,
    /// Sessions kept for resumption by ID; `None` keeps none.
    cache: Option<Arc<ServerSessionMemoryCache>>,
    /// The keys and partitions of the configurations in use, by identity.
    /// Weak: they go when the last configuration using them does.
    kept: Arc<Mutex<HashMap<u64, Kept>>>,
}

#[derive(Debug)]
struct Kept {
    ticketer: Option<Weak<dyn ProducesTickets>>,
    partition: Option<Weak<Partition>>,
}

impl Resumption {
    /// `cache` sessions at most, for every configuration together (0: none).
    pub fn new(tickets: bool, cache: usize) -> Resumption {
        Resumption { tickets, cache: (cache > 0).then(|| ServerSessionMemoryCache::new(cache)), kept: Arc::default() }
    }

    /// Sets `config` up to resume sessions made under configurations of
    /// the same `identity`, and only those.
    pub(crate) fn apply(&self, config: &mut ServerConfig, identity: u64) -> Result<(), TlsError> {
        if !self.tickets && self.cache.is_none() {
            // Nothing to resume with: send no NewSessionTicket at all.
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
            return Ok(());
        }
        // Only compiling a configuration takes this lock, never a handshake.
        let mut kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let reused = kept.get(&identity).and_then(|k| {
            let ticketer = match &k.ticketer {
                Some(t) => Some(t.upgrade()?),
                None => None,
            };
            let partition = match &k.partition {
                Some(p) => Some(p.upgrade()?),
                None => None,
            };
            Some((ticketer, partition))
        });
        let (ticketer, partition) = match reused {
            Some(both) => both,
            None => {
                let ticketer = if self.tickets {
                    Some(rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?)
                } else {
                    None
                };
                let partition = self.cache.as_ref().map(|shared| Arc::new(Partition::new(shared.clone())));
                kept.retain(|_, k| {
                    k.ticketer.as_ref().is_some_and(|t| t.strong_count() > 0)
                        || k.partition.as_ref().is_some_and(|p| p.strong_count() > 0)
                });
                kept.insert(
                    identity,
                    Kept {
                        ticketer: ticketer.as_ref().map(Arc::downgrade),
                        partition: partition.as_ref().map(Arc::downgrade),
                    },
                );
                (ticketer, partition)
            }
        };
        config.session_storage = match partition {
            Some(p) => p,
            None => Arc::new(NoServerSessionStorage {}),
        };
        if let Some(t) = ticketer {
            config.ticketer = t;
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
    let id = identity([&b"no client certificates"[..], &store.identity().to_be_bytes()]);
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    resumption.apply(&mut config, id)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pem {
        cert: String,
        key: String,
    }

    fn leaf(names: &[&str]) -> Pem {
        let g = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate");
        Pem { cert: g.cert.pem(), key: g.signing_key.serialize_pem() }
    }

    fn indent(text: &str) -> String {
        text.lines().map(|l| format!("    {l}\n")).collect()
    }

    /// A store from certificates and the SNIs each one serves, in this order.
    fn store(certs: &[(&Pem, &[&str])], default: &KeyPair) -> CertStore {
        let mut yaml = String::from("_format_version: \"3.0\"\ncertificates:\n");
        for (pem, snis) in certs {
            yaml.push_str(&format!(
                "- cert: |\n{}  key: |\n{}  snis: [{}]\n",
                indent(&pem.cert),
                indent(&pem.key),
                snis.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
            ));
        }
        let config = strait_model::load_str(&yaml).expect("valid configuration").config;
        CertStore::new(&config, default).expect("store")
    }

    #[test]
    fn a_store_identity_follows_which_chain_each_name_gets() {
        let d = leaf(&["default"]);
        let default = strait_model::pem::key_pair(&d.cert, &d.key, "default").expect("key pair");
        let (a, b, a2) = (leaf(&["a.test"]), leaf(&["b.test"]), leaf(&["a.test"]));
        let base = store(&[(&a, &["a.test", "*.a.test"]), (&b, &["b.test"])], &default).identity();

        // The same content, in another order: the same identity.
        assert_eq!(store(&[(&a, &["a.test", "*.a.test"]), (&b, &["b.test"])], &default).identity(), base);
        assert_eq!(store(&[(&b, &["b.test"]), (&a, &["*.a.test", "a.test"])], &default).identity(), base);

        // Anything a client could see differently: another identity.
        for (case, other) in [
            ("another chain for a name", store(&[(&a2, &["a.test", "*.a.test"]), (&b, &["b.test"])], &default)),
            ("a name served by another chain", store(&[(&a, &["a.test"]), (&b, &["b.test", "*.a.test"])], &default)),
            ("a name fewer", store(&[(&a, &["a.test", "*.a.test"])], &default)),
            ("an exact name for a wildcard", store(&[(&a, &["a.test", "x.a.test"]), (&b, &["b.test"])], &default)),
        ] {
            assert_ne!(other.identity(), base, "{case}");
        }
        let e = leaf(&["default"]);
        let other_default = strait_model::pem::key_pair(&e.cert, &e.key, "default").expect("key pair");
        assert_ne!(store(&[(&a, &["a.test", "*.a.test"]), (&b, &["b.test"])], &other_default).identity(), base);
    }
}
