# Shared by the demo, the test runner and the benchmark: small helpers, no
# side effects when sourced.

# need CMD PACKAGE: make sure a command exists, installing its Debian
# package when it does not (fresh machines run these scripts as root).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 (for $1)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "could not install $2" >&2; exit 1; }
}

# free_port: a TCP port nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
    shuf -i 20000-60000 -n 1
}

# wait_http URL SECONDS: poll until URL answers 2xx (bounded).
wait_http() {
  local url=$1 secs=${2:-30} i
  for ((i = 0; i < secs * 10; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

# start_consul DIR: a dev agent on free loopback ports; sets CONSUL_PORT
# and CONSUL_PID. Its log is DIR/consul.log.
start_consul() {
  local dir=$1
  CONSUL_PORT=$(free_port)
  "$CONSUL_BIN" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -log-level=warn \
    -http-port="$CONSUL_PORT" -server-port="$(free_port)" \
    -serf-lan-port="$(free_port)" -serf-wan-port="$(free_port)" \
    -dns-port=-1 -grpc-port=-1 -grpc-tls-port=-1 >"$dir/consul.log" 2>&1 &
  CONSUL_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do
    if [ "$(curl -fsS "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" 2>/dev/null)" != '""' ] &&
      curl -fsS "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "consul did not start; log:" >&2
  cat "$dir/consul.log" >&2
  return 1
}

# self_signed_cert DIR: DIR/tls.crt and DIR/tls.key for localhost.
self_signed_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$1/tls.key" -out "$1/tls.crt" >/dev/null 2>&1
}

# start_nomad DIR CONSUL_PORT: a dev agent (server + client, raw_exec) on
# free loopback ports; sets NOMAD_PORT and NOMAD_PID. Without the
# fingerprint denylist the agent dies at start-up on this machine kind
# (AWS_CA_BUNDLE makes env_aws fail fatally; the others probe cloud
# metadata addresses).
start_nomad() {
  local dir=$1 consul_port=$2
  NOMAD_PORT=$(free_port)
  mkdir -p "$dir/nomad-data"
  cat >"$dir/nomad.hcl" <<HCL
data_dir  = "$dir/nomad-data"
bind_addr = "127.0.0.1"
disable_update_check = true
ports {
  http = $NOMAD_PORT
  rpc  = $(free_port)
  serf = $(free_port)
}
plugin "raw_exec" {
  config {
    enabled = true
  }
}
consul {
  address          = "127.0.0.1:$consul_port"
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}
client {
  options = {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    "driver.allowlist"     = "raw_exec"
  }
}
HCL
  "$NOMAD_BIN" agent -dev -config="$dir/nomad.hcl" >"$dir/nomad.log" 2>&1 &
  NOMAD_PID=$!
  local i
  for ((i = 0; i < 600; i++)); do
    if curl -fsS "http://127.0.0.1:$NOMAD_PORT/v1/nodes" 2>/dev/null | grep -q '"Status":"ready"'; then
      return 0
    fi
    sleep 0.1
  done
  echo "nomad did not become ready; log:" >&2
  tail -40 "$dir/nomad.log" >&2
  return 1
}
