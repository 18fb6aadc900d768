#!/usr/bin/env bash
# The demo: a registry webhook becomes a Consul KV change with history.
#
# Installs what it needs (pinned Consul, curl, openssl), starts a Consul
# dev agent on free loopback ports, starts tagbridge with a fresh
# self-signed certificate, sends one signed webhook the way a CI job would,
# and shows the KV value and `tagbridge history`. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need curl curl
need openssl openssl

eval "$(bash scripts/install-agents.sh consul)"
export CONSUL_BIN
echo "== building tagbridge (release)"
cargo build --release --quiet
TB=$PWD/target/release/tagbridge

work=$(mktemp -d /tmp/tagbridge-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting consul $("$CONSUL_BIN" version | head -1 | awk '{print $2}') (dev mode, loopback)"
start_consul "$work"
pids+=("$CONSUL_PID")
export CONSUL_HTTP_ADDR="http://127.0.0.1:$CONSUL_PORT"

self_signed_cert "$work"
secret_out=$("$TB" secret)
url_path=$(printf '%s\n' "$secret_out" | grep '^/hooks/')
hash_line=$(printf '%s\n' "$secret_out" | grep '^secret_sha256')
printf 'demo-signing-key' >"$work/web.hmac"
port=$(free_port)
admin=$(free_port)
cat >"$work/tagbridge.hcl" <<HCL
listen       = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
log_format   = "pretty"

tls {
  cert_file = "$work/tls.crt"
  key_file  = "$work/tls.key"
}

service "web" {
  $hash_line
  source              = "generic"
  repository          = "acme/web"
  key                 = "configs/web/IMAGE_TAG"
  signing_secret_file = "$work/web.hmac"
  tags {
    include = "^release-[0-9]{14}\$"
    order   = "numeric"
  }
}
HCL
export TAGBRIDGE_CONFIG="$work/tagbridge.hcl"
"$TB" check
"$TB" serve 2>"$work/tagbridge.log" &
pids+=($!)
wait_http "http://127.0.0.1:$admin/readyz" 30

send() {
  local tag=$1 body sig
  body=$(printf '{"repository":"acme/web","tag":"%s","digest":"sha256:%s"}' "$tag" "$(printf '%s' "$tag" | sha256sum | cut -c1-64)")
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac demo-signing-key -r | cut -d' ' -f1)
  echo
  echo "\$ curl -X POST https://localhost:$port/hooks/<secret> -H 'X-Hub-Signature-256: sha256=…' -d '$body'"
  curl -sS -i --cacert "$work/tls.crt" -X POST "https://localhost:$port$url_path" \
    -H "Content-Type: application/json" -H "X-Hub-Signature-256: sha256=$sig" --data-binary "$body"
  echo
}

echo
echo "== a CI job reports two builds, then a late delivery of the first"
send release-20261124120000
send release-20261125090000
send release-20261124120000

echo
echo "== consul kv get configs/web/IMAGE_TAG"
value=$("$CONSUL_BIN" kv get -http-addr="$CONSUL_HTTP_ADDR" configs/web/IMAGE_TAG)
echo "$value"
echo
echo "== tagbridge history web"
"$TB" history web
echo
echo "== tagbridge status"
"$TB" status

[ "$value" = "release-20261125090000" ] || { echo "demo failed: unexpected KV value $value" >&2; exit 1; }
echo
echo "demo ok"
