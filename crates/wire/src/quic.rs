//! The server name of a QUIC connection, read from the client's Initial
//! packets without terminating QUIC: Initial packets are protected with keys
//! derived from their own destination connection ID (RFC 9001 §5.2), so any
//! on-path party may remove that protection and read the ClientHello in the
//! CRYPTO frames. Versions 1 and 2 are understood.
//!
//! [`InitialReader`] takes the datagrams of one client in order and reassembles
//! the CRYPTO stream until the ClientHello is complete (it may span several
//! packets and datagrams). Everything is bounds-checked; a datagram that is
//! not a QUIC Initial says so rather than failing.

use std::collections::BTreeMap;

use rustls::quic::{Keys, Version};
use rustls::{CipherSuite, Side, SupportedCipherSuite};

use crate::client_hello::{ClientHello, MAX_HELLO_LEN, Peek, peek_handshake};

const V1: u32 = 0x0000_0001;
const V2: u32 = 0x6b33_43cf;

/// What the datagrams so far show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicPeek {
    /// Not a client's QUIC Initial: route without a server name.
    NotQuic,
    /// An Initial whose ClientHello continues in later packets.
    NeedMore,
    Hello(ClientHello),
    /// A QUIC Initial that cannot be read (bad protection, broken frames).
    Invalid(&'static str),
}

/// Reassembles the CRYPTO stream of a client's Initial packets.
#[derive(Debug, Default)]
pub struct InitialReader {
    fragments: BTreeMap<u64, Vec<u8>>,
    held: usize,
    /// An Initial with a well-formed header failed to decrypt or parse.
    broken: Option<&'static str>,
}

/// Largest CRYPTO data kept while waiting for the rest of a ClientHello.
const MAX_CRYPTO: usize = 2 * MAX_HELLO_LEN;

impl InitialReader {
    pub fn new() -> InitialReader {
        InitialReader::default()
    }

    /// Adds one datagram (which may hold several coalesced packets).
    pub fn push(&mut self, datagram: &[u8]) -> QuicPeek {
        let mut rest = datagram;
        let mut saw_initial = false;
        while !rest.is_empty() {
            match self.packet(rest) {
                Ok(Some((len, initial))) => {
                    saw_initial |= initial;
                    rest = &rest[len..];
                }
                // A short-header packet or padding ends the long-header run.
                Ok(None) => break,
                // Each coalesced packet stands alone (RFC 9000 §12.2): junk
                // after a good Initial does not spoil it.
                Err(_) if saw_initial || !self.fragments.is_empty() => break,
                Err(_) => return QuicPeek::NotQuic,
            }
        }
        if let Some(why) = self.broken {
            return QuicPeek::Invalid(why);
        }
        if !saw_initial && self.fragments.is_empty() {
            return QuicPeek::NotQuic;
        }
        let stream = self.contiguous();
        match peek_handshake(&stream) {
            Peek::Hello(h) => QuicPeek::Hello(h),
            Peek::NeedMore if self.held < MAX_CRYPTO => QuicPeek::NeedMore,
            Peek::NeedMore => QuicPeek::Invalid("ClientHello too large"),
            Peek::Invalid(why) => QuicPeek::Invalid(why),
            Peek::NotTls => QuicPeek::Invalid("CRYPTO data is not a ClientHello"),
        }
    }

    /// The CRYPTO bytes from offset 0 with no gap.
    fn contiguous(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (off, data) in &self.fragments {
            let off = *off as usize;
            if off > out.len() {
                break;
            }
            let skip = out.len() - off;
            if skip < data.len() {
                out.extend_from_slice(&data[skip..]);
            }
        }
        out
    }

    /// Reads one long-header packet at the start of `buf`. Returns its
    /// length and whether it was an Initial whose frames were taken, `None`
    /// when `buf` does not start with a long-header packet.
    fn packet(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, &'static str> {
        let first = *buf.first().ok_or("empty packet")?;
        if first & 0x80 == 0 {
            return if first == 0 { Ok(None) } else { Err("not a long-header packet") };
        }
        if first & 0x40 == 0 {
            return Err("fixed bit not set");
        }
        let version = u32::from_be_bytes(buf.get(1..5).ok_or("truncated header")?.try_into().map_err(|_| "header")?);
        let (initial_type, quic_version) = match version {
            V1 => (0, Version::V1),
            V2 => (1, Version::V2),
            _ => return Err("not QUIC version 1 or 2"),
        };
        let mut r = Cursor { buf, pos: 5 };
        let dcid_len = usize::from(r.u8()?);
        if dcid_len > 20 {
            return Err("connection ID longer than 20 bytes");
        }
        let dcid = r.take(dcid_len)?;
        let scid_len = usize::from(r.u8()?);
        if scid_len > 20 {
            return Err("connection ID longer than 20 bytes");
        }
        r.take(scid_len)?;
        let kind = (first >> 4) & 0x03;
        if kind == 3 && version == V1 || kind == 0 && version == V2 {
            // Retry has no length field: nothing after it can be read.
            return Ok(Some((buf.len(), false)));
        }
        if kind == initial_type {
            let token_len = r.varint()? as usize;
            r.take(token_len)?;
        }
        let length = r.varint()? as usize;
        let pn_offset = r.pos;
        let end = pn_offset.checked_add(length).ok_or("length overflow")?;
        if end > buf.len() {
            return Err("packet longer than its datagram");
        }
        if kind != initial_type {
            // 0-RTT or Handshake packets coalesced after the Initial.
            return Ok(Some((end, false)));
        }
        if let Err(why) = self.initial(&buf[..end], pn_offset, dcid, quic_version) {
            self.broken.get_or_insert(why);
        }
        Ok(Some((end, true)))
    }

    fn initial(&mut self, packet: &[u8], pn_offset: usize, dcid: &[u8], version: Version) -> Result<(), &'static str> {
        let suite = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
            SupportedCipherSuite::Tls13(s) => s,
            #[allow(unreachable_patterns)]
            _ => return Err("no TLS 1.3 suite"),
        };
        debug_assert_eq!(suite.common.suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
        let quic = suite.quic.ok_or("no QUIC support in the crypto provider")?;
        // The client's keys, as the server derives them.
        let keys = Keys::initial(version, suite, quic, dcid, Side::Server);
        let sample_len = keys.remote.header.sample_len();
        let sample = packet.get(pn_offset + 4..pn_offset + 4 + sample_len).ok_or("packet too short to sample")?;
        let mut first = packet[0];
        let mut pn = [0u8; 4];
        pn.copy_from_slice(packet.get(pn_offset..pn_offset + 4).ok_or("truncated packet number")?);
        keys.remote.header.decrypt_in_place(sample, &mut first, &mut pn).map_err(|_| "header protection")?;
        let pn_len = usize::from(first & 0x03) + 1;
        let mut header = packet[..pn_offset + pn_len].to_vec();
        header[0] = first;
        header[pn_offset..].copy_from_slice(&pn[..pn_len]);
        let number = pn[..pn_len].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let mut payload = packet[pn_offset + pn_len..].to_vec();
        let plain = keys
            .remote
            .packet
            .decrypt_in_place(number, &header, &mut payload)
            .map_err(|_| "Initial does not decrypt")?;
        self.frames(plain)
    }

    fn frames(&mut self, plain: &[u8]) -> Result<(), &'static str> {
        let mut r = Cursor { buf: plain, pos: 0 };
        while r.pos < plain.len() {
            match r.varint()? {
                0x00 | 0x01 => {}
                kind @ (0x02 | 0x03) => {
                    r.varint()?;
                    r.varint()?;
                    let ranges = r.varint()?;
                    r.varint()?;
                    for _ in 0..ranges {
                        r.varint()?;
                        r.varint()?;
                    }
                    if kind == 0x03 {
                        for _ in 0..3 {
                            r.varint()?;
                        }
                    }
                }
                0x06 => {
                    let offset = r.varint()?;
                    let len = r.varint()? as usize;
                    let data = r.take(len)?;
                    let end = offset.checked_add(len as u64).ok_or("CRYPTO offset overflow")?;
                    if end > MAX_CRYPTO as u64 {
                        return Err("ClientHello too large");
                    }
                    // Retransmissions add nothing; a longer copy at the same
                    // offset replaces a shorter one.
                    let known = self.fragments.get(&offset).map_or(0, Vec::len);
                    if data.len() > known {
                        self.held += data.len() - known;
                        self.fragments.insert(offset, data.to_vec());
                    }
                }
                0x1c => return Err("CONNECTION_CLOSE in the client's Initial"),
                _ => return Err("frame not allowed in an Initial packet"),
            }
        }
        Ok(())
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("truncated")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    /// QUIC's variable-length integer: the top two bits give the length.
    fn varint(&mut self) -> Result<u64, &'static str> {
        let first = self.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for b in self.take(len - 1)? {
            v = (v << 8) | u64::from(*b);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_quic_and_garbage() {
        let mut r = InitialReader::new();
        assert_eq!(r.push(b"\x01\x02 hello"), QuicPeek::NotQuic);
        assert_eq!(r.push(b""), QuicPeek::NotQuic);
        // A long header with an unknown version.
        assert_eq!(r.push(&[0xc0, 0, 0, 0, 9, 0, 0]), QuicPeek::NotQuic);
        // Version 1 Initial headers cut at every length: never a panic.
        let mut pkt = vec![0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x41, 0x00];
        pkt.extend(std::iter::repeat_n(0xaa, 300));
        for i in 0..pkt.len() {
            let _ = InitialReader::new().push(&pkt[..i]);
        }
        // A length past the datagram, and bytes that do not decrypt.
        assert!(matches!(InitialReader::new().push(&pkt[..40]), QuicPeek::NotQuic | QuicPeek::Invalid(_)));
        assert_eq!(InitialReader::new().push(&pkt), QuicPeek::Invalid("Initial does not decrypt"));
        assert_eq!(InitialReader::new().push(&pkt[..274]), QuicPeek::Invalid("Initial does not decrypt"));
    }
}

/// Real Initials, produced by quinn's QUIC client state machine (no network).
#[cfg(test)]
mod quinn_tests {
    use std::sync::Arc;
    use std::time::Instant;

    use quinn_proto::crypto::rustls::QuicClientConfig;
    use quinn_proto::{ClientConfig, Endpoint, EndpointConfig};

    use super::*;

    /// The datagrams a quinn client sends first, for `sni` with `alpn`.
    fn first_datagrams(sni: &str, alpn: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tls.alpn_protocols = alpn;
        let quic = QuicClientConfig::try_from(tls).expect("QUIC client config");
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, ClientConfig::new(Arc::new(quic)), "127.0.0.1:4433".parse().expect("addr"), sni)
            .expect("connect");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            out.push(buf[..t.size].to_vec());
            buf.clear();
        }
        out
    }

    /// The fuzz target's seeds (`fuzz/corpus/quic_initial`): quinn's first
    /// datagrams, each behind a two-byte length, as the target cuts its
    /// input. Written with `STRAIT_WRITE_FUZZ_SEEDS=1`; otherwise the
    /// committed ones must still be read to their server name.
    #[test]
    fn the_committed_quic_fuzz_seeds_are_real_initials() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/quic_initial");
        let cases = [("quinn-h3", "q.test", vec![b"h3".to_vec()]), ("quinn-no-alpn", "db.example.com", vec![])];
        for (name, sni, alpn) in cases {
            let path = dir.join(name);
            if std::env::var_os("STRAIT_WRITE_FUZZ_SEEDS").is_some() {
                let mut seed = Vec::new();
                for d in first_datagrams(sni, alpn.clone()) {
                    seed.extend_from_slice(&u16::try_from(d.len()).expect("datagram size").to_be_bytes());
                    seed.extend_from_slice(&d);
                }
                std::fs::create_dir_all(&dir).expect("seed folder");
                std::fs::write(&path, seed).expect("write seed");
            }
            let seed = std::fs::read(&path).expect("the committed seed (STRAIT_WRITE_FUZZ_SEEDS=1 writes it)");
            let len = usize::from(u16::from_be_bytes([seed[0], seed[1]]));
            match InitialReader::new().push(&seed[2..2 + len]) {
                QuicPeek::Hello(h) => {
                    assert_eq!(h.sni.as_deref(), Some(sni));
                    assert_eq!(h.alpn, alpn);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_the_sni_of_a_real_initial() {
        let datagrams = first_datagrams("q.test", vec![b"h3".to_vec()]);
        let mut r = InitialReader::new();
        match r.push(&datagrams[0]) {
            QuicPeek::Hello(h) => {
                assert_eq!(h.sni.as_deref(), Some("q.test"));
                assert_eq!(h.alpn, vec![b"h3".to_vec()]);
            }
            other => panic!("{other:?}"),
        }
        // Junk coalesced after the Initial, and the same datagram again
        // (a retransmission), change nothing.
        let mut r = InitialReader::new();
        assert_eq!(r.push(&datagrams[0]), r.push(&[datagrams[0].as_slice(), &[0xff, 1, 2]].concat()));
        // Any change to the protected bytes fails authentication.
        let mut bad = datagrams[0].clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(InitialReader::new().push(&bad), QuicPeek::Invalid(_)));
    }

    #[test]
    fn reassembles_a_client_hello_across_datagrams() {
        // Many long ALPN names push the ClientHello past one packet.
        let alpn: Vec<Vec<u8>> = (0..24).map(|i| format!("{i:02}-{}", "x".repeat(90)).into_bytes()).collect();
        let datagrams = first_datagrams("big.q.test", alpn);
        assert!(datagrams.len() >= 2, "the hello should need several datagrams");
        let mut r = InitialReader::new();
        let mut result = QuicPeek::NotQuic;
        for (i, d) in datagrams.iter().enumerate() {
            result = r.push(d);
            if i + 1 < datagrams.len() && result == QuicPeek::NeedMore {
                continue;
            }
            break;
        }
        match result {
            QuicPeek::Hello(h) => assert_eq!(h.sni.as_deref(), Some("big.q.test")),
            other => panic!("{other:?}"),
        }
    }
}
