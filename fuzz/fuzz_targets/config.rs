//! `Config::parse` (the text-level loader) on arbitrary HCL-ish text
//! (see `tagbridge_fuzz::config_case`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tagbridge_fuzz::config_case(data));
