#!/bin/bash
# full/reap.sh PARENT_PID STATE_DIR DB_PREFIX VHOST: once PARENT_PID (the test process) is
# gone and its services have stopped (serve.sh stops each within ten seconds), drop the
# full test OpenStack's MariaDB schemas and RabbitMQ vhost and remove its state directory.
# tests/src/openstack_full.rs starts it detached; it also sweeps what a killed run left.
set -uo pipefail
parent="$1"
dir="$2"
prefix="$3"
vhost="$4"
while kill -0 "$parent" 2>/dev/null; do
  sleep 1
done
sleep 12
schemas="$(mysql -h 127.0.0.1 -P 3306 -u root -N -e "SHOW DATABASES LIKE '${prefix//_/\\_}%'" 2>/dev/null)"
for schema in $schemas; do
  mysql -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS \`$schema\`" 2>/dev/null
done
rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1
case "$dir" in
  */kerbside-os-full-*) rm -rf "$dir" ;;
esac
exit 0
