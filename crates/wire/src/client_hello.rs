//! Reading a TLS ClientHello from the first bytes a client sends, without
//! terminating TLS: is it TLS at all, which server name and ALPN it asks for.
//!
//! The parser is pure and incremental: give it everything read so far and it
//! says "need more", "not TLS", "invalid" or returns the hello. It reassembles
//! a handshake message spread over several records and refuses anything
//! larger than [`MAX_HELLO_LEN`], so a client cannot make us buffer without bound.

/// Largest ClientHello handshake message accepted (post-quantum key shares
/// make hellos of 1.5–2 KiB common; 16 KiB leaves room for long extension lists).
pub const MAX_HELLO_LEN: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// The TLS record layer may carry at most 2^14 bytes of plaintext per record.
const MAX_RECORD_LEN: usize = 1 << 14;

/// What the first bytes of a session say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Too few bytes to decide; read more.
    NeedMore,
    /// Not a TLS handshake: treat the session as plain.
    NotTls,
    /// Starts like TLS but is malformed or too large.
    Invalid(&'static str),
    Hello(ClientHello),
}

/// The parts of a ClientHello the router and the logs care about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `server_name` (lower case, without a trailing dot).
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// Highest version offered: from `supported_versions` if present.
    pub max_version: u16,
}

/// Parses the bytes received so far.
pub fn peek(buf: &[u8]) -> Peek {
    let Some(&first) = buf.first() else {
        return Peek::NeedMore;
    };
    if first != RECORD_HANDSHAKE {
        return Peek::NotTls;
    }
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Peek::NotTls;
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return Peek::NeedMore;
        };
        if header[0] != RECORD_HANDSHAKE {
            return Peek::Invalid("ClientHello interrupted by a non-handshake record");
        }
        if header[1] != 0x03 {
            return Peek::Invalid("bad record version");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Peek::Invalid("bad record length");
        }
        let Some(fragment) = buf.get(pos + 5..pos + 5 + len) else {
            return Peek::NeedMore;
        };
        pos += 5 + len;
        // Avoid copying in the common single-record case.
        let msg: &[u8] = if handshake.is_empty() && fragment.len() >= 4 {
            let body_len = u24(&fragment[1..4]);
            if fragment.len() >= 4 + body_len {
                return parse_handshake(fragment);
            }
            handshake.extend_from_slice(fragment);
            &handshake
        } else {
            handshake.extend_from_slice(fragment);
            &handshake
        };
        if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Peek::Invalid("first handshake message is not a ClientHello");
            }
            let body_len = u24(&msg[1..4]);
            if body_len > MAX_HELLO_LEN {
                return Peek::Invalid("ClientHello too large");
            }
            if msg.len() >= 4 + body_len {
                return parse_handshake(&handshake);
            }
        }
        if handshake.len() > MAX_HELLO_LEN + 4 {
            return Peek::Invalid("ClientHello too large");
        }
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a ClientHello handshake message carried without TLS records (as
/// in QUIC's CRYPTO frames), given the bytes received so far.
pub fn peek_handshake(hs: &[u8]) -> Peek {
    if hs.len() < 4 {
        return if hs.first().is_some_and(|t| *t != HANDSHAKE_CLIENT_HELLO) {
            Peek::Invalid("first handshake message is not a ClientHello")
        } else {
            Peek::NeedMore
        };
    }
    let len = u24(&hs[1..4]);
    if len > MAX_HELLO_LEN {
        return Peek::Invalid("ClientHello too large");
    }
    if hs.len() < 4 + len {
        return Peek::NeedMore;
    }
    parse_handshake(&hs[..4 + len])
}

/// Parses one complete handshake message (type, 24-bit length, body).
fn parse_handshake(msg: &[u8]) -> Peek {
    if msg[0] != HANDSHAKE_CLIENT_HELLO {
        return Peek::Invalid("first handshake message is not a ClientHello");
    }
    let body_len = u24(&msg[1..4]);
    if body_len > MAX_HELLO_LEN {
        return Peek::Invalid("ClientHello too large");
    }
    match parse_body(&msg[4..4 + body_len]) {
        Some(Ok(hello)) => Peek::Hello(hello),
        Some(Err(reason)) => Peek::Invalid(reason),
        None => Peek::Invalid("truncated ClientHello"),
    }
}

fn parse_body(body: &[u8]) -> Option<Result<ClientHello, &'static str>> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    if legacy_version >> 8 != 0x03 {
        return Some(Err("unsupported ClientHello version"));
    }
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Some(Err("session id too long"));
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Some(Err("bad cipher suite list"));
    }
    if r.vec8()?.is_empty() {
        return Some(Err("no compression methods"));
    }
    let mut hello = ClientHello { max_version: legacy_version, ..ClientHello::default() };
    if r.is_empty() {
        return Some(Ok(hello));
    }
    let mut exts = Reader(r.vec16()?);
    if !r.is_empty() {
        return Some(Err("trailing bytes after extensions"));
    }
    let mut seen_sni = false;
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Some(Err("duplicate server_name extension"));
                }
                seen_sni = true;
                let mut list = Reader(data.vec16()?);
                while !list.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    // A name that is not a host name (an IP, a port, raw
                    // bytes) is treated as no SNI, as Kong serves such
                    // clients the default certificate.
                    if name_type == 0 && hello.sni.is_none() {
                        hello.sni = normalise_sni(name);
                    }
                }
            }
            EXT_ALPN => {
                let mut list = Reader(data.vec16()?);
                while !list.is_empty() {
                    let proto = list.vec8()?;
                    if proto.is_empty() {
                        return Some(Err("empty ALPN protocol name"));
                    }
                    hello.alpn.push(proto.to_vec());
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                let mut list = Reader(data.vec8()?);
                while !list.is_empty() {
                    let v = list.u16()?;
                    // Skip GREASE values (0x?a?a).
                    if v & 0x0f0f != 0x0a0a && v > hello.max_version {
                        hello.max_version = v;
                    }
                }
            }
            _ => {}
        }
    }
    Some(Ok(hello))
}

/// A host name as sent in SNI: printable ASCII, no spaces; lower-cased,
/// trailing dot dropped.
fn normalise_sni(name: &[u8]) -> Option<String> {
    if name.is_empty() || name.len() > 253 + 1 {
        return None;
    }
    if !name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*')) {
        return None;
    }
    let s = std::str::from_utf8(name).ok()?;
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello built by hand, with SNI and ALPN.
    fn sample(sni: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut sn = vec![0u8];
        sn.extend((sni.len() as u16).to_be_bytes());
        sn.extend(sni.as_bytes());
        let mut sn_list = (sn.len() as u16).to_be_bytes().to_vec();
        sn_list.extend(sn);
        ext.extend(EXT_SERVER_NAME.to_be_bytes());
        ext.extend((sn_list.len() as u16).to_be_bytes());
        ext.extend(sn_list);
        let alpn = [2u8, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1'];
        ext.extend(EXT_ALPN.to_be_bytes());
        ext.extend((alpn.len() as u16 + 2).to_be_bytes());
        ext.extend((alpn.len() as u16).to_be_bytes());
        ext.extend(alpn);
        ext.extend(EXT_SUPPORTED_VERSIONS.to_be_bytes());
        ext.extend(5u16.to_be_bytes());
        ext.extend([4, 0x0a, 0x0a, 0x03, 0x04]);

        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);

        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![RECORD_HANDSHAKE, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_sni_alpn_and_version() {
        let Peek::Hello(h) = peek(&sample("Example.COM.")) else { panic!("no hello") };
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(h.max_version, 0x0304);
    }

    #[test]
    fn every_prefix_needs_more() {
        let full = sample("a.test");
        for n in 0..full.len() {
            assert_eq!(peek(&full[..n]), Peek::NeedMore, "prefix {n}");
        }
    }

    #[test]
    fn handshake_split_over_records() {
        let full = sample("split.test");
        let hs = &full[5..];
        let (a, b) = hs.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend([RECORD_HANDSHAKE, 3, 1]);
            two.extend((part.len() as u16).to_be_bytes());
            two.extend(part);
        }
        for n in 0..two.len() {
            assert_eq!(peek(&two[..n]), Peek::NeedMore, "prefix {n}");
        }
        let Peek::Hello(h) = peek(&two) else { panic!() };
        assert_eq!(h.sni.as_deref(), Some("split.test"));
    }

    #[test]
    fn plain_protocols_are_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(peek(b"*1\r\n$4\r\nPING\r\n"), Peek::NotTls);
        assert_eq!(peek(&[0x16, 0x00]), Peek::NotTls);
        assert_eq!(peek(&[0x80, 0x2e, 0x01]), Peek::NotTls);
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let full = sample("corrupt.test");
        // Flip every byte to several values; the parser must answer without panicking.
        for i in 0..full.len() {
            for v in [0x00, 0x01, 0x7f, 0xff] {
                let mut b = full.clone();
                b[i] = v;
                let _ = peek(&b);
            }
        }
        // A tiny pseudo-random fuzz over prefixes that look like handshakes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 300) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if b.len() > 2 {
                b[0] = 0x16;
                b[1] = 0x03;
            }
            let _ = peek(&b);
        }
    }

    #[test]
    fn oversized_hello_is_refused() {
        let mut rec = vec![RECORD_HANDSHAKE, 3, 1, 0x40, 0x00, HANDSHAKE_CLIENT_HELLO, 0x01, 0x00, 0x00];
        rec.resize(5 + 0x4000, 0);
        assert_eq!(peek(&rec), Peek::Invalid("ClientHello too large"));
    }

    /// A real hello, as rustls sends it (with post-quantum key shares).
    fn rustls_hello(sni: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"redis".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn real_rustls_hello_and_all_its_prefixes() {
        let full = rustls_hello("db.example.test");
        for n in 0..full.len() {
            assert_eq!(peek(&full[..n]), Peek::NeedMore, "prefix {n}");
        }
        let Peek::Hello(h) = peek(&full) else { panic!() };
        assert_eq!(h.sni.as_deref(), Some("db.example.test"));
        assert_eq!(h.alpn, vec![b"redis".to_vec()]);
        assert_eq!(h.max_version, 0x0304);
        // Bytes after the hello (early data, a second record) do not matter.
        let mut more = full.clone();
        more.extend([0x17, 3, 3, 0, 1, 0]);
        assert!(matches!(peek(&more), Peek::Hello(_)));
    }

    #[test]
    fn unusable_server_name_means_no_sni() {
        let Peek::Hello(h) = peek(&sample("a.test:443")) else { panic!() };
        assert_eq!(h.sni, None);
        let Peek::Hello(h) = peek(&sample("caf\u{e9}.test")) else { panic!() };
        assert_eq!(h.sni, None);
    }

    #[test]
    fn non_hello_handshake_is_invalid() {
        let mut full = sample("a.test");
        full[5] = 0x02;
        assert!(matches!(peek(&full), Peek::Invalid(_)));
    }
}
