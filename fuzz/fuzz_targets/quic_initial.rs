//! QUIC Initial reassembly on arbitrary datagrams (the input is cut into
//! datagrams by two-byte length prefixes): it never panics and never holds
//! more than its bound, whatever arrives in whatever order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_wire::{InitialReader, QuicPeek};

fuzz_target!(|data: &[u8]| {
    let mut reader = InitialReader::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (datagram, after) = rest[2..].split_at(n);
        rest = after;
        if let QuicPeek::Hello(h) = reader.push(datagram)
            && let Some(sni) = &h.sni
        {
            assert!(!sni.ends_with('.'));
        }
    }
});
