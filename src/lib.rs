//! tagbridge: registry webhooks → Consul KV → rolling, health-gated Nomad deploys.
//!
//! The library owns the logic; `main` owns the world (signals, files,
//! sockets). Modules follow the data path: `config` → `server` →
//! `webhook::<source>` → `policy` → `ingest` → `consul` → `history`.

pub mod cli;
pub mod clock;
pub mod config;
pub mod consul;
pub mod controller;
pub mod history;
pub mod history_store;
pub mod http_client;
pub mod ingest;
pub mod metrics;
pub mod nomad;
pub mod notify;
pub mod policy;
pub mod rollout;
pub mod server;
pub mod tls;
pub mod webhook;
pub mod x509;
