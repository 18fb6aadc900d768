#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this file).
#
# Installs the pinned Consul, Nomad, crane and OpenTofu (cached after the first
# build),
# checks formatting, lints and the dependency policy (deny.toml), runs
# every test against real agents, a short bounded fuzzing pass over every
# cargo-fuzz target, then runs the README's demo itself. cargo-fuzz and
# cargo-deny are built once into ~/.cargo/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need curl curl
need openssl openssl
# One build per clone: incremental state would only double target/ on disk.
export CARGO_INCREMENTAL=0
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

echo "== agents"
bash scripts/install-agents.sh all
bash scripts/install-crane.sh >/dev/null

echo "== tofu fmt -check (terraform/)"
eval "$(bash scripts/install-tofu.sh)"
# TF_CLI_CONFIG_FILE points at a file that does not exist on this kind of
# machine; tofu only warns, but quietly is better.
TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" fmt -check -recursive -diff terraform/

echo "== cargo fmt --check"
cargo fmt --all -- --check
# The fuzz crate is its own workspace; its shared checks (fuzz/src/lib.rs)
# are linted through tests/props.rs, its targets are one-liners.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo deny check bans licenses sources"
# The advisories check is not run: its database is fetched from a git
# host these machines cannot reach (see docs/operations.md, "Supply chain").
bash scripts/install-cargo-tools.sh deny
cargo deny --locked check bans licenses sources

echo "== cargo test"
cargo test

echo "== fuzz smoke (every cargo-fuzz target, bounded)"
# Seeds plus every past finding, then new inputs until the run or time
# bound per target; the long run is scripts/fuzz.sh on its own.
bash scripts/fuzz.sh -r "${FUZZ_SMOKE_RUNS:-1000000}" -t "${FUZZ_SMOKE_SECONDS:-5}"

echo "== demo (README quick start)"
bash scripts/demo.sh
