#!/bin/bash
# Regenerates docs/PERFORMANCE.md: installs HAProxy if missing, builds release binaries, runs
# kerbside-bench (direct vs HAProxy vs kerbside with its SPICE firewall vs kerbside with
# [firewall] mode = off, same run) and writes the report, with the firewall's cost (relay CPU
# per GiB and link latency against mode off) among the targets.
# Extra arguments go to kerbside-bench (see `kerbside-bench --help`), e.g. --sessions 250.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    $sudo apt-get install -y haproxy
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p kerbside -p kerbside-bench
# 1,000 sessions of 4 channels hold ~16,000 sockets across the processes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$CARGO_TARGET_DIR/release/kerbside-bench" \
    --kerbside "$CARGO_TARGET_DIR/release/kerbside" \
    --out docs/PERFORMANCE.md \
    --command "tools/bench.sh${*:+ $*}" \
    "$@"
