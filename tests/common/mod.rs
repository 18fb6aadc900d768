//! The test harness, one concern a file; this file only declares them
//! and re-exports their items, so a test says `use common::*;`.
//!
//! Each test binary (and benches/rollout.rs) includes the whole harness
//! and uses part of it, hence the `dead_code` allowance and the
//! `unused_imports` one on the re-exports.
#![allow(dead_code)]

mod agents;
mod bridge;
mod cluster;
mod config;
mod http1;
mod nomad;
mod paths;
mod registry;
mod tls;
mod wait;

#[allow(unused_imports)]
pub use self::{
    agents::*, bridge::*, cluster::*, config::*, http1::*, nomad::*, paths::*, registry::*, tls::*,
    wait::*,
};
