#!/bin/bash
# install-openstack.sh: create the Python venv holding the REAL OpenStack services (from
# PyPI) that the integration tests start on loopback: Keystone and the Nova API for the API
# tests (tests/src/openstack.rs), and the whole of Nova with Placement, Glance and Neutron
# for the Nova tests (tests/src/openstack_full.rs).
#
#   venv : ${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}
#   pins : tests/openstack/constraints.txt (keystone 30.0.0, nova 34.0.0,
#          openstack-placement 16.0.0, glance 33.0.0, neutron 29.0.0, gunicorn 27.0.1,
#          PyMySQL 1.2.4, and every dependency)
#
# Idempotent: when the venv already holds the pinned versions it only verifies (well under
# a second). Needs python >= 3.11 (set PYTHON= to choose one) and access to PyPI.
#
# Usage: tools/install-openstack.sh [--check]
#   --check   verify only; install nothing (exit 1 when the venv is missing or stale)
set -euo pipefail

prog=install-openstack
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
constraints="$here/tests/openstack/constraints.txt"
venv="${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}"
check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

log() { printf '%s: %s\n' "$prog" "$*" >&2; }

pin() { sed -n "s/^$1==//p" "$constraints"; }
# The distributions installed by name; their dependencies come from the constraints.
packages=(keystone nova openstack-placement glance neutron gunicorn PyMySQL)
wanted=()
for p in "${packages[@]}"; do
  v="$(pin "$p")"
  [ -n "$v" ] || { log "$p is not pinned in $constraints"; exit 1; }
  wanted+=("$p==$v")
done

installed() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "${wanted[@]}" <<'EOF' 2>/dev/null
import sys, importlib.metadata as m
want = dict(arg.split('==', 1) for arg in sys.argv[1:])
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
EOF
}

if installed; then
  log "${wanted[*]} present in $venv"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  log "the OpenStack venv $venv is missing or stale: run tools/install-openstack.sh"
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for c in python3.11 python3.12 python3.13 python3; do
      if command -v "$c" >/dev/null 2>&1 &&
        "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py="$c"
        break
      fi
    done
  fi
  [ -n "$py" ] || { log "need python >= 3.11 (set PYTHON=)"; exit 1; }
  log "creating $venv with $("$py" -V 2>&1)"
  "$py" -m venv "$venv"
fi

log "installing ${wanted[*]} (about two minutes)"
pip_log="$(mktemp)"
trap 'rm -f "$pip_log"' EXIT
if ! "$venv/bin/pip" install -q --upgrade pip setuptools wheel >"$pip_log" 2>&1 ||
  ! "$venv/bin/pip" install -q -c "$constraints" "${wanted[@]}" >>"$pip_log" 2>&1; then
  tail -30 "$pip_log" >&2
  log "pip install failed"
  exit 1
fi
installed || { log "installed, but the versions do not match $constraints"; exit 1; }
log "done"
