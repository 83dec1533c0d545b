//! Fuzzes the TOML config parser: any text gives a Config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vraid::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz.toml");
    }
});
