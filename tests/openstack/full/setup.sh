#!/bin/bash
# full/setup.sh STATE_DIR: prepare the state directory of the small but complete OpenStack
# the Nova integration tests run (tests/src/openstack_full.rs): Keystone, Placement, Glance
# (file store), Neutron (API only), and Nova API, conductor, scheduler and two nova-compute
# processes with the fake driver. Writes every configuration file and WSGI wrapper, creates
# the MariaDB schemas and syncs them. The caller has created the RabbitMQ vhost.
#
# The environment gives the rest (all required):
#   KS_PORT PLACEMENT_PORT GLANCE_PORT NEUTRON_PORT NOVA_PORT   loopback ports
#   DB_PREFIX     prefix of the MariaDB schemas to create (e.g. ksos_1234_)
#   DB_URL        MariaDB base URL without a schema (mysql+pymysql://root@127.0.0.1:3306)
#   TRANSPORT_URL oslo.messaging URL of the RabbitMQ vhost
#
# Uses the venv made by tools/install-openstack.sh
# (${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}).
set -euo pipefail

base="$1"
venv="${KERBSIDE_OPENSTACK_VENV:-/var/tmp/kerbside-openstack-venv}"
export PYTHONWARNINGS=ignore
: "${KS_PORT:?}" "${PLACEMENT_PORT:?}" "${GLANCE_PORT:?}" "${NEUTRON_PORT:?}" "${NOVA_PORT:?}"
: "${DB_PREFIX:?}" "${DB_URL:?}" "${TRANSPORT_URL:?}"

for program in keystone-manage nova-manage placement-manage glance-manage neutron-db-manage; do
  if [ ! -x "$venv/bin/$program" ]; then
    echo "full/setup.sh: $venv/bin/$program is missing: run tools/install-openstack.sh" >&2
    exit 1
  fi
done
mkdir -p "$base"/{logs,wsgi,etc/nova,etc/glance,etc/neutron/plugins/ml2,etc/placement,locks}
mkdir -p "$base"/{fernet-keys,credential-keys,images,glance-staging,glance-tasks}
mkdir -p "$base"/state/{api,compute1,compute2}
chmod 700 "$base/fernet-keys" "$base/credential-keys"

ks="http://127.0.0.1:${KS_PORT}"
db() { printf '%s/%s%s?charset=utf8' "$DB_URL" "$DB_PREFIX" "$1"; }

# keystonemiddleware / keystoneauth options for service user $1.
authtoken() {
  cat <<CONF
www_authenticate_uri = $ks/
auth_url = $ks/
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = ${1}pass
region_name = RegionOne
CONF
}

cat >"$base/keystone.conf" <<CONF
[DEFAULT]
log_file = $base/logs/keystone.log

[database]
connection = sqlite:///$base/keystone.db?timeout=60

[token]
provider = fernet
expiration = 7200

[fernet_tokens]
key_repository = $base/fernet-keys

[fernet_receipts]
key_repository = $base/fernet-keys

[credential]
key_repository = $base/credential-keys
CONF

cat >"$base/etc/placement/placement.conf" <<CONF
[DEFAULT]
log_file = $base/logs/placement.log

[api]
auth_strategy = keystone

[placement_database]
connection = $(db placement)

[keystone_authtoken]
$(authtoken placement)
CONF

cp "$venv/etc/glance/glance-api-paste.ini" "$base/etc/glance/glance-api-paste.ini"
cat >"$base/etc/glance/glance-api.conf" <<CONF
[DEFAULT]
log_file = $base/logs/glance.log
enabled_backends = file:file
workers = 1

[database]
connection = $(db glance)

[glance_store]
default_backend = file

[file]
filesystem_store_datadir = $base/images/

[os_glance_staging_store]
filesystem_store_datadir = $base/glance-staging/

[os_glance_tasks_store]
filesystem_store_datadir = $base/glance-tasks/

[paste_deploy]
flavor = keystone
config_file = $base/etc/glance/glance-api-paste.ini

[keystone_authtoken]
$(authtoken glance)

[oslo_concurrency]
lock_path = $base/locks
CONF

cp "$venv/etc/neutron/api-paste.ini" "$base/etc/neutron/api-paste.ini"
# API only: no agents, no mechanism drivers. The router plugin is needed: without it
# GET /v2.0/ports fails on a fresh process (port_forwardings).
cat >"$base/etc/neutron/neutron.conf" <<CONF
[DEFAULT]
log_file = $base/logs/neutron.log
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = $TRANSPORT_URL
api_paste_config = $base/etc/neutron/api-paste.ini
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_workers = 1
rpc_workers = 0

[database]
connection = $(db neutron)

[keystone_authtoken]
$(authtoken neutron)

[nova]
$(authtoken nova)

[oslo_concurrency]
lock_path = $base/locks
CONF
cat >"$base/etc/neutron/plugins/ml2/ml2_conf.ini" <<CONF
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers =
extension_drivers = port_security
CONF

# Options every Nova process shares; the database is added for all but nova-compute.
nova_common() {
  cat <<CONF
[DEFAULT]
host = $1
state_path = $base/state/$2
log_file = $base/logs/nova-$3.log
transport_url = $TRANSPORT_URL
my_ip = 127.0.0.1
compute_driver = fake.FakeDriverWithoutFakeNodes

[api]
auth_strategy = keystone

[keystone_authtoken]
$(authtoken nova)
# Re-check tokens with Keystone at once, so revocations in the tests take effect.
token_cache_time = -1

[placement]
$(authtoken placement)

[neutron]
$(authtoken neutron)

[glance]
region_name = RegionOne

[service_user]
send_service_user_token = false

[scheduler]
discover_hosts_in_cells_interval = -1

[notifications]
notification_format = versioned

[oslo_messaging_notifications]
driver = messagingv2

[spice]
enabled = true

[vnc]
enabled = false

[oslo_concurrency]
lock_path = $base/locks

[wsgi]
api_paste_config = $base/etc/nova/api-paste.ini
CONF
}
nova_db() {
  cat <<CONF

[api_database]
connection = $(db nova_api)

[database]
connection = $(db nova)
CONF
}
cp "$venv/etc/nova/api-paste.ini" "$base/etc/nova/api-paste.ini"
{ nova_common kerbside-control api api; nova_db; } >"$base/etc/nova/nova.conf"
{ nova_common kerbside-control api conductor; nova_db; } >"$base/etc/nova/nova-conductor.conf"
{ nova_common kerbside-control api scheduler; nova_db; } >"$base/etc/nova/nova-scheduler.conf"
nova_common compute1 compute1 compute1 >"$base/etc/nova/nova-compute1.conf"
nova_common compute2 compute2 compute2 >"$base/etc/nova/nova-compute2.conf"

# WSGI wrappers: oslo.config parses sys.argv, so gunicorn's own arguments are removed first.
cat >"$base/wsgi/keystone_app.py" <<PY
import os, sys
sys.argv = sys.argv[:1]
os.environ['OS_KEYSTONE_CONFIG_DIR'] = '$base'
os.environ['OS_KEYSTONE_CONFIG_FILES'] = 'keystone.conf'
from keystone.wsgi.api import application  # noqa
PY
cat >"$base/wsgi/placement_app.py" <<PY
import os, sys
sys.argv = ['placement-api']
os.environ['OS_PLACEMENT_CONFIG_DIR'] = '$base/etc/placement'
from placement.wsgi.api import application  # noqa
PY
cat >"$base/wsgi/glance_app.py" <<PY
import os, sys
sys.argv = ['glance-api']
os.environ['OS_GLANCE_CONFIG_DIR'] = '$base/etc/glance'
from glance.wsgi.api import application  # noqa
PY
cat >"$base/wsgi/neutron_app.py" <<PY
import os, sys
sys.argv = ['neutron-api']
os.environ['OS_NEUTRON_CONFIG_DIR'] = '$base/etc/neutron'
os.environ['OS_NEUTRON_CONFIG_FILES'] = 'neutron.conf;plugins/ml2/ml2_conf.ini'
from neutron.wsgi.api import application  # noqa
# Map every ORM class now: a fresh process otherwise fails GET /v2.0/ports.
from sqlalchemy import orm
orm.configure_mappers()
PY
cat >"$base/wsgi/nova_api_app.py" <<PY
import os, sys
sys.argv = ['nova-api-os-compute']
os.environ['OS_NOVA_CONFIG_DIR'] = '$base/etc/nova'
os.environ['OS_NOVA_CONFIG_FILES'] = 'api-paste.ini;nova.conf'
from nova.wsgi.osapi_compute import application  # noqa
PY

mysql_cmd=(mysql -h 127.0.0.1 -P 3306 -u root)
for schema in nova_api nova nova_cell0 placement glance neutron; do
  echo "CREATE DATABASE \`${DB_PREFIX}${schema}\` CHARACTER SET utf8mb4;"
done | "${mysql_cmd[@]}"

# shellcheck source=tests/openstack/keystone-setup.sh
source "$(dirname "$0")/../keystone-setup.sh"
nm=("$venv/bin/nova-manage" --config-file "$base/etc/nova/nova.conf")
setup_keystone() {
  keystone_setup "$venv" "$base/keystone.conf" "$ks/v3"
}
setup_nova() {
  "${nm[@]}" api_db sync
  "${nm[@]}" cell_v2 map_cell0 --database_connection "$(db nova_cell0)"
  "${nm[@]}" cell_v2 create_cell --name cell1 --database_connection "$(db nova)" \
    --transport-url "$TRANSPORT_URL"
  "${nm[@]}" db sync
}
setup_placement() {
  "$venv/bin/placement-manage" --config-file "$base/etc/placement/placement.conf" db sync
}
setup_glance() {
  "$venv/bin/glance-manage" --config-dir "$base/etc/glance" db_sync
}
setup_neutron() {
  "$venv/bin/neutron-db-manage" --config-file "$base/etc/neutron/neutron.conf" \
    --config-file "$base/etc/neutron/plugins/ml2/ml2_conf.ini" upgrade heads
}
# Independent: run them all at once.
pids=()
setup_keystone >"$base/logs/keystone-manage.log" 2>&1 &
pids+=("keystone:$!")
setup_nova >"$base/logs/nova-manage.log" 2>&1 &
pids+=("nova:$!")
setup_placement >"$base/logs/placement-manage.log" 2>&1 &
pids+=("placement:$!")
setup_glance >"$base/logs/glance-manage.log" 2>&1 &
pids+=("glance:$!")
setup_neutron >"$base/logs/neutron-manage.log" 2>&1 &
pids+=("neutron:$!")
failed=0
for entry in "${pids[@]}"; do
  part="${entry%%:*}"
  if ! wait "${entry#*:}"; then
    tail -20 "$base/logs/$part-manage.log" >&2
    echo "full/setup.sh: $part set-up failed (log: $base/logs/$part-manage.log)" >&2
    failed=1
  fi
done
exit "$failed"
