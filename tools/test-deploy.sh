#!/bin/bash
# test-deploy.sh: check the deployment tooling (devstack/, kolla/) without DevStack or a
# container engine.
#
#   tools/test-deploy.sh
#
#   1. shellcheck -x on the DevStack plugin and the test scripts
#   2. tests/deploy/devstack_harness.sh: the plugin's phases against stubbed DevStack
#      helpers; the kerbside.conf it writes must pass `kerbside-manage config check`
#   3. a Python virtualenv with Kolla-Ansible, Kolla and yamllint from PyPI, made once in
#      ${KERBSIDE_VENV_DIR:-/var/tmp/kerbside-deploy-venv} and reused
#   4. yamllint on the role, the Kolla-Ansible files, the test playbooks and the release
#      notes; reno's section names in the release notes
#   5. tests/deploy/kolla_harness.sh: syntax check of the role, its configuration
#      rendered by Kolla-Ansible itself and checked (kerbside-manage config check,
#      config.json, HAProxy, Nova), the images rendered by kolla-build and checked
#
# kerbside and kerbside-manage come from $KERBSIDE_MANAGE's directory, else
# $CARGO_TARGET_DIR/debug (target/debug by default); they are built with cargo when
# missing. Missing system tools (shellcheck, openssl, python3-venv) are installed with
# apt-get on Debian. Exits non-zero when anything fails.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
started=$SECONDS
step() { printf '\n== test-deploy: %s\n' "$*"; }
die() {
    echo "test-deploy: FAIL: $*" >&2
    exit 1
}

python=${KERBSIDE_PYTHON:-python3}
venv=${KERBSIDE_VENV_DIR:-/var/tmp/kerbside-deploy-venv}

step "system tools"
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v "$python" >/dev/null 2>&1 || missing+=(python3)
if [[ ! -x "$venv/bin/python" ]] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "test-deploy: installing ${missing[*]}"
    sudo_cmd=()
    [[ "$(id -u)" -eq 0 ]] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    apt_get=("${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 -y -qq)
    "${apt_get[@]}" install --no-install-recommends "${missing[@]}" ||
        { "${apt_get[@]}" update && "${apt_get[@]}" install --no-install-recommends "${missing[@]}"; }
fi
echo "test-deploy: shellcheck, openssl and $python present"

step "kerbside binaries"
if [[ -n "${KERBSIDE_MANAGE:-}" ]]; then
    manage=$KERBSIDE_MANAGE
else
    manage=${CARGO_TARGET_DIR:-$repo/target}/debug/kerbside-manage
fi
bindir=$(dirname "$manage")
if [[ ! -x "$manage" || ! -x "$bindir/kerbside" ]]; then
    [[ -z "${KERBSIDE_MANAGE:-}" ]] || die "KERBSIDE_MANAGE=$manage, but kerbside-manage or kerbside is missing there"
    command -v cargo >/dev/null 2>&1 || die "no kerbside binaries in $bindir and no cargo to build them"
    echo "test-deploy: building kerbside and kerbside-manage"
    cargo build -p kerbside --bins --locked
fi
export KERBSIDE_MANAGE=$manage
echo "test-deploy: using $manage ($("$manage" --version))"

step "shellcheck"
scripts=(devstack/plugin.sh devstack/settings devstack/override-defaults devstack/lib/kerbside
    kolla/docker/kerbside/kerbside-base/extend_start.sh tools/test-deploy.sh tests/deploy/*.sh)
shellcheck -x "${scripts[@]}"
echo "test-deploy: shellcheck clean: ${scripts[*]}"

step "DevStack plugin"
tests/deploy/devstack_harness.sh

step "Python tools (virtualenv $venv)"
wanted=$(sha256sum tests/deploy/requirements.txt | cut -d' ' -f1)
if [[ "$(cat "$venv/.kerbside-requirements" 2>/dev/null || true)" != "$wanted" ]]; then
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
    echo "$wanted" >"$venv/.kerbside-requirements"
    echo "test-deploy: installed $(grep -c '^[a-z]' tests/deploy/requirements.txt) requirements"
else
    echo "test-deploy: reusing the virtualenv"
fi
"$venv/bin/python" -c 'from importlib.metadata import version as v
print("test-deploy: " + ", ".join(f"{p} {v(p)}" for p in ("ansible-core", "kolla-ansible", "kolla", "yamllint")))'

step "yamllint"
yaml=(.yamllint kolla/ansible kolla/globals.yml.example tests/deploy releasenotes/notes)
"$venv/bin/yamllint" --strict -c .yamllint "${yaml[@]}"
echo "test-deploy: yamllint clean: ${yaml[*]}"
"$venv/bin/python" - releasenotes/notes/*.yaml <<'EOF'
import sys, yaml
sections = {"prelude", "features", "issues", "upgrade", "deprecations", "critical", "security", "fixes", "other"}
bad = 0
for path in sys.argv[1:]:
    note = yaml.safe_load(open(path))
    wrong = set(note) - sections
    lists_ok = all(isinstance(v, list) and all(isinstance(i, str) for i in v) for k, v in note.items() if k != "prelude")
    if wrong or not lists_ok or not isinstance(note.get("prelude", ""), str):
        print(f"test-deploy: FAIL: {path}: sections {sorted(wrong)} are not reno's, or not lists of strings")
        bad += 1
print(f"test-deploy: {len(sys.argv) - 1} release note(s) use reno's sections" if not bad else "")
sys.exit(1 if bad else 0)
EOF

step "Kolla images and Kolla-Ansible role"
tests/deploy/kolla_harness.sh "$venv"

echo
echo "test-deploy: all deployment checks passed ($((SECONDS - started)) s)"
