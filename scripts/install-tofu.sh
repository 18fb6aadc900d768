#!/usr/bin/env bash
# Provides the pinned OpenTofu binary that checks the formatting of terraform/.
#
# Why this exists: CI runs `tofu fmt -check -recursive terraform/`, and a
# fresh machine has no tofu. A `tofu` on PATH is used when it reports the
# pinned version; otherwise the pinned release is built from its Go module
# (the only source this machine reaches) into a cache outside the repo, keyed
# by version, so every later run is instant. Same conventions as
# scripts/install-agents.sh.
#
# Only `tofu fmt` is used: the hashicorp/consul, hashicorp/nomad and
# hashicorp/random providers are not obtainable here, so `tofu init`,
# `validate` and `apply` cannot run in CI (see terraform/README.md).
#
# Prints, on stdout, one line: TOFU_BIN=<path>. Progress goes to stderr.
set -euo pipefail

TOFU_VERSION=1.11.0

CACHE=${TAGBRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tagbridge}
mkdir -p "$CACHE"

# provide and go_module_dir, shared with the other install script.
. "$(dirname "${BASH_SOURCE[0]}")/build-cache.sh"

log() { printf 'install-tofu: %s\n' "$*" >&2; }

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "Go toolchain not found; it is needed to build OpenTofu $TOFU_VERSION (no system tofu at the pinned version)"
    exit 1
  fi
}

# has_version BIN VERSION: the binary reports exactly the pinned release
# (first line "OpenTofu vX.Y.Z", no "-dev"/"-beta" suffix). Output is
# captured first: with pipefail, `head` closing the pipe early would make a
# healthy binary look broken and trigger a rebuild.
has_version() {
  local out
  out=$(TF_CLI_CONFIG_FILE=/dev/null "$1" version 2>/dev/null) || return 1
  [[ $(printf '%s\n' "$out" | sed -n 1p) == "OpenTofu v$2" ]]
}


build_tofu() {
  local dest=$1 src work
  need_go
  log "building OpenTofu $TOFU_VERSION from its Go module (several minutes on 2 cores, once)"
  src=$(go_module_dir github.com/opentofu/opentofu "v$TOFU_VERSION")
  if [ -z "$src" ] || [ ! -f "$src/go.mod" ]; then
    log "go mod download gave no module directory for github.com/opentofu/opentofu@v$TOFU_VERSION"
    exit 1
  fi
  work=$(mktemp -d "$CACHE/build-tofu.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  # The module's go.mod has a single replace (hashicorp/hcl/v2 => the
  # opentofu/hcl fork, a module path, not a local directory); it only holds
  # when building inside this module, which is why we build in a copy of it
  # rather than with `go install`. `version.dev=no` makes the binary report
  # the release ("OpenTofu v1.11.0") instead of "v1.11.0-dev".
  if ! (cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    go build -trimpath \
    -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
    -o "$dest.tmp" ./cmd/tofu); then
    rm -rf "$work" "$dest.tmp"
    log "building OpenTofu $TOFU_VERSION failed (see above); if the Go module proxy refused a dependency, it is not obtainable here"
    exit 1
  fi
  mv "$dest.tmp" "$dest"
  rm -rf "$work"
}


if [ $# -gt 0 ]; then
  log "usage: $0   (prints TOFU_BIN=<path>)"
  exit 2
fi
# (Assigned first so that a failed build fails the script: a command
# substitution inside echo's arguments would not.)
bin=$(provide tofu "$TOFU_VERSION" build_tofu)
echo "TOFU_BIN=$bin"
