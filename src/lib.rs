//! tagbridge: registry webhooks → Consul KV → rolling, health-gated Nomad deploys.
//!
//! The library owns the logic; `main` owns the world (signals, files,
//! sockets). Modules follow the data path: `config` → `server` →
//! `webhook::<source>` → `policy` → `ingest` → `consul` → `history`.

pub mod policy;
pub mod webhook;
pub mod x509;
