#!/bin/bash
# install-openstack.sh: create the Python venv holding the REAL Keystone and Nova API (from
# PyPI) that the API integration tests start on loopback (tests/src/openstack.rs).
#
#   venv : ${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}
#   pins : tests/openstack/constraints.txt (keystone 30.0.0, nova 34.0.0, gunicorn 27.0.1)
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
keystone_version="$(pin keystone)"
nova_version="$(pin nova)"
gunicorn_version="$(pin gunicorn)"

installed() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$keystone_version" "$nova_version" "$gunicorn_version" <<'EOF' 2>/dev/null
import sys, importlib.metadata as m
want = dict(zip(('keystone', 'nova', 'gunicorn'), sys.argv[1:]))
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
EOF
}

if installed; then
  log "keystone $keystone_version, nova $nova_version and gunicorn $gunicorn_version present in $venv"
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

log "installing keystone==$keystone_version nova==$nova_version gunicorn==$gunicorn_version (about a minute)"
pip_log="$(mktemp)"
trap 'rm -f "$pip_log"' EXIT
if ! "$venv/bin/pip" install -q --upgrade pip setuptools wheel >"$pip_log" 2>&1 ||
  ! "$venv/bin/pip" install -q -c "$constraints" \
    "keystone==$keystone_version" "nova==$nova_version" "gunicorn==$gunicorn_version" \
    >>"$pip_log" 2>&1; then
  tail -30 "$pip_log" >&2
  log "pip install failed"
  exit 1
fi
installed || { log "installed, but the versions do not match $constraints"; exit 1; }
log "done"
