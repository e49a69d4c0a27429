#!/bin/bash
# tests/deploy/devstack_harness.sh: run the DevStack plugin's phases with DevStack's helper
# functions stubbed (tests/deploy/devstack_stubs.sh), in a scratch directory standing in
# for /etc, /opt/stack and /usr/local/bin, and check what the plugin did.
#
# Scenarios:
#   all-in-one  every kerbside service, Nova API + compute on the node: all phases
#               (pre-install, install from prebuilt binaries, post-config, extra,
#               unstack, clean)
#   tls         tls-proxy enabled, kerbside-notifications disabled: certificates from
#               DevStack's CA, API behind Apache, https URLs
#   compute     a compute-only node of a multi-node DevStack: only nova-cpu.conf changes
#   html5       KERBSIDE_HTML5=True with n-spice enabled: n-spice is disabled, the
#               spice-html5 package installed, [html5] configured (ws://, and wss:// with
#               tls-proxy) and Nova's html5proxy_base_url points at kerbside
#   build       no prebuilt binaries and only a too-old cargo: the plugin installs Rust
#               with rustup and runs `cargo build --release --locked` (a fake cargo
#               stands in for the compiler)
#
# The kerbside.conf the plugin writes must pass `kerbside-manage config check` (binary
# from $KERBSIDE_MANAGE, else $CARGO_TARGET_DIR/debug/kerbside-manage); `kerbside` is
# taken from the same directory as the prebuilt binaries the plugin installs.
set -eEuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
manage=${KERBSIDE_MANAGE:-${CARGO_TARGET_DIR:-$repo/target}/debug/kerbside-manage}
prebuilt=$(dirname "$manage")

if [[ ! -x "$manage" || ! -x "$prebuilt/kerbside" ]]; then
    echo "devstack: FAIL: need kerbside-manage and kerbside in $prebuilt (set KERBSIDE_MANAGE)" >&2
    exit 1
fi

# iniget, for reading what the plugin wrote.
# shellcheck source=tests/deploy/devstack_stubs.sh
source "$here/devstack_stubs.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/kerbside-devstack.XXXXXX")
if [[ -z "${KERBSIDE_KEEP_WORK:-}" ]]; then
    trap 'rm -rf "$work"' EXIT
else
    echo "devstack: scratch directory kept: $work"
fi

failures=0
pass() { echo "devstack: ok: $*"; }
fail() {
    echo "devstack: FAIL: $*"
    failures=$((failures + 1))
}
# check DESCRIPTION COMMAND...: pass when the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# called LOG LINE: the stub log has exactly this line ("function|arg|arg...").
called() { grep -qxF -- "$2" "$1"; }
not_called() { ! grep -q -- "^$2" "$1"; }
# ini_is FILE SECTION OPTION VALUE
ini_is() {
    local got
    got=$(iniget "$1" "$2" "$3")
    if [[ "$got" != "$4" ]]; then
        echo "    $1 [$2] $3 = '$got', expected '$4'"
        return 1
    fi
}

# A fake cargo for PATH: logs its arguments; `build` writes stand-in binaries.
# make_fake_cargo PATH VERSION
make_fake_cargo() {
    cat >"$1" <<EOF
#!/bin/bash
if [[ "\$1" == --version ]]; then echo "cargo $2 (fake)"; exit 0; fi
printf 'cargo|%s|%s\n' "\$PWD" "\$*" >>"\$FAKE_LOG"
if [[ "\$1" == build ]]; then
    mkdir -p "\$CARGO_TARGET_DIR/release"
    for p in kerbside kerbside-manage; do
        printf '#!/bin/sh\necho "fake %s"\n' "\$p" >"\$CARGO_TARGET_DIR/release/\$p"
        chmod +x "\$CARGO_TARGET_DIR/release/\$p"
    done
fi
EOF
    chmod +x "$1"
}

# run_devstack SCENARIO ENABLED_SERVICES DISABLED_SERVICES "PHASE" ...
# Sources the stubs, devstack/override-defaults and devstack/settings, then
# devstack/plugin.sh once per phase, in one shell as stack.sh does. Variables named
# SCENARIO_* in the environment tune the scenario.
run_devstack() {
    local name=$1 enabled=$2 disabled=$3
    shift 3
    local root=$work/$name
    mkdir -p "$root"/{etc/nova,opt/stack,data,usr/local/bin,home,bin,apache/sites-available}
    [[ -f "$root/etc/nova/nova.conf" ]] || printf '[DEFAULT]\nmy_ip = 192.0.2.10\n' >"$root/etc/nova/nova.conf"
    [[ -f "$root/etc/nova/nova-cpu.conf" ]] || printf '[DEFAULT]\nmy_ip = 192.0.2.10\n' >"$root/etc/nova/nova-cpu.conf"
    [[ -x "$root/bin/cargo" ]] || make_fake_cargo "$root/bin/cargo" 1.95.0
    # The DevStack globals set below are read by the sourced plugin, not here.
    # shellcheck disable=SC2034
    (
        export HOME=$root/home FAKE_LOG=$root/calls.log
        export PATH="$root/bin:${SCENARIO_PATH:-$PATH}"
        STUB_LOG=$root/calls.log STUB_WORK=$root

        # What stackrc, lib/* and local.conf would have set.
        ENABLED_SERVICES=$enabled DISABLED_SERVICES=$disabled
        DEST=$root/opt/stack DATA_DIR=$root/data STACK_USER=$(id -un) SYSTEMD_DIR=$root/etc/systemd/system
        HOST_IP=192.0.2.10 SERVICE_HOST=192.0.2.10 SERVICE_LISTEN_ADDRESS=0.0.0.0
        SERVICE_PROTOCOL=${SCENARIO_PROTOCOL:-http} SERVICE_TIMEOUT=60 REGION_NAME=RegionOne
        SERVICE_PASSWORD=secretservice SERVICE_DOMAIN_NAME=Default SERVICE_PROJECT_NAME=service
        KEYSTONE_SERVICE_URI=$SERVICE_PROTOCOL://192.0.2.10/identity
        SSL_BUNDLE_FILE=$root/data/ca-bundle.pem MEMCACHE_SERVERS=localhost:11211
        ROOT_CA_DIR=$root/data/CA/root-ca INT_CA_DIR=$root/data/CA/int-ca
        DATABASE_TYPE=mysql DATABASE_USER=root DATABASE_PASSWORD=secretdatabase DATABASE_HOST=127.0.0.1
        RABBIT_USERID=stackrabbit RABBIT_PASSWORD=secretrabbit RABBIT_HOST=192.0.2.10
        NOVA_CONF=$root/etc/nova/nova.conf NOVA_CPU_CONF=$root/etc/nova/nova-cpu.conf
        ENABLE_DEBUG_LOG_LEVEL=True
        # The plugin's own knobs, pointed into the scratch directory.
        KERBSIDE_DIR=$repo KERBSIDE_CONF_DIR=$root/etc/kerbside KERBSIDE_STATE_DIR=$root/var/lib/kerbside
        KERBSIDE_BIN_DIR=$root/usr/local/bin KERBSIDE_CARGO_TARGET_DIR=$root/target
        KERBSIDE_PREBUILT_BIN=${SCENARIO_PREBUILT-$prebuilt}
        if is_service_enabled tls-proxy; then
            _stub_init_ca
            cp "$INT_CA_DIR/ca-chain.pem" "$SSL_BUNDLE_FILE"
        fi

        # shellcheck source=devstack/override-defaults
        source "$repo/devstack/override-defaults"
        # shellcheck source=devstack/settings
        source "$repo/devstack/settings"
        local phase
        for phase in "$@"; do
            echo "== plugin.sh $phase"
            # "stack post-config" is two arguments: word splitting wanted.
            # shellcheck disable=SC2086 source=devstack/plugin.sh
            source "$repo/devstack/plugin.sh" $phase
        done
    ) >>"$root/output.log" 2>&1 || {
        fail "$name: plugin.sh failed; its output:"
        sed 's/^/    /' "$root/output.log"
        return 1
    }
}

# check_conf NAME CONF...: the files pass kerbside-manage's checks.
check_conf() {
    local name=$1
    shift
    if python3 "$here/check_conf.py" --manage "$manage" "$@" >"$work/check_conf.out" 2>&1; then
        pass "$name: $(basename "$*" | tr '\n' ' ')passes kerbside-manage config check"
    else
        fail "$name: kerbside-manage rejects the written configuration:"
        sed 's/^/    /' "$work/check_conf.out"
    fi
}

# sqlite_has_tables DB TABLE...
sqlite_has_tables() {
    python3 - "$@" <<'EOF'
import sqlite3, sys
db, wanted = sys.argv[1], set(sys.argv[2:])
names = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
missing = wanted - names
if missing:
    print(f"    missing tables in {db}: {sorted(missing)} (have {sorted(names)})")
sys.exit(1 if missing else 0)
EOF
}

# check_nova NAME CONF BASE_URL
check_nova() {
    local name=$1 conf=$2 base_url=$3 short
    short=$(basename "$conf")
    check "$name: $short [spice] enabled" ini_is "$conf" spice enabled True
    check "$name: $short [spice] spice_direct_proxy_base_url = $base_url" \
        ini_is "$conf" spice spice_direct_proxy_base_url "$base_url"
    check "$name: $short [spice] server_proxyclient_address" ini_is "$conf" spice server_proxyclient_address 192.0.2.10
    check "$name: $short [spice] server_listen" ini_is "$conf" spice server_listen 192.0.2.10
    check "$name: $short [vnc] enabled = False" ini_is "$conf" vnc enabled False
    check "$name: $short [notifications] notification_format = both" \
        ini_is "$conf" notifications notification_format both
    check "$name: $short [oslo_messaging_notifications] driver = messagingv2" \
        ini_is "$conf" oslo_messaging_notifications driver messagingv2
}

# DevStack's own services; devstack/settings adds the three kerbside ones.
all_services=key,mysql,rabbit,n-api,n-cond,n-sch,n-cpu

# all-in-one
# ----------
s=all-in-one
r=$work/$s
log=$r/calls.log
bin=$r/usr/local/bin
conf=$r/etc/kerbside/kerbside.conf
echo "devstack: scenario $s"
if run_devstack $s "$all_services" "" "stack pre-install" "stack install" "stack post-config" "stack extra"; then
    check "$s: runtime libraries installed" called "$log" "install_package|openssl|libmariadb3|libsqlite3-0"
    check "$s: prebuilt binaries: nothing compiled" not_called "$log" "cargo|"
    check "$s: kerbside installed" cmp -s "$prebuilt/kerbside" "$bin/kerbside"
    check "$s: kerbside-manage installed" cmp -s "$prebuilt/kerbside-manage" "$bin/kerbside-manage"
    check "$s: keystone user" called "$log" "get_or_create_user|kerbside|secretservice|Default"
    check "$s: admin role (Nova os-console-auth-tokens is admin-only)" \
        called "$log" "get_or_add_user_project_role|admin|kerbside|service|Default|Default"
    check "$s: service role" called "$log" "get_or_add_user_project_role|service|kerbside|service|Default|Default"
    check "$s: catalog service" called "$log" "get_or_create_service|kerbside|console-proxy|Kerbside SPICE console proxy"
    check "$s: endpoints (public, admin, internal)" called "$log" \
        "get_or_create_endpoint|service-id-kerbside|RegionOne|http://192.0.2.10:13002|http://192.0.2.10:13002|http://192.0.2.10:13002"
    check "$s: database recreated" called "$log" "recreate_database|kerbside"
    check "$s: db sync created the schema" sqlite_has_tables "$r/db/kerbside.sqlite" sources consoles console_tokens sessions channels
    check "$s: [database] connection from database_connection_url" \
        ini_is "$conf" database connection "sqlite:///$r/db/kerbside.sqlite"
    check "$s: [api] bind_port" ini_is "$conf" api bind_port 13002
    check "$s: [api] public_url" ini_is "$conf" api public_url http://192.0.2.10:13002
    check "$s: [api] web_console" ini_is "$conf" api web_console True
    check "$s: web console cookie without Secure over plain HTTP" ini_is "$conf" api insecure_cookies True
    check "$s: [proxy] tls_port below libvirt's 5900+" ini_is "$conf" proxy tls_port 5898
    check "$s: [proxy] insecure_port" ini_is "$conf" proxy insecure_port 5899
    check "$s: [proxy] public_host = SERVICE_HOST" ini_is "$conf" proxy public_host 192.0.2.10
    check "$s: no certificate configured (kerbside generates one)" ini_is "$conf" proxy cert_file ""
    check "$s: [keystone_authtoken] username" ini_is "$conf" keystone_authtoken username kerbside
    check "$s: [keystone_authtoken] auth_url" ini_is "$conf" keystone_authtoken auth_url http://192.0.2.10/identity
    check "$s: missing CA bundle not configured" ini_is "$conf" keystone_authtoken cafile ""
    check "$s: [nova] interface public (DevStack registers only public endpoints)" ini_is "$conf" nova interface public
    check "$s: notifications transport_url" \
        ini_is "$conf" oslo_messaging_notifications transport_url rabbit://stackrabbit:secretrabbit@192.0.2.10:5672/
    check "$s: classic non-durable queue (DevStack's RabbitMQ)" ini_is "$conf" notifications queue_type classic
    for c in api proxy notifications; do
        check_conf "$s" "$conf" "$r/etc/kerbside/kerbside-$c.conf"
    done
    check "$s: distinct metrics ports" test "$(cat "$r"/etc/kerbside/kerbside-*.conf | grep bind_port | sort -u | wc -l)" = 3
    check_nova "$s" "$r/etc/nova/nova.conf" http://192.0.2.10:13002/nova
    check_nova "$s" "$r/etc/nova/nova-cpu.conf" http://192.0.2.10:13002/nova
    for c in api proxy notifications; do
        check "$s: run_process kerbside-$c" called "$log" \
            "run_process|kerbside-$c|$bin/kerbside --config-file $conf --config-file $r/etc/kerbside/kerbside-$c.conf --component $c"
    done
    for c in api proxy notifications; do
        check "$s: kerbside-$c unit raises the open-file limit" grep -qx "LimitNOFILE=65536" \
            "$r/etc/systemd/system/devstack@kerbside-$c.service.d/kerbside-limits.conf"
    done
    check "$s: state directory is private" test "$(stat -c %a "$r/var/lib/kerbside")" = 700
    check "$s: waits for the API" called "$log" "wait_for_service|60|http://192.0.2.10:13002/healthcheck"
    check "$s: no TLS proxy" not_called "$log" "start_tls_proxy|"
    check "$s: no browser consoles unless KERBSIDE_HTML5" ini_is "$conf" html5 enabled ""
    check "$s: Nova's html5proxy_base_url untouched" ini_is "$r/etc/nova/nova.conf" spice html5proxy_base_url ""
    check "$s: n-spice left alone" not_called "$log" "disable_service|"

    if run_devstack $s "$all_services" "" "unstack" "clean"; then
        for c in api proxy notifications; do
            check "$s: unstack stops kerbside-$c" called "$log" "stop_process|kerbside-$c"
        done
        check "$s: clean drops the database" called "$log" \
            "mysql|-uroot|-psecretdatabase|-h127.0.0.1|-e|DROP DATABASE IF EXISTS kerbside;"
        check "$s: clean removes /etc/kerbside" test ! -e "$r/etc/kerbside"
        check "$s: clean removes the state directory" test ! -e "$r/var/lib/kerbside"
        check "$s: clean removes the binaries" test ! -e "$bin/kerbside" -a ! -e "$bin/kerbside-manage"
    fi
fi

# tls
# ---
s=tls
r=$work/$s
log=$r/calls.log
conf=$r/etc/kerbside/kerbside.conf
echo "devstack: scenario $s"
if SCENARIO_PROTOCOL=https run_devstack $s "$all_services,tls-proxy" kerbside-notifications \
    "stack pre-install" "stack install" "stack post-config" "stack extra"; then
    check "$s: certificate from DevStack's CA" called "$log" "make_cert|$r/data/CA/int-ca|kerbside-proxy|192.0.2.10"
    check "$s: [proxy] cert_file" ini_is "$conf" proxy cert_file "$r/etc/kerbside/tls/kerbside-proxy.pem"
    check "$s: [proxy] key_file" ini_is "$conf" proxy key_file "$r/etc/kerbside/tls/kerbside-proxy.key"
    check "$s: [proxy] ca_file" ini_is "$conf" proxy ca_file "$r/etc/kerbside/tls/ca-chain.pem"
    check "$s: certificate chains to the CA given to clients" \
        openssl verify -CAfile "$r/etc/kerbside/tls/ca-chain.pem" -untrusted "$r/etc/kerbside/tls/kerbside-proxy.pem" "$r/etc/kerbside/tls/kerbside-proxy.pem" >/dev/null
    check "$s: [keystone_authtoken] cafile kept (bundle exists)" \
        ini_is "$conf" keystone_authtoken cafile "$r/data/ca-bundle.pem"
    check "$s: API listens on the internal port" ini_is "$conf" api bind_port 13012
    check "$s: API public URL is https" ini_is "$conf" api public_url https://192.0.2.10:13002
    check "$s: web console cookie Secure behind tls-proxy" ini_is "$conf" api insecure_cookies False
    for c in api proxy; do
        check_conf "$s" "$conf" "$r/etc/kerbside/kerbside-$c.conf"
    done
    check "$s: Apache terminates TLS for the API" called "$log" "start_tls_proxy|kerbside-api|*|13002|192.0.2.10|13012"
    check "$s: disabled kerbside-notifications is not started" not_called "$log" "run_process|kerbside-notifications"
    check "$s: no notification settings without the consumer" ini_is "$conf" oslo_messaging_notifications transport_url ""
    check "$s: kerbside-api started" called "$log" \
        "run_process|kerbside-api|$r/usr/local/bin/kerbside --config-file $conf --config-file $r/etc/kerbside/kerbside-api.conf --component api"
    check_nova "$s" "$r/etc/nova/nova-cpu.conf" https://192.0.2.10:13002/nova
fi

# compute
# -------
s=compute
r=$work/$s
log=$r/calls.log
echo "devstack: scenario $s"
if run_devstack $s n-cpu "kerbside-api,kerbside-proxy,kerbside-notifications" \
    "stack pre-install" "stack install" "stack post-config" "stack extra" "unstack" "clean"; then
    check "$s: nothing installed" not_called "$log" "install_package|"
    check "$s: no keystone accounts" not_called "$log" "get_or_create_user|"
    check "$s: no database" not_called "$log" "recreate_database|"
    check "$s: no kerbside.conf" test ! -e "$r/etc/kerbside/kerbside.conf"
    check "$s: nothing started" not_called "$log" "run_process|"
    check "$s: nothing stopped" not_called "$log" "stop_process|"
    check "$s: no database to drop" not_called "$log" "mysql|"
    check_nova "$s" "$r/etc/nova/nova-cpu.conf" http://192.0.2.10:13002/nova
fi

# html5
# -----
s=html5
r=$work/$s
log=$r/calls.log
conf=$r/etc/kerbside/kerbside.conf
echo "devstack: scenario $s"
if KERBSIDE_HTML5=True run_devstack $s "$all_services,n-spice" "" \
    "stack pre-install" "stack install" "stack post-config" "stack extra"; then
    check "$s: n-spice disabled (kerbside replaces it)" called "$log" "disable_service|n-spice"
    check "$s: spice-html5 package installed" called "$log" "install_package|openssl|libmariadb3|libsqlite3-0|spice-html5"
    check "$s: [html5] enabled" ini_is "$conf" html5 enabled True
    check "$s: [html5] bind_port = n-spice's 6082" ini_is "$conf" html5 bind_port 6082
    check "$s: [html5] public_url ws:// without tls-proxy" ini_is "$conf" html5 public_url ws://192.0.2.10:6082/
    check "$s: [html5] insecure_websocket without tls-proxy" ini_is "$conf" html5 insecure_websocket True
    check "$s: [html5] web_root" ini_is "$conf" html5 web_root /usr/share/spice-html5
    for c in api proxy notifications; do
        check_conf "$s" "$conf" "$r/etc/kerbside/kerbside-$c.conf"
    done
    for nconf in nova.conf nova-cpu.conf; do
        check "$s: $nconf [spice] html5proxy_base_url = kerbside's page" \
            ini_is "$r/etc/nova/$nconf" spice html5proxy_base_url http://192.0.2.10:13002/spice_auto.html
        check_nova "$s" "$r/etc/nova/$nconf" http://192.0.2.10:13002/nova
    done
fi
s=html5-tls
r=$work/$s
conf=$r/etc/kerbside/kerbside.conf
echo "devstack: scenario $s"
if KERBSIDE_HTML5=True SCENARIO_PROTOCOL=https run_devstack $s "$all_services,tls-proxy" "" \
    "stack pre-install" "stack install" "stack post-config"; then
    check "$s: [html5] public_url wss:// with tls-proxy" ini_is "$conf" html5 public_url wss://192.0.2.10:6082/
    check "$s: [html5] TLS with DevStack's certificate" ini_is "$conf" html5 insecure_websocket False
    check "$s: Nova's html5proxy_base_url is https" \
        ini_is "$r/etc/nova/nova.conf" spice html5proxy_base_url https://192.0.2.10:13002/spice_auto.html
    check_conf "$s" "$conf" "$r/etc/kerbside/kerbside-proxy.conf"
fi

# build
# -----
s=build
r=$work/$s
log=$r/calls.log
echo "devstack: scenario $s"
mkdir -p "$r/bin"
make_fake_cargo "$r/bin/cargo" 1.63.0
cat >"$r/bin/rustup-init" <<'EOF'
#!/bin/bash
printf 'rustup-init|%s\n' "$*" >>"$FAKE_LOG"
mkdir -p "$HOME/.cargo/bin"
cp "$(dirname "$0")/cargo-new" "$HOME/.cargo/bin/cargo"
EOF
chmod +x "$r/bin/rustup-init"
make_fake_cargo "$r/bin/cargo-new" 1.95.0
# Keep the machine's own Rust toolchain out of reach.
if SCENARIO_PREBUILT="" SCENARIO_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    run_devstack $s "$all_services" "" "stack pre-install" "stack install"; then
    check "$s: build dependencies installed" grep -q '^install_package|.*|build-essential|pkg-config|default-libmysqlclient-dev' "$log"
    check "$s: too-old cargo 1.63 rejected, Rust installed with rustup" called "$log" \
        "rustup-init|-y --no-modify-path --profile minimal --default-toolchain stable"
    check "$s: cargo build --release --locked" called "$log" "cargo|$repo|build --release --locked -p kerbside --bins"
    check "$s: built binaries installed" grep -q 'fake kerbside-manage' "$r/usr/local/bin/kerbside-manage"
fi

echo
if [[ $failures -ne 0 ]]; then
    echo "devstack: $failures check(s) FAILED"
    exit 1
fi
echo "devstack: all checks passed"
