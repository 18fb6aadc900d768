//! `TagPolicy::decide` under every order: reasons, repeats, antisymmetry and transitivity
//! (see `tagbridge_fuzz::policy_case`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tagbridge_fuzz::policy_case(data));
