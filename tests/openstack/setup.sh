#!/bin/bash
# setup.sh STATE_DIR KEYSTONE_PORT: prepare a throwaway Keystone + Nova API state
# directory (configuration, WSGI wrappers, SQLite databases, fernet keys) for the API
# integration tests. tests/src/openstack.rs runs it, then starts both under gunicorn with
# serve.sh and seeds Keystone with seed_keystone.py.
#
# Uses the venv made by tools/install-openstack.sh
# (${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}).
set -euo pipefail

base="$1"
keystone_port="$2"
venv="${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}"
ks_url="http://127.0.0.1:${keystone_port}/v3"
export PYTHONWARNINGS=ignore

if [ ! -x "$venv/bin/keystone-manage" ] || [ ! -x "$venv/bin/nova-manage" ]; then
  echo "setup.sh: no OpenStack venv at $venv: run tools/install-openstack.sh" >&2
  exit 1
fi
mkdir -p "$base"/{logs,wsgi,nova-etc,nova-state,nova-locks,fernet-keys,credential-keys}
chmod 700 "$base/fernet-keys" "$base/credential-keys"

cat >"$base/keystone.conf" <<CONF
[DEFAULT]
log_file = $base/logs/keystone.log
debug = false

[database]
connection = sqlite:///$base/keystone.db?timeout=60

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = $base/fernet-keys

[fernet_receipts]
key_repository = $base/fernet-keys

[credential]
key_repository = $base/credential-keys
CONF

cp "$venv/etc/nova/api-paste.ini" "$base/nova-etc/api-paste.ini"
cat >"$base/nova-etc/nova.conf" <<CONF
[DEFAULT]
host = kerbside-test
state_path = $base/nova-state
log_file = $base/logs/nova-api.log
debug = false
transport_url = fake://

[api]
auth_strategy = keystone

[api_database]
connection = sqlite:///$base/nova_api.db?timeout=60

[database]
connection = sqlite:///$base/nova.db?timeout=60

[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:${keystone_port}/
auth_url = http://127.0.0.1:${keystone_port}/
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = novapass
region_name = RegionOne
# Re-check tokens with Keystone at once, so revocations in the tests take effect.
token_cache_time = -1

[oslo_concurrency]
lock_path = $base/nova-locks

[oslo_messaging_notifications]
driver = noop

[wsgi]
api_paste_config = $base/nova-etc/api-paste.ini
CONF

# oslo.config parses sys.argv when the apps initialise; gunicorn's own arguments would make
# it exit(2), so the WSGI modules reset argv first.
cat >"$base/wsgi/keystone_app.py" <<PY
import os, sys
sys.argv = sys.argv[:1]
os.environ['OS_KEYSTONE_CONFIG_DIR'] = '$base'
os.environ['OS_KEYSTONE_CONFIG_FILES'] = 'keystone.conf'
from keystone.wsgi.api import application  # noqa
PY
cat >"$base/wsgi/nova_api_app.py" <<PY
import os, sys
sys.argv = ['nova-api-os-compute']
os.environ['OS_NOVA_CONFIG_DIR'] = '$base/nova-etc'
os.environ['OS_NOVA_CONFIG_FILES'] = 'api-paste.ini;nova.conf'
from nova.wsgi.osapi_compute import application  # noqa
PY

# shellcheck source=tests/openstack/keystone-setup.sh
source "$(dirname "$0")/keystone-setup.sh"
nm=("$venv/bin/nova-manage" --config-file "$base/nova-etc/nova.conf")
setup_keystone() {
  keystone_setup "$venv" "$base/keystone.conf" "$ks_url"
}
setup_nova() {
  "${nm[@]}" api_db sync
  "${nm[@]}" cell_v2 map_cell0 --database_connection "sqlite:///$base/nova_cell0.db?timeout=60"
  "${nm[@]}" cell_v2 create_cell --name cell1 --database_connection "sqlite:///$base/nova.db?timeout=60" \
    --transport-url fake://
  "${nm[@]}" db sync
}
# Independent: run both at once.
setup_keystone >"$base/logs/keystone-manage.log" 2>&1 &
ks=$!
setup_nova >"$base/logs/nova-manage.log" 2>&1 &
nv=$!
wait "$ks" || { tail -20 "$base/logs/keystone-manage.log" >&2; echo "setup.sh: keystone setup failed" >&2; exit 1; }
wait "$nv" || { tail -20 "$base/logs/nova-manage.log" >&2; echo "setup.sh: nova setup failed" >&2; exit 1; }
