#!/usr/bin/env bash
# cargo-fuzz and cargo-deny at pinned versions, built from crates.io with
# `cargo install --locked` the first time and found in ~/.cargo/bin after
# that. Idempotent: a binary already reporting the pinned version is kept,
# so a warm machine pays one `--version` call per tool.
#
# Usage: scripts/install-cargo-tools.sh [fuzz] [deny]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

CARGO_FUZZ_VERSION=0.13.2
CARGO_DENY_VERSION=0.20.2

# install CRATE VERSION SUBCOMMAND: `cargo SUBCOMMAND --version` must print
# VERSION, else build it once (one build at a time, even when several
# callers ask).
install() {
  local crate=$1 version=$2 sub=$3
  if cargo "$sub" --version 2>/dev/null | grep -qF " $version"; then
    return 0
  fi
  mkdir -p "${CARGO_HOME:-$HOME/.cargo}"
  exec 8>"${CARGO_HOME:-$HOME/.cargo}/.install-$crate.lock"
  flock 8
  if ! cargo "$sub" --version 2>/dev/null | grep -qF " $version"; then
    echo "installing $crate $version from crates.io (once; cached in ~/.cargo/bin)" >&2
    # Its own throw-away target dir: the project's CARGO_TARGET_DIR must
    # not fill up with the tool's build.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet --force --version "=$version" "$crate"
  fi
  flock -u 8
  exec 8>&-
  cargo "$sub" --version | grep -qF " $version" || {
    echo "cargo $sub does not report $version after installing" >&2
    exit 1
  }
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(fuzz deny)
for tool in "${want[@]}"; do
  case $tool in
  fuzz)
    # libfuzzer-sys compiles libFuzzer's C++ sources.
    need c++ g++
    install cargo-fuzz "$CARGO_FUZZ_VERSION" fuzz
    ;;
  deny) install cargo-deny "$CARGO_DENY_VERSION" deny ;;
  *)
    echo "unknown tool $tool (expected fuzz or deny)" >&2
    exit 2
    ;;
  esac
done
