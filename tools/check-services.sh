#!/bin/bash
# check-services.sh: fail with a clear message when a service the integration tests
# use is not reachable. The services are started by the machine (or CI), not here.
#
#   MariaDB   127.0.0.1:3306  (override with KERBSIDE_TEST_MARIADB_ADDR=host:port)
#   RabbitMQ  127.0.0.1:5672  (override with KERBSIDE_TEST_AMQP_ADDR=host:port)
set -euo pipefail

failures=0

# reachable NAME HOST:PORT
reachable() {
  local name=$1 addr=$2 host port
  host=${addr%:*}
  port=${addr##*:}
  # The single quotes are intended: the inner bash expands \$1 and \$2.
  # shellcheck disable=SC2016
  if timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
    echo "check-services: $name reachable at $host:$port"
  else
    echo "check-services: FAIL: $name is not reachable at $host:$port (is the service running?)" >&2
    failures=$((failures + 1))
  fi
}

reachable MariaDB "${KERBSIDE_TEST_MARIADB_ADDR:-127.0.0.1:3306}"
reachable RabbitMQ "${KERBSIDE_TEST_AMQP_ADDR:-127.0.0.1:5672}"

# The Nova tests (tests/src/openstack_full.rs) give their OpenStack a RabbitMQ vhost of its
# own (rabbitmqctl, as a user that may run it) and MariaDB schemas (the mysql client).
if rabbitmqctl -q list_vhosts >/dev/null 2>&1; then
  echo "check-services: rabbitmqctl can manage vhosts"
else
  echo "check-services: FAIL: rabbitmqctl cannot list vhosts (needed to create the test OpenStack's vhost; run as root or a user in the rabbitmq group)" >&2
  failures=$((failures + 1))
fi
if mysql -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  echo "check-services: mysql client reaches MariaDB as root"
else
  echo "check-services: FAIL: 'mysql -h 127.0.0.1 -u root' failed (needed to create the test OpenStack's schemas)" >&2
  failures=$((failures + 1))
fi

[ "$failures" -eq 0 ]
