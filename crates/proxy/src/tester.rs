//! The route tester (`GET /router/match`): which route a session with these
//! facts would get, or why it would get none, the candidates in the order
//! the router ranks them, and whether a plain port would first wait for a
//! ClientHello. It asks what a session asks, in the same order — the
//! listener decides TLS or not, then `preread_need`, then the router — so
//! its answer is where a real session goes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use strait_model::Protocol;
use strait_router::{ConnKind, Facts, PrereadNeed};

use crate::listener::ListenerInfo;
use crate::{Snapshot, Tunables};

/// What a session would bring: how it speaks, from where, to where.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `tcp` (no ClientHello), `tls` or `tls_passthrough` (a ClientHello
    /// with `sni`), or `udp`.
    pub protocol: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub sni: Option<String>,
}

/// Answers probes against the configuration and listeners in use now.
#[derive(Debug, Clone)]
pub struct RouteTester {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) tunables: Arc<ArcSwap<Tunables>>,
    pub(crate) listening: Arc<RwLock<Vec<Arc<ListenerInfo>>>>,
}

impl RouteTester {
    /// The listener a session to `dst` would reach.
    fn listener(&self, dst: SocketAddr, udp: bool) -> Option<Arc<ListenerInfo>> {
        let all = self.listening.read().unwrap_or_else(|p| p.into_inner());
        let takes = |l: &&Arc<ListenerInfo>| {
            l.udp == udp && l.addr.port() == dst.port() && (l.addr.ip().is_unspecified() || l.addr.ip() == dst.ip())
        };
        // A listener on the exact address wins over a wildcard one, as the kernel picks.
        let exact = all.iter().filter(takes).find(|l| l.addr.ip() == dst.ip());
        exact.or_else(|| all.iter().find(takes)).cloned()
    }

    /// The answer, as the Admin API shows it.
    pub fn probe(&self, p: &Probe) -> Value {
        let snap = self.snapshot.load_full();
        let tun = self.tunables.load();
        let udp = p.protocol == Protocol::Udp;
        let hello = matches!(p.protocol, Protocol::Tls | Protocol::TlsPassthrough);
        let listener = self.listener(p.destination, udp);
        let ssl = listener.as_ref().is_some_and(|l| l.ssl);
        let mut notes = Vec::new();
        if listener.is_none() {
            notes.push(format!(
                "no {} listener takes {}: answered as for a plain one",
                if udp { "udp" } else { "stream" },
                p.destination
            ));
        }
        // As `classify`: what the session would wait for, and as what it is routed.
        let need = if udp || ssl { None } else { Some(snap.router.preread_need(p.source, p.destination)) };
        let (kind, fail) = match (udp, ssl, hello, need) {
            (true, ..) => (ConnKind::Udp, None),
            (_, true, true, _) => (ConnKind::TlsOnSsl, None),
            (_, true, false, _) => (ConnKind::TlsOnSsl, Some("an ssl listener accepts only TLS")),
            // The router said the first bytes cannot matter: nothing is read.
            (_, false, _, Some(PrereadNeed::None)) => (ConnKind::Plain, None),
            (_, false, true, _) => (ConnKind::TlsOnPlain, None),
            (_, false, false, Some(PrereadNeed::TlsOnly)) => {
                (ConnKind::Plain, Some("only TLS routes match and the client did not speak TLS"))
            }
            (_, false, false, _) => (ConnKind::Plain, None),
        };
        let sni = if kind == ConnKind::Plain { None } else { p.sni.as_deref() };
        let facts = Facts { src: p.source, dst: p.destination, sni };
        let candidates = strait_router::explain(&snap.config, kind, &facts);
        let found = snap.router.find(kind, &facts).and_then(|r| snap.route(r));
        let route = found.filter(|_| fail.is_none());
        let reason = match (fail, route) {
            (Some(why), _) => Some(why),
            (None, None) => Some("no Route found with those values"),
            (None, Some(_)) => None,
        };
        if hello && kind == ConnKind::Plain {
            notes.push(
                "no TLS route could win for these addresses: the ClientHello is not read, the plain route serves"
                    .to_owned(),
            );
        }
        let service = route.and_then(|r| r.service).and_then(|s| snap.service(s));
        let tls_detect = need.map(|n| {
            let (waits, timeout) = match n {
                PrereadNeed::None => (false, None),
                PrereadNeed::PlainFallback => (true, Some(tun.tls_detect)),
                PrereadNeed::TlsOnly => (true, Some(tun.preread)),
            };
            json!({
                "waits_for_client_hello": waits,
                "timeout_ms": timeout.map(|t| t.as_millis() as u64),
                "then": match n {
                    PrereadNeed::None => "routes at once",
                    PrereadNeed::PlainFallback => "a plain route serves a client that sends no ClientHello in time (tls_detect_timeout)",
                    PrereadNeed::TlsOnly => "only TLS routes can serve: a client that does not speak TLS is refused (preread_timeout)",
                },
            })
        });
        let listed: Vec<Value> = candidates
            .iter()
            .filter_map(|c| {
                let r = snap.route(c.route)?;
                Some(json!({
                    "route": r.named.json(),
                    "matched": c.matched,
                    "mismatched": c.mismatched,
                    "priority": c.rank.priority,
                }))
            })
            .collect();
        json!({
            "route": route.map(|r| r.named.json()),
            "service": service.map(|s| s.named.json()),
            "protocol": route.map(|r| r.protocol_for(kind).as_str()),
            "reason": reason,
            "listener": listener.map(|l| json!({ "address": l.addr.to_string(), "ssl": l.ssl, "proxy_protocol": l.proxy_protocol, "udp": l.udp })),
            "tls_detect": tls_detect,
            "candidates": listed,
            "notes": notes,
        })
    }
}
