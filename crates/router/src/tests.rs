use std::time::Duration;

use proptest::prelude::*;
use strait_model::{Meta, ProtocolSet, Service, ServiceIdx};

use super::*;

fn nil_meta() -> Meta {
    Meta { id: Default::default(), tags: Vec::new(), created_at: None, updated_at: None }
}

fn service(enabled: bool) -> Service {
    Service {
        meta: nil_meta(),
        name: None,
        protocol: Protocol::Tcp,
        host: "127.0.0.1".into(),
        port: 1,
        path: None,
        retries: 0,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        tls_verify: None,
        tls_verify_depth: None,
        ca_certificates: Vec::new(),
        client_certificate: None,
        enabled,
        proxy_protocol: Default::default(),
    }
}

fn protocols(list: &[Protocol]) -> ProtocolSet {
    let mut s = ProtocolSet::default();
    for p in list {
        s.insert(*p);
    }
    s
}

fn ep(ip: Option<&str>, port: Option<u16>) -> Endpoint {
    Endpoint { ip: ip.map(|s| strait_model::declarative::parse_ip_match(s).unwrap()), port }
}

fn route(protos: &[Protocol], sources: Vec<Endpoint>, destinations: Vec<Endpoint>, snis: &[&str]) -> Route {
    Route {
        meta: nil_meta(),
        name: None,
        protocols: protocols(protos),
        sources,
        destinations,
        snis: snis.iter().map(|s| strait_model::parse_sni(s, false).unwrap()).collect(),
        service: Some(ServiceIdx(0)),
        preserve_host: false,
        http: Default::default(),
    }
}

fn config(routes: Vec<Route>) -> Config {
    Config { services: vec![service(true), service(false)], routes, ..Default::default() }
}

fn facts<'a>(src: &str, dst: &str, sni: Option<&'a str>) -> Facts<'a> {
    Facts { src: src.parse().unwrap(), dst: dst.parse().unwrap(), sni }
}

const TCP: &[Protocol] = &[Protocol::Tcp];
const TLS: &[Protocol] = &[Protocol::Tls];

#[test]
fn destination_ip_and_port_beat_port_alone() {
    let r = Router::new(&config(vec![
        route(TCP, vec![], vec![ep(None, Some(9000))], &[]),
        route(TCP, vec![], vec![ep(Some("127.0.0.1"), Some(9000))], &[]),
        route(TCP, vec![], vec![ep(Some("127.0.0.0/8"), None)], &[]),
    ]));
    let f = facts("10.0.0.1:5000", "127.0.0.1:9000", None);
    assert_eq!(r.find(ConnKind::Plain, &f), Some(RouteIdx(1)));
    let f = facts("10.0.0.1:5000", "127.0.0.2:9000", None);
    assert_eq!(r.find(ConnKind::Plain, &f), Some(RouteIdx(0)));
    let f = facts("10.0.0.1:5000", "127.0.0.2:9001", None);
    assert_eq!(r.find(ConnKind::Plain, &f), Some(RouteIdx(2)));
    let f = facts("10.0.0.1:5000", "10.0.0.2:9001", None);
    assert_eq!(r.find(ConnKind::Plain, &f), None);
}

#[test]
fn longer_source_prefix_wins_a_tie() {
    let r = Router::new(&config(vec![
        route(TCP, vec![ep(Some("10.0.0.0/8"), None)], vec![], &[]),
        route(TCP, vec![ep(Some("10.1.0.0/16"), None)], vec![], &[]),
    ]));
    assert_eq!(r.find(ConnKind::Plain, &facts("10.1.2.3:1", "127.0.0.1:9000", None)), Some(RouteIdx(1)));
    assert_eq!(r.find(ConnKind::Plain, &facts("10.2.2.3:1", "127.0.0.1:9000", None)), Some(RouteIdx(0)));
}

#[test]
fn sni_and_src_dst_get_the_top_bit() {
    // [src]+[dst] outranks [sni]; [sni] outranks [src] or [dst] alone.
    let r = Router::new(&config(vec![
        route(&[Protocol::Tcp, Protocol::Tls], vec![], vec![ep(Some("127.0.0.1"), Some(9000))], &[]),
        route(TLS, vec![], vec![], &["a.test"]),
        route(TCP, vec![ep(Some("10.0.0.0/8"), None)], vec![ep(None, Some(9000))], &[]),
    ]));
    let f = facts("192.168.0.1:1", "127.0.0.1:9000", Some("a.test"));
    assert_eq!(r.find(ConnKind::TlsOnPlain, &f), Some(RouteIdx(1)));
    let f = facts("10.0.0.1:1", "127.0.0.1:9000", Some("a.test"));
    assert_eq!(r.find(ConnKind::TlsOnPlain, &f), Some(RouteIdx(2)));
}

#[test]
fn wildcards_and_trailing_dots() {
    let r = Router::new(&config(vec![
        route(TLS, vec![], vec![], &["*.foo.test"]),
        route(TLS, vec![], vec![], &["bar.*"]),
        route(TLS, vec![], vec![], &["exact.foo.test"]),
        route(TLS, vec![], vec![], &["*.b.foo.test"]),
    ]));
    let find = |sni| r.find(ConnKind::TlsOnSsl, &facts("1.1.1.1:1", "2.2.2.2:2", Some(sni)));
    assert_eq!(find("a.foo.test"), Some(RouteIdx(0)));
    assert_eq!(find("a.c.foo.test"), Some(RouteIdx(0)), "suffix wildcards match any depth");
    assert_eq!(find("a.b.foo.test"), Some(RouteIdx(3)), "longer wildcard wins");
    assert_eq!(find("EXACT.foo.test."), Some(RouteIdx(2)), "exact beats wildcard, case and dot ignored");
    assert_eq!(find("bar.x"), Some(RouteIdx(1)));
    assert_eq!(find("bar.y.z"), Some(RouteIdx(1)));
    assert_eq!(find("foo.test"), None);
    assert_eq!(find("bar"), None);
}

#[test]
fn kinds_filter_protocols() {
    let r = Router::new(&config(vec![
        route(TCP, vec![], vec![ep(None, Some(9000))], &[]),
        route(TLS, vec![], vec![ep(None, Some(9000))], &[]),
        route(&[Protocol::TlsPassthrough], vec![], vec![], &["p.test"]),
    ]));
    let plain = facts("1.1.1.1:1", "127.0.0.1:9000", None);
    assert_eq!(r.find(ConnKind::Plain, &plain), Some(RouteIdx(0)));
    // Same priority: declaration order decides between tcp and tls on a plain port.
    assert_eq!(r.find(ConnKind::TlsOnPlain, &plain), Some(RouteIdx(0)));
    assert_eq!(r.find(ConnKind::TlsOnSsl, &plain), Some(RouteIdx(1)));
    let p = facts("1.1.1.1:1", "127.0.0.1:9000", Some("p.test"));
    assert_eq!(r.find(ConnKind::TlsOnSsl, &p), Some(RouteIdx(2)));
    assert_eq!(r.preread_need(plain.src, plain.dst), PrereadNeed::PlainFallback);
}

#[test]
fn preread_only_when_a_tls_route_could_win() {
    let r = Router::new(&config(vec![
        route(TCP, vec![], vec![ep(None, Some(9000))], &[]),
        route(TLS, vec![], vec![ep(None, Some(9001))], &[]),
        route(TCP, vec![], vec![ep(Some("127.0.0.1"), Some(9002))], &[]),
        route(TLS, vec![], vec![ep(None, Some(9002))], &[]),
        route(TLS, vec![], vec![ep(None, Some(9003))], &["a.test"]),
        route(TCP, vec![], vec![ep(None, Some(9003))], &[]),
    ]));
    let s = "1.1.1.1:1".parse().unwrap();
    let need = |d: &str| r.preread_need(s, d.parse().unwrap());
    assert_eq!(need("127.0.0.1:9000"), PrereadNeed::None, "no TLS route at all");
    assert_eq!(need("127.0.0.1:9001"), PrereadNeed::TlsOnly);
    assert_eq!(need("127.0.0.1:9002"), PrereadNeed::None, "the tcp route outranks the tls one");
    assert_eq!(need("127.0.0.1:9003"), PrereadNeed::PlainFallback, "an SNI route outranks the tcp one");
}

#[test]
fn disabled_services_and_http_routes_are_left_out() {
    let mut off = route(TCP, vec![], vec![ep(None, Some(9000))], &[]);
    off.service = Some(ServiceIdx(1));
    let mut http = route(&[Protocol::Http], vec![], vec![], &[]);
    http.service = Some(ServiceIdx(0));
    let r = Router::new(&config(vec![off, http]));
    assert_eq!(r.find(ConnKind::Plain, &facts("1.1.1.1:1", "127.0.0.1:9000", None)), None);
}

#[test]
fn ipv6_entries_never_match_ipv4_sessions() {
    let r = Router::new(&config(vec![route(TCP, vec![ep(Some("::/0"), None)], vec![], &[])]));
    assert_eq!(r.find(ConnKind::Plain, &facts("1.1.1.1:1", "127.0.0.1:9000", None)), None);
    assert_eq!(r.find(ConnKind::Plain, &facts("[::1]:1", "[::1]:9000", None)), Some(RouteIdx(0)));
}

// --- property test against a naive, linear reference matcher ---

/// The linear reference: the route tester's walk (`explain.rs`).
fn naive(config: &Config, kind: ConnKind, f: &Facts<'_>) -> Option<(RouteIdx, Rank)> {
    winner(&explain(config, kind, f))
}

const IPS: [&str; 8] = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "127.0.0.1", "::1", "fd00::1", "10.0.0.0/8", "10.0.0.0/24"];
const MORE_NETS: [&str; 3] = ["10.1.0.0/16", "0.0.0.0/0", "fd00::/8"];
const PORTS: [u16; 3] = [9000, 9001, 443];
const NAMES: [&str; 6] = ["a.test", "b.a.test", "*.a.test", "x.*", "*.test", "x.a.test"];
const QUERY_NAMES: [&str; 6] = ["a.test", "b.a.test", "c.b.a.test", "x.y", "x.a.test", "z.test"];

fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    (prop::option::of(0..IPS.len() + MORE_NETS.len()), prop::option::of(0..PORTS.len()))
        .prop_filter("ip or port", |(i, p)| i.is_some() || p.is_some())
        .prop_map(|(i, p)| {
            let ip = i.map(|i| if i < IPS.len() { IPS[i] } else { MORE_NETS[i - IPS.len()] });
            ep(ip, p.map(|p| PORTS[p]))
        })
}

fn arb_route() -> impl Strategy<Value = Route> {
    (
        0..7usize,
        prop::collection::vec(arb_endpoint(), 0..3),
        prop::collection::vec(arb_endpoint(), 0..3),
        prop::collection::vec(0..NAMES.len(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(p, sources, destinations, snis, disabled)| {
            let protos: &[Protocol] = match p {
                0 => &[Protocol::Tcp],
                1 => &[Protocol::Tls],
                2 => &[Protocol::Tcp, Protocol::Tls],
                3 => &[Protocol::TlsPassthrough],
                4 => &[Protocol::Udp],
                5 => &[Protocol::Tcp, Protocol::Udp],
                _ => &[Protocol::Http],
            };
            let names: Vec<&str> = if protos.contains(&Protocol::Tcp) || protos.contains(&Protocol::Udp) {
                vec![]
            } else {
                snis.iter().map(|i| NAMES[*i]).collect()
            };
            let mut r = route(protos, sources, destinations, &names);
            if disabled {
                r.service = Some(ServiceIdx(1));
            }
            r
        })
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    (0..6usize, 0..PORTS.len()).prop_map(|(i, p)| {
        let ip: IpAddr = ["10.0.0.1", "10.0.0.77", "10.1.2.3", "127.0.0.1", "::1", "fd00::1"][i].parse().unwrap();
        SocketAddr::new(ip, PORTS[p])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn compiled_router_agrees_with_naive_reference(
        routes in prop::collection::vec(arb_route(), 0..24),
        sessions in prop::collection::vec((arb_addr(), arb_addr(), prop::option::of(0..QUERY_NAMES.len())), 1..16),
    ) {
        let cfg = config(routes);
        let router = Router::new(&cfg);
        for (src, dst, sni) in sessions {
            let f = Facts { src, dst, sni: sni.map(|i| QUERY_NAMES[i]) };
            for kind in [ConnKind::Plain, ConnKind::TlsOnPlain, ConnKind::TlsOnSsl, ConnKind::Udp] {
                let kind_facts = if kind == ConnKind::Plain { Facts { sni: None, ..f } } else { f };
                prop_assert_eq!(router.find_ranked(kind, &kind_facts), naive(&cfg, kind, &kind_facts));
                // A candidate that did not match says which field kept it out.
                for c in explain(&cfg, kind, &kind_facts) {
                    prop_assert_eq!(c.matched, c.mismatched.is_empty(), "{:?}", c);
                }
            }
            // When the router says the first bytes cannot matter, they must
            // not: a TLS client with any SNI gets the plain answer.
            let plain = naive(&cfg, ConnKind::Plain, &Facts { sni: None, ..f }).map(|(r, _)| r);
            match router.preread_need(src, dst) {
                PrereadNeed::None => {
                    for sni in [None].into_iter().chain(QUERY_NAMES.iter().map(|n| Some(*n))) {
                        let tls = naive(&cfg, ConnKind::TlsOnPlain, &Facts { sni, ..f }).map(|(r, _)| r);
                        prop_assert_eq!(tls, plain);
                    }
                }
                PrereadNeed::PlainFallback => prop_assert!(plain.is_some()),
                PrereadNeed::TlsOnly => prop_assert!(plain.is_none()),
            }
        }
    }
}
