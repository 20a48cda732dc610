//! The declarative loader (Kong's YAML or JSON) on arbitrary text: never a
//! panic, and a document it accepts loads the same from its parsed value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_model::declarative::{load_str, load_value, parse_text};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let direct = load_str(text);
    if let Ok(value) = parse_text(text) {
        assert_eq!(direct.is_ok(), load_value(&value).is_ok(), "text and value disagree");
    }
});
