#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this file).
#
# Installs the pinned Consul and Nomad (cached after the first build),
# checks formatting and lints, runs every test against real agents, then
# runs the README's demo itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need curl curl
need openssl openssl

echo "== agents"
bash scripts/install-agents.sh all

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test

echo "== demo (README quick start)"
bash scripts/demo.sh
