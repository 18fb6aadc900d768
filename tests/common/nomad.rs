//! Placeholder: real Nomad dev agent harness (written by the rollout work).
