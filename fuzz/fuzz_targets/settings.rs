//! Every setting's parser, through the environment (`STRAIT_<KEY>=value`,
//! one per input line): never a panic, only `Ok` or named errors.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strait_config::{Settings, SettingsError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("STRAIT_{}", k.trim().to_ascii_uppercase()), v.to_owned()))
        .collect();
    match Settings::load_with_env(None, &env) {
        Ok(_) => {}
        Err(SettingsError::Invalid(errors)) => {
            for e in errors {
                assert!(!e.key.is_empty() && !e.reason.is_empty(), "an error without its key or reason");
            }
        }
        Err(_) => {}
    }
});
