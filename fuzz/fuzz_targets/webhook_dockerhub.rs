//! `webhook::parse` for the dockerhub source, with fuzzed headers, body and
//! signing secret (see `tagbridge_fuzz::webhook_case` for the framing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagbridge::webhook::Source;

fuzz_target!(|data: &[u8]| tagbridge_fuzz::webhook_case(Source::DockerHub, data));
