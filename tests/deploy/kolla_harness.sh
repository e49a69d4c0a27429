#!/bin/bash
# tests/deploy/kolla_harness.sh: check the Kolla images and the Kolla-Ansible role
# without a container engine.
#
#   kolla_harness.sh VENV
#
# VENV is a Python virtualenv with kolla-ansible, kolla and yamllint (tools/test-deploy.sh
# makes it). Steps:
#   1. ansible-playbook --syntax-check tests/deploy/site.yml: the role (every action's
#      task file), with Kolla-Ansible's real support roles and modules, and
#      kolla/ansible/kerbside.yml;
#   2. tests/deploy/render.yml: the role's config and loadbalancer tasks run for real on
#      this machine with Kolla-Ansible's group_vars, writing into a scratch
#      node_config; check_kolla.py checks the result (config.json files, kerbside.conf
#      through kerbside-manage config check, HAProxy, ProxySQL, the Nova override);
#   3. kolla-build --template-only renders the image definitions with Kolla's macros;
#      check_images.py checks them against the build context and the crate.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:?usage: kolla_harness.sh VENV}
manage=${KERBSIDE_MANAGE:-${CARGO_TARGET_DIR:-$repo/target}/debug/kerbside-manage}
share=$venv/share/kolla-ansible/ansible
python=$venv/bin/python

[[ -x "$manage" ]] || { echo "kolla: FAIL: no kerbside-manage at $manage (set KERBSIDE_MANAGE)"; exit 1; }
[[ -d "$share/roles" ]] || { echo "kolla: FAIL: no Kolla-Ansible in $venv"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/kerbside-kolla.XXXXXX")
if [[ -z "${KERBSIDE_KEEP_WORK:-}" ]]; then
    trap 'rm -rf "$work"' EXIT
else
    echo "kolla: scratch directory kept: $work"
fi
failures=0
step_failed() {
    echo "kolla: FAIL: $1; output:"
    sed 's/^/    /' "$2"
    failures=$((failures + 1))
}

# Kolla-Ansible's plugins as its own playbooks see them (they sit next to site.yml),
# plus a stand-in for the one module of a Galaxy-only collection its roles name.
export ANSIBLE_ROLES_PATH=$repo/kolla/ansible/roles:$share/roles
export ANSIBLE_LIBRARY=$share/library
export ANSIBLE_ACTION_PLUGINS=$share/action_plugins
export ANSIBLE_FILTER_PLUGINS=$share/filter_plugins
export ANSIBLE_MODULE_UTILS=$share/module_utils
export ANSIBLE_COLLECTIONS_PATH=$here/collections
export ANSIBLE_NOCOLOR=1 ANSIBLE_DISPLAY_SKIPPED_HOSTS=false ANSIBLE_RETRY_FILES_ENABLED=false
export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false
export ANSIBLE_HOME=$work/ansible-home ANSIBLE_REMOTE_TEMP=$work/ansible-tmp

# 1. Syntax
# ---------
if "$venv/bin/ansible-playbook" --syntax-check -i "$here/kolla/inventory" "$here/site.yml" >"$work/syntax.log" 2>&1; then
    echo "kolla: ok: ansible-playbook --syntax-check: the role's actions and kolla/ansible/kerbside.yml"
else
    step_failed "ansible-playbook --syntax-check" "$work/syntax.log"
fi

# 2. Render the configuration
# ---------------------------
# A playbook directory like Kolla-Ansible's: its group_vars/all plus ours.
play=$work/play
node_config=$work/etc-kolla
mkdir -p "$play/group_vars/all" "$node_config"/{certificates/ca,config/kerbside,haproxy/services.d,proxysql/users,proxysql/rules,rendered}
ln -s "$share"/group_vars/all/*.yml "$play/group_vars/all/"
ln -s "$repo/kolla/ansible/group_vars/kerbside.yml" "$play/group_vars/all/kerbside.yml"
cp "$here/render.yml" "$here/kolla/inventory" "$play/"

# The operator's files: SPICE certificate (issued by a test CA), the CA Kolla copies into
# containers, a hypervisor CA, sources.yaml and a policy override.
certs=$node_config/certificates
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/O=kerbside tests/CN=Test CA" \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$work/ca.key" -out "$certs/kerbside-ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/O=kerbside tests/CN=cloud.example.test" \
    -keyout "$certs/kerbside-key.pem" -out "$work/kerbside.csr" 2>/dev/null
printf 'basicConstraints=CA:false\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:cloud.example.test\n' >"$work/leaf.ext"
openssl x509 -req -in "$work/kerbside.csr" -CA "$certs/kerbside-ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 30 -extfile "$work/leaf.ext" -out "$certs/kerbside-cert.pem" 2>/dev/null
cp "$certs/kerbside-ca.pem" "$certs/ca/kolla-root.crt"
cp "$certs/kerbside-ca.pem" "$node_config/config/kerbside/hypervisor-ca.pem"
cat >"$node_config/config/kerbside/sources.yaml" <<'EOF'
- source: lab
  type: static
  consoles:
    - uuid: 6f1b1e8e-2f4e-4d55-9a40-3c0e1c7b2a10
      name: lab-desktop
      hypervisor: hv1.example.test
      insecure_port: 5900
EOF
printf '"kerbside:sessions:terminate": "role:admin"\n' >"$node_config/config/kerbside/policy.yaml"

etc_kolla_before=$([[ -e /etc/kolla ]] && echo present || echo absent)
if (cd "$play" && "$venv/bin/ansible-playbook" -i inventory \
    -e "@$here/kolla/globals.yml" -e "@$here/kolla/passwords.yml" \
    -e node_config="$node_config" -e node_config_directory="$node_config" \
    -e kerbside_hypervisor_ca_file="$node_config/config/kerbside/hypervisor-ca.pem" \
    -e kerbside_repo="$repo" -e ansible_become=false \
    -e config_owner_user="$(id -un)" -e config_owner_group="$(id -gn)" \
    -e ansible_python_interpreter="$python" \
    render.yml) >"$work/render.log" 2>&1; then
    echo "kolla: ok: the role's config and loadbalancer tasks ran (render.yml)"
    if ! "$python" "$here/check_kolla.py" --node-config "$node_config" --manage "$manage" --repo "$repo"; then
        failures=$((failures + 1))
    fi
else
    step_failed "render.yml" "$work/render.log"
fi
if [[ "$etc_kolla_before" == absent && -e /etc/kolla ]]; then
    echo "kolla: FAIL: the render wrote into /etc/kolla"
    failures=$((failures + 1))
fi

# 3. Images
# ---------
# kolla-build insists on importing its engine's Python client; pointing it at a socket
# that does not exist makes sure no container engine is ever contacted.
sed "s|/path/to/kerbside-rs|$repo|" "$repo/kolla/kolla-build.conf.example" >"$work/kolla-build.conf"
if (cd "$work" && DOCKER_HOST="unix://$work/no-container-engine.sock" "$venv/bin/kolla-build" \
    --config-file "$work/kolla-build.conf" --template-only --work-dir "$work/kolla-build" \
    --docker-dir "$repo/kolla/docker" '^kerbside') >"$work/kolla-build.log" 2>&1; then
    echo "kolla: ok: kolla-build --template-only rendered the kerbside images"
    if ! "$python" "$here/check_images.py" --rendered "$work/kolla-build/docker/kerbside" \
        --repo "$repo" --build-conf "$work/kolla-build.conf"; then
        failures=$((failures + 1))
    fi
else
    step_failed "kolla-build --template-only" "$work/kolla-build.log"
fi

echo
if [[ $failures -ne 0 ]]; then
    echo "kolla: $failures step(s) FAILED"
    exit 1
fi
echo "kolla: all checks passed"
