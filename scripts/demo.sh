#!/usr/bin/env bash
# The demo: a registry webhook becomes a Consul KV change with history,
# then a rolling, health-gated Nomad deploy.
#
# Installs what it needs (pinned Consul and Nomad, curl, openssl), starts a
# Consul and a Nomad dev agent on free loopback ports, runs the example job
# (3 instances of tagbridge-testsvc under raw_exec), starts tagbridge with a
# fresh self-signed certificate, sends signed webhooks the way a CI job
# would, shows the KV value and `tagbridge history`, then follows the
# rolling deploy with `tagbridge status web --watch`. Cleans up after
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need curl curl
need openssl openssl
need jq jq

eval "$(bash scripts/install-agents.sh all)"
export CONSUL_BIN NOMAD_BIN
echo "== building tagbridge (release)"
cargo build --release --quiet
TB=$PWD/target/release/tagbridge
TESTSVC=$PWD/target/release/tagbridge-testsvc

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

echo "== starting nomad $("$NOMAD_BIN" version | head -1 | awk '{print $2}') (dev mode, raw_exec, loopback)"
start_nomad "$work" "$CONSUL_PORT"
pids+=("$NOMAD_PID")
export NOMAD_ADDR="http://127.0.0.1:$NOMAD_PORT"
echo "== running nomad/web-template.nomad.hcl: 3 instances on release-20261124000000"
"$CONSUL_BIN" kv put configs/web/IMAGE_TAG release-20261124000000 >/dev/null
"$NOMAD_BIN" job run -detach -var "testsvc=$TESTSVC" -var warmup=1 nomad/web-template.nomad.hcl >/dev/null
for ((i = 0; i < 600; i++)); do
  [ "$(curl -fsS "$NOMAD_ADDR/v1/job/web/deployment" | jq -r .Status 2>/dev/null)" = successful ] && break
  sleep 0.2
done
"$NOMAD_BIN" job status -short web | sed -n '1,12p'

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

nomad {
  address = "$NOMAD_ADDR"
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

  rollout {
    job      = "web"
    strategy = "template"
    timeout  = "5m"
  }
}
HCL
export TAGBRIDGE_CONFIG="$work/tagbridge.hcl"
"$TB" check --connect
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
echo "== tagbridge status web --watch   (the rolling deploy, one instance at a time)"
"$TB" status web --watch

echo
echo "== the instances now answer"
for a in $(curl -fsS "$NOMAD_ADDR/v1/job/web/allocations" | jq -r '.[] | select(.ClientStatus=="running") | .ID'); do
  port=$(curl -fsS "$NOMAD_ADDR/v1/allocation/$a" | jq -r '.AllocatedResources.Shared.Ports[] | select(.Label=="http") | .Value')
  echo "  instance ${a:0:8}: $(curl -fsS "http://127.0.0.1:$port/tag")"
done

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
