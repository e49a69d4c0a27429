#!/bin/bash
# Sourced by kolla_start in every kerbside image, as the kerbside user.

if [[ ! -d "/var/log/kolla/kerbside" ]]; then
    mkdir -p /var/log/kolla/kerbside
fi
if [[ $(stat -c %a /var/log/kolla/kerbside) != "755" ]]; then
    chmod 755 /var/log/kolla/kerbside
fi

# The one-shot bootstrap container (KOLLA_BOOTSTRAP set) applies the database
# migrations and exits; the services refuse to start while migrations are pending.
if [[ -v KOLLA_BOOTSTRAP ]]; then
    kerbside-manage --config-file /etc/kerbside/kerbside.conf db sync
    exit 0
fi
