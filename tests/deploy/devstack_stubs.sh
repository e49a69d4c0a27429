# shellcheck shell=bash
# tests/deploy/devstack_stubs.sh: stand-ins for the DevStack functions the kerbside plugin
# calls, sourced by devstack_harness.sh before devstack/settings and devstack/plugin.sh.
#
# iniset/iniget/inicomment really edit files (the way DevStack's own helpers do) and
# make_cert really issues certificates with openssl, so the files the
# plugin writes can be checked by kerbside-manage. Everything that would talk to
# Keystone, MySQL, systemd or Apache only records its call, one line per call with the
# arguments separated by "|", in $STUB_LOG.
#
# Needs: STUB_LOG (call log) and STUB_WORK (scratch directory).

_stub_log() {
    local IFS='|'
    printf '%s\n' "$*" >>"$STUB_LOG"
}

# Plugin bookkeeping and service selection (functions-common)
# -----------------------------------------------------------

define_plugin() { _stub_log define_plugin "$@"; }
plugin_requires() { _stub_log plugin_requires "$@"; }

enable_service() {
    local service
    for service in "$@"; do
        if [[ ",$DISABLED_SERVICES," == *",$service,"* ]]; then
            continue
        fi
        if ! is_service_enabled "$service"; then
            ENABLED_SERVICES="$ENABLED_SERVICES,$service"
        fi
    done
    ENABLED_SERVICES=${ENABLED_SERVICES#,}
}

# Removes services from ENABLED_SERVICES, as DevStack's disable_service does.
disable_service() {
    local service
    _stub_log disable_service "$@"
    for service in "$@"; do
        ENABLED_SERVICES=",$ENABLED_SERVICES,"
        ENABLED_SERVICES=${ENABLED_SERVICES//,$service,/,}
        ENABLED_SERVICES=${ENABLED_SERVICES#,}
        ENABLED_SERVICES=${ENABLED_SERVICES%,}
    done
}

# True when any of the services is enabled; "nova" stands for any n-* service, as in
# DevStack.
is_service_enabled() {
    local service
    for service in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$service,"* ]]; then
            return 0
        fi
        if [[ "$service" == nova && ",$ENABLED_SERVICES," == *",n-"* ]]; then
            return 0
        fi
    done
    return 1
}

trueorfalse() {
    local default=$1 value=${!2:-}
    case "${value,,}" in
        1 | yes | true | on) echo True ;;
        0 | no | false | off) echo False ;;
        "") echo "$default" ;;
        *) echo "$default" ;;
    esac
}

is_ubuntu() { return 0; }
is_fedora() { return 1; }
echo_summary() { _stub_log echo_summary "$@"; }
warn() { _stub_log warn "$@"; }
die() {
    local line=$1
    shift
    _stub_log die "$line" "$*"
    echo "die (line $line): $*" >&2
    exit 1
}

install_package() { _stub_log install_package "$@"; }
apt_get() { _stub_log apt_get "$@"; }
apt-cache() { _stub_log apt-cache "$@"; return 1; }

# Runs the command without privileges (everything lives in the scratch directory).
sudo() {
    _stub_log sudo "$@"
    "$@"
}

# INI files (inc/ini-config)
# --------------------------
# Same edits as DevStack's sed-based helpers: iniset replaces the first "option = ..."
# line of the section, else adds the option right after the section header, else
# appends the section; inicomment puts "#" in front of the option's lines.

_ini_awk_common='
function header(l) { return l ~ /^\[.*\]/ }
function is_opt(l) { return index(l, ENVIRON["O"]) == 1 && substr(l, length(ENVIRON["O"]) + 1) ~ /^[ \t]*=/ }
'

iniset() {
    [[ "$1" == -sudo ]] && shift
    _stub_log iniset "$@"
    local file=$1 tmp
    [[ -e "$file" ]] || : >"$file"
    tmp=$(mktemp)
    S="[$2]" O=$3 V=$4 awk "$_ini_awk_common"'
        NR == FNR {
            if (header($0)) { cur = ($0 == ENVIRON["S"]); if (cur) has_section = 1 }
            else if (cur && is_opt($0)) { exists = 1 }
            next
        }
        header($0) {
            cur = ($0 == ENVIRON["S"]); print
            if (cur && !exists && !done) { print ENVIRON["O"] " = " ENVIRON["V"]; done = 1 }
            next
        }
        cur && exists && !done && is_opt($0) { print ENVIRON["O"] " = " ENVIRON["V"]; done = 1; next }
        { print }
        END { if (!has_section) { print ""; print ENVIRON["S"]; print ENVIRON["O"] " = " ENVIRON["V"] } }
    ' "$file" "$file" >"$tmp"
    cat "$tmp" >"$file"
    rm -f "$tmp"
}

# Prints the value of the first "option = value" of the section (empty when absent).
iniget() {
    [[ -e "$1" ]] || return 0
    S="[$2]" O=$3 awk "$_ini_awk_common"'
        header($0) { cur = ($0 == ENVIRON["S"]); next }
        cur && is_opt($0) { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]+$/, ""); print; exit }
    ' "$1"
}

inicomment() {
    [[ "$1" == -sudo ]] && shift
    _stub_log inicomment "$@"
    local file=$1 tmp
    tmp=$(mktemp)
    S="[$2]" O=$3 awk "$_ini_awk_common"'
        header($0) { cur = ($0 == ENVIRON["S"]) }
        cur && is_opt($0) { $0 = "#" $0 }
        { print }
    ' "$file" >"$tmp"
    cat "$tmp" >"$file"
    rm -f "$tmp"
}

# Keystone (lib/keystone)
# -----------------------

get_or_create_user() {
    _stub_log get_or_create_user "$@"
    echo "user-id-$1"
}
get_or_add_user_project_role() { _stub_log get_or_add_user_project_role "$@"; }
get_or_create_service() {
    _stub_log get_or_create_service "$@"
    echo "service-id-$1"
}
get_or_create_endpoint() {
    _stub_log get_or_create_endpoint "$@"
    echo "endpoint-id-$1"
}

# Writes what DevStack's helper writes (same options, same values).
configure_keystone_authtoken_middleware() {
    local conf=$1 user=$2 section=${3:-keystone_authtoken} service_type=${4:-}
    _stub_log configure_keystone_authtoken_middleware "$@"
    iniset "$conf" "$section" auth_type password
    iniset "$conf" "$section" interface public
    iniset "$conf" "$section" auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$conf" "$section" username "$user"
    iniset "$conf" "$section" password "$SERVICE_PASSWORD"
    iniset "$conf" "$section" user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$conf" "$section" project_name "$SERVICE_PROJECT_NAME"
    iniset "$conf" "$section" project_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$conf" "$section" www_authenticate_uri "$KEYSTONE_SERVICE_URI"
    iniset "$conf" "$section" cafile "$SSL_BUNDLE_FILE"
    iniset "$conf" "$section" memcached_servers "$MEMCACHE_SERVERS"
    if [[ -n "$service_type" ]]; then
        iniset "$conf" "$section" service_type "$service_type"
    fi
}

# Database and messaging (lib/database, lib/rpc_backend)
# ------------------------------------------------------

recreate_database() { _stub_log recreate_database "$@"; }

# DevStack answers mysql+pymysql://root:...@host/<db>?charset=utf8. The harness has no
# MySQL, so it hands out an SQLite URL instead: `kerbside-manage db sync`, which the
# plugin runs right after, then really creates the schema.
database_connection_url() {
    echo "sqlite:///$STUB_WORK/db/$1.sqlite"
}

get_transport_url() { echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/"; }
get_notification_url() { echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/"; }

mysql() { _stub_log mysql "$@"; }

# Processes, Apache, TLS (functions-common, lib/apache, lib/tls)
# --------------------------------------------------------------

run_process() { _stub_log run_process "$@"; }
stop_process() { _stub_log stop_process "$@"; }
wait_for_service() { _stub_log wait_for_service "$@"; }
start_tls_proxy() { _stub_log start_tls_proxy "$@"; }
disable_apache_site() { _stub_log disable_apache_site "$@"; }
apache_site_config_for() { echo "$STUB_WORK/apache/sites-available/$1.conf"; }

# The CA DevStack's init_CA would have made: a root CA signing an intermediate CA,
# with ca-chain.pem holding both.
_stub_init_ca() {
    local root=$ROOT_CA_DIR int=$INT_CA_DIR
    [[ -r "$int/ca-chain.pem" ]] && return 0
    mkdir -p "$root/private" "$int/private"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/O=OpenStack/OU=DevStack/CN=Root CA" \
        -keyout "$root/private/cacert.key" -out "$root/cacert.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/O=OpenStack/OU=DevStack/CN=Intermediate CA" \
        -keyout "$int/private/cacert.key" -out "$int/cacert.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:true\nkeyUsage=cRLSign,keyCertSign\n' >"$int/ca.ext"
    openssl x509 -req -in "$int/cacert.csr" -CA "$root/cacert.pem" -CAkey "$root/private/cacert.key" \
        -CAcreateserial -days 30 -extfile "$int/ca.ext" -out "$int/cacert.pem" 2>/dev/null
    cat "$root/cacert.pem" "$int/cacert.pem" >"$int/ca-chain.pem"
}

# make_cert CA_DIR NAME COMMON_NAME [ALT_NAMES]: $CA_DIR/NAME.crt and
# $CA_DIR/private/NAME.key, signed by the intermediate CA.
make_cert() {
    local ca_dir=$1 name=$2 cn=$3
    _stub_log make_cert "$@"
    _stub_init_ca
    openssl req -newkey rsa:2048 -nodes -subj "/O=OpenStack/OU=DevStack Servers/CN=$cn" \
        -keyout "$ca_dir/private/$name.key" -out "$ca_dir/$name.csr" 2>/dev/null
    printf 'basicConstraints=CA:false\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s\n' "$cn" \
        >"$ca_dir/$name.ext"
    openssl x509 -req -in "$ca_dir/$name.csr" -CA "$ca_dir/cacert.pem" -CAkey "$ca_dir/private/cacert.key" \
        -CAcreateserial -days 30 -extfile "$ca_dir/$name.ext" -out "$ca_dir/$name.crt" 2>/dev/null
}
