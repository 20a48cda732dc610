//! `stream_listen` and `admin_listen` syntax on arbitrary text: never a
//! panic, and the address of every accepted entry reads back as an entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_config::listen::{parse_admin_listen, parse_stream_listen};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(entries) = parse_stream_listen(text) {
        for e in &entries {
            let label = e.addr_label();
            assert!(parse_stream_listen(&label).is_ok(), "{label:?} (from {text:?}) does not read back");
        }
    }
    if let Ok(entries) = parse_admin_listen(text) {
        for e in &entries {
            let label = e.addr_label();
            assert!(parse_admin_listen(&label).is_ok(), "{label:?} (from {text:?}) does not read back");
        }
    }
});
