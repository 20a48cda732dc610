//! The TLS ClientHello reader on arbitrary first bytes: it never panics,
//! never reads past the hello it reports (more bytes after it change
//! nothing), and what it reports is normalised as the router expects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_wire::{Peek, peek, peek_handshake};

fuzz_target!(|data: &[u8]| {
    let first = peek(data);
    if let Peek::Hello(hello) = &first {
        if let Some(sni) = &hello.sni {
            assert!(!sni.ends_with('.'), "trailing dot kept: {sni:?}");
            assert_eq!(sni, &sni.to_ascii_lowercase(), "server name not lower case");
        }
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(peek(&longer), first, "bytes after the hello changed the answer");
    }
    // A prefix of a hello is never reported as something else than "more".
    if matches!(first, Peek::Hello(_)) && data.len() > 1 {
        let cut = data.len() / 2;
        assert!(matches!(peek(&data[..cut]), Peek::NeedMore | Peek::Hello(_)), "a prefix was judged");
    }
    let _ = peek_handshake(data);
});
