#!/usr/bin/env bash
# Long fuzzing run (NOT part of scripts/test.sh): every cargo-fuzz target
# for RUNS inputs (default 10 million), then one summary line per target:
# inputs run, exec/s, peak RSS, crashes.
#
#   scripts/fuzz.sh [-r RUNS] [-t MAX_SECONDS_PER_TARGET] [TARGET...]
#
# Every target runs with -rss_limit_mb and -malloc_limit_mb, so an
# unbounded allocation is reported as a failure (an `oom-*` artifact)
# rather than swapping the machine; -timeout makes a hang one too. Crash,
# oom and timeout inputs land in fuzz/artifacts/<target>/ (FUZZ_WORK_DIR
# moves corpus, artifacts and logs elsewhere); minimise one
# with `cargo fuzz tmin -s none <target> <file>` and copy it into
# fuzz/regressions/<target>/ so `cargo test --test props` replays it.
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# -Z flags, and `-s none` skips the sanitizers (they need nightly's std).
# Exit status: 0 when no target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=10000000
MAX_SECONDS=14400 # a safety bound per target; 10M runs take far less
while getopts r:t: opt; do
  case $opt in
  r) RUNS=$OPTARG ;;
  t) MAX_SECONDS=$OPTARG ;;
  *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))

bash scripts/install-cargo-tools.sh fuzz
export RUSTC_BOOTSTRAP=1
# Outside the work tree by default, so CI's fresh clone finds a warm build.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tagbridge/fuzz-target}

mapfile -t all < <(sed -n '/^\[\[bin\]\]$/{n;s/^name = "\(.*\)"$/\1/p}' fuzz/Cargo.toml)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

echo "== cargo fuzz build (${#targets[@]} targets)" >&2
cargo fuzz build -s none --release --debug-assertions >&2

# The config target opens whatever file paths the text names; run every
# target from an empty directory so a relative path finds nothing.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Corpus, artifacts and logs (all git-ignored) live under FUZZ_WORK_DIR.
work=$(realpath -m "${FUZZ_WORK_DIR:-fuzz}")
logs=$work/logs
mkdir -p "$logs"

failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  echo "== $t: $RUNS runs" >&2
  status=0
  marker="$scratch/started-$t"
  touch "$marker"
  start=$(date +%s.%N)
  # Absolute paths: the fuzzer runs in $scratch. Seeds and regressions
  # are read-only inputs; new inputs go to the corpus.
  (cd "$scratch" && "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$t" \
    -runs="$RUNS" -max_total_time="$MAX_SECONDS" \
    -rss_limit_mb=1024 -malloc_limit_mb=128 -timeout=10 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
    "$work/corpus/$t" "$OLDPWD/fuzz/seeds/$t" $(ls -d "$OLDPWD/fuzz/regressions/$t" 2>/dev/null)) \
    >"$logs/$t.log" 2>&1 || status=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  stat() { sed -n "s/^stat::$1: *//p" "$logs/$t.log" | tail -1; }
  inputs=$(stat number_of_executed_units)
  # libFuzzer's own figure is whole runs per whole second (0 under 1 s).
  rate=$(awk -v n="${inputs:-0}" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  # libFuzzer stops at the first crash, oom or timeout and saves it.
  crashes=$(find "$work/artifacts/$t" -type f -newer "$marker" | wc -l)
  line=$(printf '%-20s inputs=%-9s seconds=%-6.0f exec/s=%-7s peak_rss_mb=%-5s crashes=%s exit=%s' \
    "$t" "$inputs" "$secs" "$rate" "$(stat peak_rss_mb)" "$crashes" "$status")
  echo "$line" >&2
  summary+=("$line")
  [ "$status" = 0 ] || failed=1
done

echo "== summary (logs in $logs/)"
printf '%s\n' "${summary[@]}"
exit $failed
