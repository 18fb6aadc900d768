#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this file).
#
# Installs the pinned Consul, Nomad and OpenTofu (cached after the first
# build),
# checks formatting and lints, runs every test against real agents, then
# runs the README's demo itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need curl curl
need openssl openssl

echo "== agents"
bash scripts/install-agents.sh all

echo "== tofu fmt -check (terraform/)"
eval "$(bash scripts/install-tofu.sh)"
# TF_CLI_CONFIG_FILE points at a file that does not exist on this kind of
# machine; tofu only warns, but quietly is better.
TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" fmt -check -recursive -diff terraform/

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test

echo "== demo (README quick start)"
bash scripts/demo.sh
