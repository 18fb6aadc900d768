//! Placeholder; written by the rollout measurement work.
fn main() {}
