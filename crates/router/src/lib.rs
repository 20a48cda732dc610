//! The stream router: which route serves a session, given its source,
//! destination and (for TLS) server name.
//!
//! Routes are compiled once per configuration into hash tables grouped by
//! "shape" (which fields an entry sets and the CIDR prefix lengths it uses).
//! A lookup costs one hash probe per shape — plus one per label of the SNI
//! for wildcard shapes — however many routes there are.
//!
//! Priority follows Kong's `traditional_compatible` flavour: routes with
//! `snis`, or with both `sources` and `destinations`, first; then the source
//! weight, then the destination weight (exact IP 8, port 4, CIDR 1, OR-ed over
//! entries). Ties go to the longer source prefix, the longer destination
//! prefix, an exact SNI over a wildcard (and a longer wildcard over a shorter
//! one), then to the route declared first. The result never depends on hash
//! order. Not for: deciding TLS termination versus passthrough — the session
//! does that from the route it gets.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use strait_model::{Config, Endpoint, IpMatch, Protocol, Route, RouteIdx, SniPattern};

mod explain;
pub use explain::{Candidate, explain, sni_matches, winner};

/// What the proxy knows about a session's transport when it asks for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// No ClientHello seen: only routes with `tcp` apply.
    Plain,
    /// A ClientHello arrived on a plain listener: `tls`, `tls_passthrough`
    /// and (raw-forwarding) `tcp` routes apply.
    TlsOnPlain,
    /// A ClientHello arrived on an `ssl` listener: only `tls` and
    /// `tls_passthrough` routes apply, as in Kong.
    TlsOnSsl,
    /// A datagram on a `udp` listener: only `udp` routes apply.
    Udp,
}

/// The facts a route is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Server name from the ClientHello, as sent by the client.
    pub sni: Option<&'a str>,
}

/// Ordering of a candidate: larger wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    pub priority: u16,
    pub src_prefix: u8,
    pub dst_prefix: u8,
    /// 2 for an exact SNI, 1 for a wildcard, 0 for none.
    pub sni_class: u8,
    pub sni_len: u16,
    pub order: Reverse<usize>,
}

/// Kong's traditional_compatible stream priority of a route.
pub fn priority(route: &Route) -> u16 {
    let top = !route.snis.is_empty() || (!route.sources.is_empty() && !route.destinations.is_empty());
    (u16::from(top) << 8) | (u16::from(weight(&route.sources)) << 4) | u16::from(weight(&route.destinations))
}

fn weight(entries: &[Endpoint]) -> u8 {
    entries.iter().fold(0, |w, e| {
        w | match e.ip {
            Some(IpMatch::Exact(_)) => 8,
            Some(IpMatch::Cidr(_)) => 1,
            None => 0,
        } | if e.port.is_some() { 4 } else { 0 }
    })
}

/// The rank of one way a route can match (one source entry, one destination
/// entry, one SNI pattern — each possibly absent).
pub fn clause_rank(
    route_priority: u16,
    order: usize,
    src: Option<&Endpoint>,
    dst: Option<&Endpoint>,
    sni: Option<&SniPattern>,
) -> Rank {
    let prefix = |e: Option<&Endpoint>| e.and_then(|e| e.ip).map_or(0, |ip| ip.prefix_len());
    let (sni_class, sni_len) = match sni {
        None => (0, 0),
        Some(SniPattern::Exact(s)) => (2, s.len() as u16),
        Some(SniPattern::Suffix(s) | SniPattern::Prefix(s)) => (1, s.len() as u16),
        Some(SniPattern::Any) => (1, 0),
    };
    Rank {
        priority: route_priority,
        src_prefix: prefix(src),
        dst_prefix: prefix(dst),
        sni_class,
        sni_len,
        order: Reverse(order),
    }
}

/// Which connection kinds a route can serve.
pub fn serves(route: &Route, kind: ConnKind) -> bool {
    let p = route.protocols;
    match kind {
        ConnKind::Plain => p.contains(Protocol::Tcp) && route.snis.is_empty(),
        ConnKind::TlsOnPlain => p.contains(Protocol::Tcp) || p.wants_tls(),
        ConnKind::TlsOnSsl => p.wants_tls(),
        ConnKind::Udp => p.contains(Protocol::Udp),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpShape {
    Any,
    V4(u8),
    V6(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct EndShape {
    ip: IpShape,
    port: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SniKind {
    None,
    Exact,
    Suffix,
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddrKey {
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
    dst_ip: Option<IpAddr>,
    dst_port: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    rank: Rank,
    route: RouteIdx,
}

type AddrMap = HashMap<AddrKey, Cand>;

#[derive(Debug)]
struct Group {
    src: EndShape,
    dst: EndShape,
    sni: SniKind,
    /// For `SniKind::None`.
    addrs: AddrMap,
    /// For SNI shapes: pattern body, then addresses.
    by_sni: HashMap<Box<str>, AddrMap>,
}

/// One lookup structure: all clauses of the routes eligible for one kind.
#[derive(Debug, Default)]
struct Table {
    groups: Vec<Group>,
    index: HashMap<(EndShape, EndShape, SniKind), usize>,
}

fn shape_of(e: Option<&Endpoint>) -> EndShape {
    let ip = match e.and_then(|e| e.ip) {
        None => IpShape::Any,
        Some(IpMatch::Exact(IpAddr::V4(_))) => IpShape::V4(32),
        Some(IpMatch::Exact(IpAddr::V6(_))) => IpShape::V6(128),
        Some(IpMatch::Cidr(net)) => match net.addr() {
            IpAddr::V4(_) => IpShape::V4(net.prefix_len()),
            IpAddr::V6(_) => IpShape::V6(net.prefix_len()),
        },
    };
    EndShape { ip, port: e.is_some_and(|e| e.port.is_some()) }
}

fn mask(ip: IpAddr, shape: IpShape) -> Option<Option<IpAddr>> {
    match (shape, ip) {
        (IpShape::Any, _) => Some(None),
        (IpShape::V4(len), IpAddr::V4(a)) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            Some(Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))))
        }
        (IpShape::V6(len), IpAddr::V6(a)) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            Some(Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))))
        }
        // An IPv4 session never matches an IPv6 entry and vice versa.
        _ => None,
    }
}

fn entry_key(e: Option<&Endpoint>) -> (Option<IpAddr>, Option<u16>) {
    let ip = e.and_then(|e| e.ip).map(|m| match m {
        IpMatch::Exact(a) => a,
        IpMatch::Cidr(net) => net.network(),
    });
    (ip, e.and_then(|e| e.port))
}

impl Table {
    fn insert(&mut self, src: Option<&Endpoint>, dst: Option<&Endpoint>, sni: Option<&SniPattern>, cand: Cand) {
        let (sni_kind, body) = match sni {
            None | Some(SniPattern::Any) => (SniKind::None, None),
            Some(SniPattern::Exact(s)) => (SniKind::Exact, Some(s.as_str())),
            Some(SniPattern::Suffix(s)) => (SniKind::Suffix, Some(s.as_str())),
            Some(SniPattern::Prefix(s)) => (SniKind::Prefix, Some(s.as_str())),
        };
        let shape = (shape_of(src), shape_of(dst), sni_kind);
        let gi = *self.index.entry(shape).or_insert_with(|| {
            self.groups.push(Group {
                src: shape.0,
                dst: shape.1,
                sni: shape.2,
                addrs: HashMap::new(),
                by_sni: HashMap::new(),
            });
            self.groups.len() - 1
        });
        let (src_ip, src_port) = entry_key(src);
        let (dst_ip, dst_port) = entry_key(dst);
        let key = AddrKey { src_ip, src_port, dst_ip, dst_port };
        let group = &mut self.groups[gi];
        let map = match body {
            None => &mut group.addrs,
            Some(b) => group.by_sni.entry(b.into()).or_default(),
        };
        map.entry(key)
            .and_modify(|c| {
                if cand.rank > c.rank {
                    *c = cand;
                }
            })
            .or_insert(cand);
    }

    fn find(&self, facts: &Facts<'_>, sni: Option<&str>) -> Option<Cand> {
        let mut best: Option<Cand> = None;
        let mut offer = |c: Option<&Cand>| {
            if let Some(c) = c {
                if best.is_none_or(|b| c.rank > b.rank) {
                    best = Some(*c);
                }
            }
        };
        for g in &self.groups {
            let (Some(src_ip), Some(dst_ip)) = (mask(facts.src.ip(), g.src.ip), mask(facts.dst.ip(), g.dst.ip)) else {
                continue;
            };
            let key = AddrKey {
                src_ip,
                src_port: g.src.port.then_some(facts.src.port()),
                dst_ip,
                dst_port: g.dst.port.then_some(facts.dst.port()),
            };
            match g.sni {
                SniKind::None => offer(g.addrs.get(&key)),
                SniKind::Exact => {
                    if let Some(s) = sni {
                        offer(g.by_sni.get(s).and_then(|m| m.get(&key)));
                    }
                }
                // `*.x` matches names ending in `.x` at any depth.
                SniKind::Suffix => {
                    if let Some(s) = sni {
                        for (i, _) in s.match_indices('.') {
                            offer(g.by_sni.get(&s[i + 1..]).and_then(|m| m.get(&key)));
                        }
                    }
                }
                // `x.*` matches names starting with `x.`.
                SniKind::Prefix => {
                    if let Some(s) = sni {
                        for (i, _) in s.match_indices('.') {
                            offer(g.by_sni.get(&s[..i]).and_then(|m| m.get(&key)));
                        }
                    }
                }
            }
        }
        best
    }
}

/// Every way (clause) a route can match: one entry per non-empty group.
pub fn clauses(route: &Route) -> Vec<(Option<&Endpoint>, Option<&Endpoint>, Option<&SniPattern>)> {
    fn opts<T>(v: &[T]) -> Vec<Option<&T>> {
        if v.is_empty() { vec![None] } else { v.iter().map(Some).collect() }
    }
    let mut out = Vec::new();
    for s in opts(&route.sources) {
        for d in opts(&route.destinations) {
            for n in opts(&route.snis) {
                out.push((s, d, n));
            }
        }
    }
    out
}

/// A compiled router for one configuration.
#[derive(Debug, Default)]
pub struct Router {
    plain: Table,
    tls_on_plain: Table,
    tls_on_ssl: Table,
    udp: Table,
    /// Routes that want TLS, with their SNIs dropped: "could a TLS route
    /// match this source and destination, whatever the client's SNI?"
    tls_any: Table,
    /// The same for `udp` routes with `snis` (QUIC).
    quic_any: Table,
}

impl Router {
    /// Compiles the stream routes of `config`. Routes of disabled services are
    /// left out, as Kong does; routes without a service stay (they answer 503).
    pub fn new(config: &Config) -> Router {
        let mut r = Router::default();
        for (order, route) in config.routes.iter().enumerate() {
            if !route.protocols.is_stream() {
                continue;
            }
            if route.service.is_some_and(|s| !config.services[s.0].enabled) {
                continue;
            }
            let prio = priority(route);
            for (s, d, n) in clauses(route) {
                let cand = Cand { rank: clause_rank(prio, order, s, d, n), route: RouteIdx(order) };
                for (kind, table) in [
                    (ConnKind::Plain, &mut r.plain),
                    (ConnKind::TlsOnPlain, &mut r.tls_on_plain),
                    (ConnKind::TlsOnSsl, &mut r.tls_on_ssl),
                    (ConnKind::Udp, &mut r.udp),
                ] {
                    if serves(route, kind) {
                        table.insert(s, d, n, cand);
                    }
                }
                if route.protocols.wants_tls() {
                    r.tls_any.insert(s, d, None, cand);
                }
                if route.protocols.contains(Protocol::Udp) && n.is_some() {
                    r.quic_any.insert(s, d, None, cand);
                }
            }
        }
        r
    }

    /// The best route for a session, if any.
    pub fn find(&self, kind: ConnKind, facts: &Facts<'_>) -> Option<RouteIdx> {
        self.find_ranked(kind, facts).map(|(r, _)| r)
    }

    /// As [`Router::find`], with the winning rank (for tests and debugging).
    pub fn find_ranked(&self, kind: ConnKind, facts: &Facts<'_>) -> Option<(RouteIdx, Rank)> {
        let table = match kind {
            ConnKind::Plain => &self.plain,
            ConnKind::TlsOnPlain => &self.tls_on_plain,
            ConnKind::TlsOnSsl => &self.tls_on_ssl,
            ConnKind::Udp => &self.udp,
        };
        let normalised;
        let sni = match facts.sni {
            Some(s) if s.ends_with('.') || s.bytes().any(|b| b.is_ascii_uppercase()) => {
                normalised = s.trim_end_matches('.').to_ascii_lowercase();
                Some(normalised.as_str())
            }
            other => other,
        };
        table.find(facts, sni).map(|c| (c.route, c.rank))
    }

    /// Whether the first client bytes could change the routing decision for a
    /// session from `src` to `dst` on a plain listener, and so are worth
    /// waiting for.
    pub fn preread_need(&self, src: SocketAddr, dst: SocketAddr) -> PrereadNeed {
        let facts = Facts { src, dst, sni: None };
        let Some(tls) = self.tls_any.find(&facts, None) else {
            return PrereadNeed::None;
        };
        match self.plain.find(&facts, None) {
            // The plain route outranks every TLS route that could match, with
            // any SNI: whatever the client sends, it wins.
            Some(plain) if plain.rank > tls.rank => PrereadNeed::None,
            Some(_) => PrereadNeed::PlainFallback,
            None => PrereadNeed::TlsOnly,
        }
    }
}

impl Router {
    /// Whether a `udp` route with `snis` could serve datagrams from `src` to
    /// `dst`, so the first datagrams are worth reading as a QUIC Initial.
    pub fn quic_sni_possible(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        self.quic_any.find(&Facts { src, dst, sni: None }, None).is_some()
    }
}

/// What a plain listener should do before routing a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrereadNeed {
    /// Route at once, without reading: no TLS route can win.
    None,
    /// A TLS route could win, and a plain route serves the session otherwise.
    PlainFallback,
    /// Only TLS routes could serve the session.
    TlsOnly,
}

#[cfg(test)]
mod tests;
