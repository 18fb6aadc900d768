//! The three signature checks in `webhook::signature` against the documented rules
//! (see `tagbridge_fuzz::signature_case`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tagbridge_fuzz::signature_case(data));
