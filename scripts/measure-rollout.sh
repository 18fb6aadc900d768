#!/usr/bin/env bash
# Measures the downtime of a deploy: the classic consul-template restart
# (nomad/web-classic.nomad.hcl, tagbridge without a rollout block) against
# tagbridge's rolling template strategy (nomad/web-template.nomad.hcl), on
# fresh Consul + Nomad dev agents on loopback, and prints a Markdown table.
#
# Why this exists: it is the one command that reproduces the figures the
# project's promise rests on (no outage, registered within 200 ms of the
# webhook, recorded within 1 s of Nomad). benches/rollout.rs does the work;
# extra arguments are passed to it, e.g. `--runs 3` or `--only template`.
# Takes about 2 minutes per run on 2 cores (plus the first build).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== agents"
bash scripts/install-agents.sh all

echo "== cargo bench --bench rollout"
cargo bench --bench rollout -- "$@"
