#!/bin/bash
# run-demo.sh: run kerbside on this machine with a demo console, from a fresh clone.
#
# Installs QEMU and the SPICE clients if missing, builds kerbside, starts a small QEMU VM with
# a SPICE ticket, and starts kerbside with the embedded SQLite database and self-signed TLS
# material under the state directory, with the API and its web console on loopback in noauth
# mode (a clearly marked local administrator, no password). It then mints a console token,
# writes a .vv file and prints the remote-viewer command and the web console's URL. Ctrl-C
# stops everything.
#
#   tools/run-demo.sh           run until Ctrl-C
#   tools/run-demo.sh --check   bring it up, take a screenshot through the proxy, shut down
#
# Environment: KERBSIDE_DEMO_DIR (state directory, default .state/demo in the clone),
# KERBSIDE_DEMO_TLS_PORT / KERBSIDE_DEMO_INSECURE_PORT (default 5900 / 5901, or free ports
# when those are taken), KERBSIDE_DEMO_API_PORT (default 13002, or a free port).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

temp_state=""
if [ "$check" = 1 ] && [ -z "${KERBSIDE_DEMO_DIR:-}" ]; then
  # The check starts from a clean state every time, and leaves nothing behind.
  temp_state=$(mktemp -d -t kerbside-demo.XXXXXX)
  state="$temp_state"
else
  state="${KERBSIDE_DEMO_DIR:-$root/.state/demo}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$CARGO_TARGET_DIR/debug"
console_uuid=0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pick_port() { # preferred port if free (and not in check mode), else any free one
  if [ "$check" = 0 ] && port_free "$1"; then echo "$1"; else free_port; fi
}
wait_port() {
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

echo "== checking QEMU and the SPICE clients (installing what is missing)"
tools/install-test-deps.sh
echo "== building kerbside"
cargo build --locked --bins --quiet

mkdir -p "$state"
chmod 700 "$state"
tls_port="${KERBSIDE_DEMO_TLS_PORT:-$(pick_port 5900)}"
insecure_port="${KERBSIDE_DEMO_INSECURE_PORT:-$(pick_port 5901)}"
api_port="${KERBSIDE_DEMO_API_PORT:-$(pick_port 13002)}"
metrics_port=$(pick_port 13003)
qemu_port=$(free_port)

# The hypervisor's SPICE ticket: only kerbside knows it; users get kerbside tokens.
ticket=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
(umask 077; printf '%s' "$ticket" >"$state/qemu-ticket")

cat >"$state/sources.yaml" <<YAML
- source: demo
  type: static
  consoles:
    - uuid: $console_uuid
      name: kerbside demo VM
      hypervisor: localhost
      hypervisor_ip: 127.0.0.1
      insecure_port: $qemu_port
      ticket: $ticket
YAML
chmod 600 "$state/sources.yaml"

cat >"$state/kerbside.conf" <<CONF
[DEFAULT]
state_path = $state
node_name = demo

[api]
bind_host = 127.0.0.1
bind_port = $api_port
# No Keystone in the demo: the API and the web console treat everyone as the local
# administrator. Plain HTTP on loopback, so the console's cookie goes without Secure.
auth_strategy = noauth
insecure_cookies = true
policy_file = $state/policy.yaml

[proxy]
bind_host = 127.0.0.1
tls_port = $tls_port
insecure_port = $insecure_port
public_host = 127.0.0.1

[console]
sources_file = $state/sources.yaml

[metrics]
bind_port = $metrics_port
CONF

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$temp_state" ]; then rm -rf "$temp_state"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting the demo VM (QEMU, SPICE on 127.0.0.1:$qemu_port)"
qemu-system-x86_64 -nodefaults -machine pc,accel=tcg -m 64 -vga qxl -display none \
  -name kerbside-demo -object "secret,id=spicepw,format=raw,file=$state/qemu-ticket" \
  -spice "port=$qemu_port,addr=127.0.0.1,password-secret=spicepw" \
  >"$state/qemu.log" 2>&1 &
pids+=($!)
wait_port "$qemu_port" || { echo "QEMU did not start: see $state/qemu.log" >&2; exit 1; }

echo "== starting kerbside (log: $state/kerbside.log)"
"$bin/kerbside" --config-file "$state/kerbside.conf" --component proxy --component api \
  >"$state/kerbside.log" 2>&1 &
kerbside_pid=$!
pids+=("$kerbside_pid")
for port in "$tls_port" "$api_port"; do
  wait_port "$port" || { echo "kerbside did not start:" >&2; tail -n 20 "$state/kerbside.log" >&2; exit 1; }
done

token=$("$bin/kerbside-manage" --config-file "$state/kerbside.conf" token create \
  --source demo --console "$console_uuid" --vv "$state/demo.vv")

cat <<EOT

kerbside is running with a demo console.
  web console  http://127.0.0.1:$api_port/ui/
               sign in: press "Continue as the local administrator" (no password: the demo
               runs with [api] auth_strategy = noauth, and every page says so)
  proxy        TLS 127.0.0.1:$tls_port, plain 127.0.0.1:$insecure_port (answers NEED_SECURED)
  metrics      http://127.0.0.1:$metrics_port/metrics
  state        $state (SQLite database, TLS material, logs)
  .vv file     $state/demo.vv

Open the console (the .vv deletes itself once read):
  remote-viewer $state/demo.vv

Mint another token and .vv:
  $bin/kerbside-manage --config-file $state/kerbside.conf token create --source demo --console $console_uuid --vv $state/demo.vv
EOT

if [ "$check" = 1 ]; then
  echo "== check: screenshot of the demo VM through the proxy"
  rm -f "$state/check.ppm"
  SSL_CERT_FILE="$state/tls/ca-cert.pem" timeout 60 spicy-screenshot -h 127.0.0.1 \
    -p "$insecure_port" -s "$tls_port" -w "$token" -o "$state/check.ppm" >"$state/check.log" 2>&1 || {
    echo "demo check failed: spicy-screenshot could not reach the VM through kerbside" >&2
    cat "$state/check.log" >&2; tail -n 30 "$state/kerbside.log" >&2; exit 1; }
  [ -s "$state/check.ppm" ] || { echo "demo check failed: no screenshot" >&2; exit 1; }
  echo "== check: the web console's local administrator sign-in"
  jar="$state/check-cookies.txt"
  ui="http://127.0.0.1:$api_port/ui"
  login=$(curl -fsS -c "$jar" -b "$jar" "$ui/login") || {
    echo "demo check failed: no web console at $ui/login" >&2; exit 1; }
  grep -q "Continue as the local administrator" <<<"$login" || {
    echo "demo check failed: the sign-in page does not offer the local administrator" >&2; exit 1; }
  csrf=$(sed -n 's/.*name="csrf" value="\([0-9A-Za-z]*\)".*/\1/p' <<<"$login" | head -n 1)
  sessions=$(curl -fsS -c "$jar" -b "$jar" -L --data-urlencode "csrf=$csrf" "$ui/login") || {
    echo "demo check failed: the local administrator sign-in was refused" >&2; exit 1; }
  if ! grep -q "Local administrator (no authentication)" <<<"$sessions" ||
    ! grep -q "No live sessions" <<<"$sessions"; then
    echo "demo check failed: signed in, but the sessions page is not shown" >&2; exit 1
  fi
  kill -TERM "$kerbside_pid"
  wait "$kerbside_pid" || { echo "demo check failed: kerbside did not stop cleanly" >&2; exit 1; }
  echo "demo check passed: screenshot $(head -c 20 "$state/check.ppm" | sed -n 2p) through the proxy, web console sign-in, clean shutdown"
  exit 0
fi

echo
echo "Press Ctrl-C to stop."
wait "$kerbside_pid"
