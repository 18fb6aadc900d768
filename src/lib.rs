//! tagbridge: registry webhooks → Consul KV → rolling, health-gated Nomad deploys.
//!
//! The library owns the logic; `main` owns the world (signals, files,
//! sockets, re-exec). Modules follow the data path: `config` → `server` →
//! `webhook::<source>` → `policy` → `ingest` → `store` → Consul, then
//! `controller` → `rollout` → `store` and Nomad.
//!
//! # Layout
//!
//! * `config` — `tagbridge.hcl` and the environment, validated once, one
//!   file per block: `listener` (top level and `tls`), `cluster` (`consul`,
//!   `nomad`), `notify`, `service` (with `tags` and `rollout`); `raw` (the
//!   file's shape), `typed` (each value's type checked as written),
//!   `fields` (the checks the blocks share), `keys` (every key the parser
//!   accepts, for the docs' drift test).
//! * `server` — the HTTPS webhook listener: `accept` (the accept loop,
//!   each connection's task), `routes` (the hook routes), `reply` (the
//!   answers, the one status mapping), `body` (bounded body reading),
//!   `conn` (a connection's deadlines, per-address caps), `guard` (secret
//!   matching, client address, failed-attempt limit), `reject_log`
//!   (rejections summarised), `admin` (health, readiness, metrics),
//!   `digest` (`resolve_digest`: a pushed tag's digest asked of its
//!   registry, one request at a time).
//! * `webhook` — one file per registry source, normalised to `ImagePush`;
//!   `grammar` (the input grammar), `signature` (authenticity checks),
//!   `decode` (JSON decoding and client-facing messages).
//! * `policy` — include/exclude filters and tag order.
//! * `ingest` — one change, one Consul transaction (what to write, and
//!   the check-and-set retries).
//! * `store` — the one owner of the Consul records: the key layout
//!   (`Keys`), the record shapes (`records`: history entry, desired,
//!   deployed, pin, `Event`, `RolloutState`), `history` (one key per
//!   entry: appends, trims, paged reads, migration), the readers (`read`)
//!   and the transaction builder (`ops::Txn`). Nothing else builds a
//!   Consul transaction op.
//! * `change_status` — what became of one change (a desired `seq`), for
//!   the caller waiting on `?wait` or `/hooks/<secret>/rollouts/<seq>`.
//! * `sync` — missed webhooks made good: a registry listing's best tag
//!   through ingest (`tagbridge sync`); `poller` — the leader doing it
//!   every `poll_interval`.
//! * `controller` — the leader lock and one rollout driver per service.
//! * `rollout` — one service's rollout: `sequence` (the driving sequence,
//!   job by job, read top to bottom), `plan` (the decisions, pure
//!   functions of what was observed), `watch`, `rollback`, `record` (the
//!   fenced writes, through `store`), `requirements` with
//!   `template_reads` (`check --connect`); Nomad and Consul behind the
//!   narrow traits of `ports`.
//! * `clients` — the outbound clients and the factories that build them
//!   (and the rollout context) from a configuration: `http` (one hyper /
//!   rustls (ring) stack, deadlines, the response size cap), `api` (what
//!   Consul and Nomad share: URLs, the token header, blocking-query index
//!   rules, status-to-error mapping), `consul` and `nomad` (their calls
//!   only), `registry` (the OCI distribution API: a tag's digest, a
//!   repository's tags).
//! * `notify` — Slack-compatible and JSON notices of rollout outcomes.
//! * `metrics` — the Prometheus registry.
//! * `tls` — the serving certificate and its reloads; `x509` — its expiry.
//! * `clock` — RFC 3339 timestamps, and deadlines that cannot overflow.
//! * `cli` — the operator commands, one group per file: `check`,
//!   `secret`, `history`, `status`, `watch` (`status --watch`), `deploy`,
//!   `pin` (`rollback`, `unpin`), `sync`; the clap definitions and
//!   `CliError` in `cli/mod.rs`.

pub mod change_status;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod controller;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod poller;
pub mod rollout;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;
pub mod webhook;
pub mod x509;
