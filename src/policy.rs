//! Tag policy: which pushed tags a service accepts, and in what order.
//!
//! Registries push far more tags than a service should run (release
//! candidates, signatures, `latest`), and deliver webhooks late or twice.
//! This module decides, from the tag alone and the tag currently in KV,
//! whether a push is a change, a repeat, or something to ignore.
