#!/usr/bin/env bash
# Provides the pinned `crane` (go-containerregistry), whose `crane registry
# serve` is the real OCI registry the registry tests talk to.
#
# Why this exists: digest resolution and `tagbridge sync` speak the OCI
# distribution API, and a fresh machine has no registry. Same conventions
# as scripts/install-agents.sh: a `crane` on PATH at the pinned version is
# used, otherwise the release is built from its Go module (the only source
# this machine reaches) into a cache outside the repo, keyed by version.
#
# Prints, on stdout, one line: CRANE_BIN=<path>. Progress goes to stderr.
set -euo pipefail

CRANE_VERSION=0.22.1

CACHE=${TAGBRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tagbridge}
mkdir -p "$CACHE"

# provide and go_module_dir, shared with the other install scripts.
. "$(dirname "${BASH_SOURCE[0]}")/build-cache.sh"

log() { printf 'install-crane: %s\n' "$*" >&2; }

# has_version BIN VERSION: `crane version` prints exactly "vX.Y.Z" when
# built from the tagged module.
has_version() {
  local out
  out=$("$1" version 2>/dev/null) || return 1
  [[ $(printf '%s\n' "$out" | sed -n 1p) == "v$2" ]]
}

build_crane() {
  local dest=$1 bin
  if ! command -v go >/dev/null 2>&1; then
    log "Go toolchain not found; it is needed to build crane $CRANE_VERSION"
    exit 1
  fi
  log "building crane $CRANE_VERSION from its Go module (under a minute)"
  bin=$(mktemp -d "$CACHE/build-crane.XXXXXX")
  # `go install module@version` builds outside any module and stamps the
  # version into the binary, which has_version checks.
  GOBIN=$bin GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION"
  mv "$bin/crane" "$dest"
  rm -rf "$bin"
}

crane_bin=$(provide crane "$CRANE_VERSION" build_crane)
echo "CRANE_BIN=$crane_bin"
