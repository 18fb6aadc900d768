# Sourced by scripts/install-agents.sh and scripts/install-tofu.sh: the
# "system binary at the pinned version, else build once into a cache keyed by
# version" logic they share. The caller defines CACHE, log and has_version.

# go_module_dir MODULE VERSION: download the module, print its read-only dir.
go_module_dir() {
  local out
  if ! out=$(GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$1@$2" 2>&1); then
    log "the Go module proxy did not serve $1@$2:"
    printf '%s\n' "$out" >&2
    log "pin a version the proxy serves (see ../shared/design/tagbridge.md section 8)"
    exit 1
  fi
  printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# provide NAME VERSION BUILDER: print the path of a binary at VERSION.
provide() {
  local name=$1 version=$2 builder=$3 sys cached
  if sys=$(command -v "$name" 2>/dev/null) && has_version "$sys" "$version"; then
    printf '%s\n' "$sys"
    return
  fi
  cached="$CACHE/$name-$version/$name"
  if [ -x "$cached" ] && has_version "$cached" "$version"; then
    printf '%s\n' "$cached"
    return
  fi
  mkdir -p "$(dirname "$cached")"
  # One build at a time per version, even when several callers ask.
  exec 9>"$CACHE/$name-$version.lock"
  flock 9
  if ! { [ -x "$cached" ] && has_version "$cached" "$version"; }; then
    "$builder" "$cached"
  fi
  flock -u 9
  exec 9>&-
  has_version "$cached" "$version" || { log "$cached does not report v$version"; exit 1; }
  printf '%s\n' "$cached"
}
