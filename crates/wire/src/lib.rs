//! Strait's wire parsers: the first bytes of a session, read without
//! terminating anything. A TLS ClientHello (is it TLS, which server name and
//! ALPN), a QUIC Initial (its ClientHello, protection removed), and the PROXY
//! protocol header a load balancer sends (v1 and v2), with its encoder.
//!
//! Pure and incremental: each takes the bytes received so far and answers
//! "need more", "not this protocol", "invalid" or the parsed value, never
//! reading past what it parsed and never buffering without bound. No IO and
//! no runtime here (std and rustls only), so each is tested on captured
//! bytes, on every prefix of them, and fuzzed.

pub mod client_hello;
pub mod proxy_protocol;
pub mod quic;

pub use client_hello::{ClientHello, MAX_HELLO_LEN, Peek, peek, peek_handshake};
pub use quic::{InitialReader, QuicPeek};
