//! The PROXY protocol v1/v2 reader on arbitrary first bytes: it never
//! panics, a header it accepts is within the bytes given and is the same
//! read from exactly its own bytes, and what it reads re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_wire::proxy_protocol::{Parsed, V2_MAX, encode_v1, encode_v2, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header(header, len) => {
            assert!(len <= data.len(), "claimed {len} of {} bytes", data.len());
            assert_eq!(parse(&data[..len]), Parsed::Header(header.clone(), len), "needed bytes past its end");
            if let Some((src, dst)) = header.addrs {
                let again = if header.version == 1 {
                    encode_v1(src, dst)
                } else {
                    encode_v2(src, dst, header.tlvs.authority.as_deref())
                };
                match parse(&again) {
                    Parsed::Header(h, n) => {
                        assert_eq!(n, again.len());
                        assert_eq!(h.addrs, Some((src, dst)));
                        if header.version == 2 {
                            assert_eq!(h.tlvs.authority, header.tlvs.authority);
                        }
                    }
                    other => panic!("its own encoding was refused: {other:?}"),
                }
            }
        }
        // Waiting for more is bounded: a header never grows past the largest v2.
        Parsed::NeedMore => assert!(data.len() < V2_MAX, "still waiting after {} bytes", data.len()),
        Parsed::Invalid(_) => {}
    }
});
