#!/usr/bin/env bash
# Provides the pinned Consul and Nomad binaries that tests and the demo run.
#
# Why this exists: the tests prove behaviour against real agents, and a fresh
# machine has neither. A binary on PATH is used when it reports the pinned
# version; otherwise the pinned release is built from its Go module (the only
# source this machine reaches) into a cache outside the repo, keyed by
# version, so every later run is instant.
#
# Prints, on stdout, two lines: CONSUL_BIN=<path> and NOMAD_BIN=<path>.
# Progress goes to stderr.
set -euo pipefail

CONSUL_VERSION=1.22.3
NOMAD_VERSION=1.11.3
# The only recent nomad/api pseudo-version the module proxy serves (contract §8).
NOMAD_API_VERSION=v0.0.0-20261016150620-df630b26e78a

CACHE=${TAGBRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tagbridge}
mkdir -p "$CACHE"

# provide and go_module_dir, shared with the other install script.
. "$(dirname "${BASH_SOURCE[0]}")/build-cache.sh"

log() { printf 'install-agents: %s\n' "$*" >&2; }

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "Go toolchain not found; it is needed to build the pinned agents (no system binary at the pinned version)"
    exit 1
  fi
}

# has_version BIN VERSION: the binary reports exactly the pinned version.
# (Output is captured first: with pipefail, `head` closing the pipe early
# would make a healthy binary look broken and trigger a rebuild.)
has_version() {
  local out
  out=$("$1" version 2>/dev/null) || return 1
  [[ $(printf '%s\n' "$out" | sed -n 1p) == *"v$2"* ]]
}


build_consul() {
  local dest=$1 src work
  need_go
  log "building Consul $CONSUL_VERSION from its Go module (about 5 min on 2 cores)"
  src=$(go_module_dir github.com/hashicorp/consul "v$CONSUL_VERSION")
  work=$(mktemp -d "$CACHE/build-consul.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  # The release's go.mod points its sub-modules at ./api etc.; its require
  # lines already name the versions released with it, so drop the block.
  awk 'BEGIN{skip=0} /^replace \($/{skip=1; next} skip&&/^\)$/{skip=0; next} !skip && !/^replace /{print}' \
    "$work/go.mod" >"$work/go.mod.new"
  mv "$work/go.mod.new" "$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$dest.tmp" .)
  mv "$dest.tmp" "$dest"
  rm -rf "$work"
}

build_nomad() {
  local dest=$1 src work
  need_go
  log "building Nomad $NOMAD_VERSION from its Go module (about 4 min on 2 cores)"
  src=$(go_module_dir github.com/hashicorp/nomad "v$NOMAD_VERSION")
  work=$(mktemp -d "$CACHE/build-nomad.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  sed -i '\#^replace github.com/hashicorp/nomad/api => ./api#d' "$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go get "github.com/hashicorp/nomad/api@$NOMAD_API_VERSION" &&
    GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$dest.tmp" .)
  mv "$dest.tmp" "$dest"
  rm -rf "$work"
}


which=${1:-all}
# Assign before printing: `echo "X=$(…)"` would hide a failed build from
# set -e.
case "$which" in
  consul)
    consul_bin=$(provide consul "$CONSUL_VERSION" build_consul)
    echo "CONSUL_BIN=$consul_bin"
    ;;
  nomad)
    nomad_bin=$(provide nomad "$NOMAD_VERSION" build_nomad)
    echo "NOMAD_BIN=$nomad_bin"
    ;;
  all)
    consul_bin=$(provide consul "$CONSUL_VERSION" build_consul)
    nomad_bin=$(provide nomad "$NOMAD_VERSION" build_nomad)
    echo "CONSUL_BIN=$consul_bin"
    echo "NOMAD_BIN=$nomad_bin"
    ;;
  *) log "usage: $0 [consul|nomad|all]"; exit 2 ;;
esac
