//! The PROXY protocol (HAProxy's spec, versions 1 and 2): reading the header
//! a load balancer puts in front of a connection, and writing one to an
//! upstream.
//!
//! The reader is incremental and pure: it looks at the bytes received so
//! far and says "need more", "here is a header of N bytes" or "invalid",
//! never reading past the header, so what follows (a ClientHello, a
//! protocol's first bytes) is left for the session. Every length is checked
//! against the bytes present and against what the address family needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes that open a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A version 1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// Largest version 2 header accepted: 16 bytes plus addresses and TLVs.
pub const V2_MAX: usize = 16 + 4096;

/// What the sender said about the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// The original client and the address it connected to. `None` for a
    /// health check from the balancer itself (v2 `LOCAL`, v1 `UNKNOWN`) or
    /// an address family Strait does not route on (UNIX sockets).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Tlvs,
}

/// Version 2 type-length-value fields that matter to a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// `PP2_TYPE_ALPN`: the protocol the client negotiated with the balancer.
    pub alpn: Option<Vec<u8>>,
    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (its SNI).
    pub authority: Option<String>,
    /// `PP2_TYPE_UNIQUE_ID`.
    pub unique_id: Option<Vec<u8>>,
    /// `PP2_TYPE_SSL`: the client connected to the balancer over TLS.
    pub ssl: Option<Ssl>,
}

/// `PP2_TYPE_SSL` and its sub-fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssl {
    /// `PP2_CLIENT_*` bits: 1 SSL, 2 client cert on this connection, 4 on the session.
    pub client: u8,
    /// 0 when the client certificate was verified.
    pub verify: u32,
    pub version: Option<String>,
    pub cn: Option<String>,
    pub cipher: Option<String>,
}

/// The result of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid header: read more.
    NeedMore,
    /// A complete header of `len` bytes.
    Header(Box<Header>, usize),
    /// Not a PROXY header, or a broken one.
    Invalid(String),
}

/// Parses a header at the start of `buf` (version detected from the bytes).
pub fn parse(buf: &[u8]) -> Parsed {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1_prefix = b"PROXY ";
    let n = buf.len().min(v1_prefix.len());
    if buf[..n] == v1_prefix[..n] {
        return parse_v1(buf);
    }
    Parsed::Invalid("not a PROXY protocol header".into())
}

fn invalid(why: impl Into<String>) -> Parsed {
    Parsed::Invalid(why.into())
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return invalid("version 1 header longer than 107 bytes");
        }
        // A lone LF or a control byte can never become a valid header.
        if buf.iter().any(|b| *b == b'\n' || (*b < 0x20 && *b != b'\r')) {
            return invalid("version 1 header is not CRLF-terminated text");
        }
        return Parsed::NeedMore;
    };
    let len = end + 2;
    if len > V1_MAX {
        return invalid("version 1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return invalid("version 1 header is not text");
    };
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Parsed::Header(Box::new(Header { version: 1, ..Header::default() }), len),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let ip = |s: &str| -> Option<IpAddr> {
                let ip: IpAddr = s.parse().ok()?;
                (ip.is_ipv6() == v6).then_some(ip)
            };
            // Ports: decimal without sign or leading zeros, as the spec says.
            let port = |s: &str| -> Option<u16> {
                if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse().ok()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Header(
                    Box::new(Header {
                        version: 1,
                        addrs: Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp))),
                        tlvs: Tlvs::default(),
                    }),
                    len,
                ),
                _ => invalid(format!("version 1 header has bad addresses or ports for {family}")),
            }
        }
        _ => invalid("version 1 header is not 'PROXY TCP4|TCP6|UNKNOWN src dst sport dport'"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return match buf.get(12) {
            Some(v) if v >> 4 != 2 => invalid("version 2 signature with an unknown version"),
            _ => Parsed::NeedMore,
        };
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return invalid("version 2 signature with an unknown version");
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return invalid(format!("version 2 header with an unknown command {command}"));
    }
    let family = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if len > V2_MAX {
        return invalid(format!("version 2 header of {len} bytes is larger than {V2_MAX}"));
    }
    if buf.len() < len {
        return Parsed::NeedMore;
    }
    let body = &buf[16..len];
    // Address block size by family (high nibble) ; transport in the low nibble.
    let need = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return invalid(format!("version 2 header with an unknown address family {family:#04x}")),
    };
    if !matches!(family & 0x0f, 0..=2) {
        return invalid(format!("version 2 header with an unknown transport {family:#04x}"));
    }
    if body.len() < need {
        return invalid(format!(
            "version 2 header claims family {family:#04x} but carries {} address bytes",
            body.len()
        ));
    }
    let addrs = match (command, family >> 4) {
        // LOCAL: the balancer's own connection; addresses are ignored.
        (0, _) | (_, 0) | (_, 3) => None,
        (_, 1) => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]));
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
        }
        _ => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Some((SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34))))
        }
    };
    match parse_tlvs(&body[need..]) {
        Ok(tlvs) => Parsed::Header(Box::new(Header { version: 2, addrs, tlvs }), len),
        Err(why) => Parsed::Invalid(why),
    }
}

/// Walks type-length-value fields, each length checked against what is left.
fn tlv_iter(mut rest: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), String>> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 3 {
            rest = &[];
            return Some(Err("version 2 TLV cut short".to_owned()));
        }
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            rest = &[];
            return Some(Err(format!("version 2 TLV {kind:#04x} claims {len} bytes past the header's end")));
        }
        let value = &rest[3..3 + len];
        rest = &rest[3 + len..];
        Some(Ok((kind, value)))
    })
}

fn text(v: &[u8]) -> Option<String> {
    std::str::from_utf8(v).ok().map(str::to_owned)
}

fn parse_tlvs(bytes: &[u8]) -> Result<Tlvs, String> {
    let mut t = Tlvs::default();
    for item in tlv_iter(bytes) {
        let (kind, value) = item?;
        match kind {
            0x01 => t.alpn = Some(value.to_vec()),
            0x02 => t.authority = Some(text(value).ok_or("version 2 AUTHORITY TLV is not UTF-8")?),
            0x05 => t.unique_id = Some(value.to_vec()),
            0x20 => {
                if value.len() < 5 {
                    return Err("version 2 SSL TLV shorter than 5 bytes".into());
                }
                let mut ssl = Ssl {
                    client: value[0],
                    verify: u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
                    ..Ssl::default()
                };
                for sub in tlv_iter(&value[5..]) {
                    let (k, v) = sub?;
                    match k {
                        0x21 => ssl.version = text(v),
                        0x22 => ssl.cn = text(v),
                        0x23 => ssl.cipher = text(v),
                        _ => {}
                    }
                }
                t.ssl = Some(ssl);
            }
            // CRC32C, NOOP, NETNS and vendor types are skipped.
            _ => {}
        }
    }
    Ok(t)
}

/// A version 1 header for a TCP connection from `src` to `dst`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
}

/// A version 2 `PROXY` header for a TCP connection from `src` to `dst`,
/// with an AUTHORITY TLV when the client sent an SNI.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, authority: Option<&str>) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut body = Vec::with_capacity(36 + 64);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(a) = authority.filter(|a| a.len() <= 255) {
        body.push(0x02);
        body.extend_from_slice(&(a.len() as u16).to_be_bytes());
        body.extend_from_slice(a.as_bytes());
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family: a mixed pair is written as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (SocketAddr::new(IpAddr::V6(v6(src.ip())), src.port()), SocketAddr::new(IpAddr::V6(v6(dst.ip())), dst.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Parsed::Header(h, n) => (*h, n),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    /// Every strict prefix of a valid header asks for more; never "invalid".
    fn prefixes_need_more(full: &[u8]) {
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Parsed::NeedMore, "prefix of {i} bytes of {full:?}");
        }
    }

    #[test]
    fn version_1() {
        let raw = b"PROXY TCP4 192.0.2.10 203.0.113.5 51000 443\r\nGET";
        let (h, n) = header(raw);
        assert_eq!(n, raw.len() - 3, "the bytes after the header are left alone");
        assert_eq!(h.addrs, Some((sa("192.0.2.10:51000"), sa("203.0.113.5:443"))));
        prefixes_need_more(&raw[..n]);
        let (h, _) = header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(h.addrs, Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:65535"))));
        let (h, _) = header(b"PROXY UNKNOWN\r\n");
        assert_eq!(h.addrs, None);
        let (h, _) = header(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n");
        assert_eq!(h.addrs, None);
        assert_eq!(encode_v1(sa("192.0.2.10:51000"), sa("203.0.113.5:443")), &raw[..raw.len() - 3]);
    }

    #[test]
    fn version_1_lies_and_garbage() {
        for bad in [
            &b"PROXY TCP4 192.0.2.10 203.0.113.5 51000 443\n"[..],
            b"PROXY TCP4 2001:db8::1 203.0.113.5 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
            b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)), "over 107 bytes without CRLF");
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn version_2() {
        let enc = encode_v2(sa("192.0.2.10:51000"), sa("203.0.113.5:443"), Some("db.example"));
        let (h, n) = header(&[enc.as_slice(), b"\x16\x03\x01"].concat());
        assert_eq!(n, enc.len());
        assert_eq!(h.version, 2);
        assert_eq!(h.addrs, Some((sa("192.0.2.10:51000"), sa("203.0.113.5:443"))));
        assert_eq!(h.tlvs.authority.as_deref(), Some("db.example"));
        prefixes_need_more(&enc);

        let enc = encode_v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"), None);
        assert_eq!(header(&enc).0.addrs, Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"))));
        // Mixed families become IPv6 (v4-mapped).
        let enc = encode_v2(sa("192.0.2.1:1"), sa("[2001:db8::2]:2"), None);
        assert_eq!(header(&enc).0.addrs.unwrap().0, sa("[::ffff:192.0.2.1]:1"));

        // LOCAL: a health check from the balancer; addresses ignored.
        let (h, _) = header(&v2(0, 0x11, &[0; 12]));
        assert_eq!(h.addrs, None);
        let (h, _) = header(&v2(1, 0x00, &[]));
        assert_eq!(h.addrs, None);

        // TLVs: ALPN, unique id, SSL with version and CN sub-TLVs, an unknown type.
        let mut body = vec![192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2];
        body.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
        body.extend_from_slice(&[0x05, 0, 1, 7]);
        body.extend_from_slice(&[0xe0, 0, 1, 9]);
        let mut ssl = vec![0x07, 0, 0, 0, 0];
        ssl.extend_from_slice(&[0x21, 0, 7]);
        ssl.extend_from_slice(b"TLSv1.3");
        ssl.extend_from_slice(&[0x22, 0, 6]);
        ssl.extend_from_slice(b"client");
        body.push(0x20);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
        let (h, _) = header(&v2(1, 0x11, &body));
        assert_eq!(h.tlvs.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(h.tlvs.unique_id.as_deref(), Some(&[7u8][..]));
        let s = h.tlvs.ssl.unwrap();
        assert_eq!(
            (s.client, s.verify, s.version.as_deref(), s.cn.as_deref()),
            (7, 0, Some("TLSv1.3"), Some("client"))
        );
    }

    #[test]
    fn version_2_lies_and_garbage() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        let mut bad_cmd = v2(1, 0x11, &[0; 12]);
        bad_cmd[12] = 0x22;
        for bad in [
            bad_version,
            bad_cmd,
            v2(1, 0x11, &[0; 11]),                                            // too short for IPv4
            v2(1, 0x21, &[0; 12]),                                            // too short for IPv6
            v2(1, 0x41, &[0; 12]),                                            // unknown family
            v2(1, 0x13, &[0; 12]),                                            // unknown transport
            v2(1, 0x11, &[[0; 12].as_slice(), &[0x01, 0, 9, 1]].concat()),    // TLV past the end
            v2(1, 0x11, &[[0; 12].as_slice(), &[0x01, 0]].concat()),          // TLV cut short
            v2(1, 0x11, &[[0; 12].as_slice(), &[0x20, 0, 2, 1, 0]].concat()), // short SSL TLV
        ] {
            assert!(matches!(parse(&bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)), "oversized before the body arrives");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A fixed-seed generator: the same bytes every run.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"), Some("a.b")),
            encode_v1(sa("192.0.2.1:1"), sa("192.0.2.2:2")),
        ];
        for _ in 0..20_000 {
            let mut buf = seeds[(next() % 2) as usize].clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % buf.len();
                buf[i] = next() as u8;
            }
            buf.truncate((next() as usize) % (buf.len() + 1));
            if let Parsed::Header(_, n) = parse(&buf) {
                assert!(n <= buf.len());
            }
        }
    }
}
