#!/usr/bin/env bash
# Randomized soak of rollouts under races and faults (NOT part of
# scripts/test.sh): two tagbridge replicas (the release binary), a durable
# Consul server, a Nomad server and client with data dirs, and several
# template-strategy services. For SECONDS (default 600) it sends signed
# webhooks at random intervals to random replicas (about 30% of the tags
# fail their health check), SIGKILLs the leader now and then (restarted
# after up to 8 s), restarts Consul and the Nomad server, and runs edited
# jobs as an operator would (a meta key, the count). Then it waits for
# quiet (bounded, 10 min), checks the invariants I1-I5 of docs/rollouts.md and
# prints its counts: webhooks, rollouts, rollbacks, faults injected by
# kind, invariant violations.
#
#   scripts/soak.sh [-d SECONDS] [-s SEED] [-n SERVICES] [-w]
#
# -w gives every service a second job <svc>-worker (one allocation, same
# key) rolled after it (`jobs = [...]`); some failing tags fail only on the
# worker, so rollbacks also revert a job that had already rolled.
#
# The driver is tests/soak.rs (an ignored test reusing the test harness);
# the replicas' logs are kept in a directory printed at the start.
# Exit status: 0 when no invariant was violated.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=600
SEED=
SERVICES=3
WORKERS=0
while getopts d:s:n:w opt; do
  case $opt in
  d) SECS=$OPTARG ;;
  s) SEED=$OPTARG ;;
  n) SERVICES=$OPTARG ;;
  w) WORKERS=1 ;;
  *)
    echo "usage: $0 [-d SECONDS] [-s SEED] [-n SERVICES] [-w]" >&2
    exit 2
    ;;
  esac
done
case $SECS in '' | *[!0-9]*)
  echo "-d takes whole seconds" >&2
  exit 2
  ;;
esac

echo "== agents"
bash scripts/install-agents.sh all

echo "== cargo build --release --bin tagbridge"
cargo build --release --bin tagbridge
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac

logs=$(mktemp -d -t tagbridge-soak-XXXXXX)
jobs=
[ "$WORKERS" = 0 ] || jobs=" (each with a worker job)"
echo "== soak: ${SECS} s of faults, ${SERVICES} services${jobs}; replica logs in $logs"
export TAGBRIDGE_SOAK_BIN=$target/release/tagbridge
export TAGBRIDGE_SOAK_SECS=$SECS
export TAGBRIDGE_SOAK_SERVICES=$SERVICES
export TAGBRIDGE_SOAK_WORKERS=$WORKERS
export TAGBRIDGE_SOAK_LOGS=$logs
[ -z "$SEED" ] || export TAGBRIDGE_SOAK_SEED=$SEED
# The test harness bounds itself: faults for SECS, quiet within 10 min.
cargo test --test soak -- --ignored --nocapture --test-threads=1
