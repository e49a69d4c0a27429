#!/bin/bash
# install-test-deps.sh: install (with apt) everything building and testing kerbside
# needs on Debian 12 (bookworm), then verify it.
#
#   build  : build-essential pkg-config default-libmysqlclient-dev libsqlite3-dev libssl-dev
#   tools  : shellcheck openssl mariadb-client
#   SPICE  : qemu-system-x86_64 with SPICE + QXL (the real SPICE server),
#            spice-client-gtk (spicy-screenshot), SpiceClientGLib for /usr/bin/python3
#            (tests/peers/spice_probe.py), virt-viewer (remote-viewer), xvfb, x11-apps (xwd)
#   guests : nasm (assembles the key-echo boot sector tests/guests/keyecho.asm)
#   browser: chromium and chromium-driver (headless Chromium driven over WebDriver,
#            tests/src/browser.rs), spice-html5 (the browser SPICE client kerbside serves)
#   ryll   : the independent Rust SPICE client ryll (pinned, from PyPI) in its own venv
#            ${KERBSIDE_RYLL_VENV:-/var/tmp/kerbside-ryll-venv} (tests/integration/ryll.rs)
#
# Idempotent: when everything is present it only verifies (well under a second) and
# never runs `apt-get update`.
#
# QEMU quirk: some bookworm machines carry qemu-utils 10.x from bookworm-backports.
# That package Breaks qemu-system-common (<< 8.0), so installing bookworm's own
# qemu-system-x86 (7.2) would remove qemu-utils. In that case QEMU comes from
# bookworm-backports too, through a private apt source list derived from the Debian
# mirror the machine already uses; /etc/apt is left untouched.
#
# Usage: tools/install-test-deps.sh [--check]
#   --check   verify only; install nothing (exit 1 when something is missing)
set -euo pipefail

prog=install-test-deps
check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

export DEBIAN_FRONTEND=noninteractive
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
apt_get=("${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=900)
apt_install=("${apt_get[@]}" -y -qq --no-install-recommends install --no-remove)

# Packages taken from the distribution as they are.
base_pkgs=(
  build-essential pkg-config default-libmysqlclient-dev libsqlite3-dev libssl-dev
  shellcheck openssl mariadb-client
  spice-client-gtk gir1.2-spiceclientglib-2.0 python3-gi
  virt-viewer xvfb x11-apps xxd
  nasm python3-venv
  chromium chromium-driver spice-html5
)

# ryll, a SPICE client independent of spice-gtk, from PyPI (a prebuilt binary wheel).
ryll_version=0.3.0
ryll_venv="${KERBSIDE_RYLL_VENV:-/var/tmp/kerbside-ryll-venv}"

pkg_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# True when qemu-system-x86_64 exists, takes -spice password-secret= and has QXL.
qemu_ready() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local spice devices
  spice=$(qemu-system-x86_64 -spice help 2>&1 || true)
  devices=$(qemu-system-x86_64 -device help 2>&1 || true)
  [[ $spice == *password-secret* && $devices == *'"qxl"'* && $devices == *'"qxl-vga"'* ]]
}

python_gi_ready() {
  /usr/bin/python3 -c 'import gi; gi.require_version("SpiceClientGLib", "2.0"); from gi.repository import SpiceClientGLib' \
    >/dev/null 2>&1
}

# True when the ryll venv holds the pinned ryll and its binary runs.
ryll_ready() {
  [ -x "$ryll_venv/bin/ryll" ] || return 1
  [[ "$("$ryll_venv/bin/ryll" --version 2>/dev/null || true)" == "ryll $ryll_version "* ]]
}

install_ryll() {
  echo "$prog: installing ryll $ryll_version into $ryll_venv"
  [ -x "$ryll_venv/bin/pip" ] || /usr/bin/python3 -m venv "$ryll_venv"
  "$ryll_venv/bin/pip" install -q --disable-pip-version-check "ryll==$ryll_version"
}

# The first Debian mirror URI the machine already uses (deb822 or one-line format).
debian_mirror() {
  local uri=""
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources |
      grep -v -- '-security' | head -n 1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|ftp):/) { print $i; exit } }' \
      /etc/apt/sources.list | grep -v -- '-security' | head -n 1 || true)
  fi
  printf '%s' "$uri"
}

install_qemu() {
  local qemu_utils_version
  qemu_utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [[ $qemu_utils_version != *bpo12* ]]; then
    "${apt_install[@]}" qemu-system-x86
    return
  fi
  echo "$prog: qemu-utils $qemu_utils_version is from bookworm-backports; installing QEMU from there too"
  local mirror dir keyring=""
  mirror=$(debian_mirror)
  if [ -z "$mirror" ]; then
    echo "$prog: FAIL: no Debian mirror found in /etc/apt to derive bookworm-backports from" >&2
    return 1
  fi
  if [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    keyring=" [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
  fi
  dir=/var/cache/kerbside-test-apt
  "${sudo_cmd[@]}" mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  printf 'deb%s %s %s main\n' \
    "$keyring" "$mirror" bookworm \
    "$keyring" "$mirror" bookworm-updates \
    "$keyring" "$mirror" bookworm-backports |
    "${sudo_cmd[@]}" tee "$dir/sources.list" >/dev/null
  local private=(
    -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::lists=$dir/lists" -o "Dir::Cache::archives=$dir/archives"
  )
  "${apt_get[@]}" "${private[@]}" -qq update
  "${apt_install[@]}" "${private[@]}" -t bookworm-backports qemu-system-x86 qemu-system-modules-spice
}

# ---- install what is missing ------------------------------------------------
missing=()
for p in "${base_pkgs[@]}"; do
  pkg_installed "$p" || missing+=("$p")
done

if [ "$check_only" = 0 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$prog: installing ${missing[*]}"
    "${apt_get[@]}" -qq update
    "${apt_install[@]}" "${missing[@]}"
  fi
  if ! qemu_ready; then
    [ ${#missing[@]} -gt 0 ] || "${apt_get[@]}" -qq update
    install_qemu
  fi
  ryll_ready || install_ryll
fi

# ---- verify -------------------------------------------------------------------
failures=0
fail() {
  echo "$prog: FAIL: $*" >&2
  failures=$((failures + 1))
}
need_cmd() { # command, package
  command -v "$1" >/dev/null 2>&1 || fail "command '$1' not found (package $2)"
}

for p in "${base_pkgs[@]}"; do
  pkg_installed "$p" || fail "package $p is not installed"
done
need_cmd cc build-essential
need_cmd pkg-config pkg-config
pkg-config --exists mysqlclient 2>/dev/null || fail "pkg-config cannot find mysqlclient (package default-libmysqlclient-dev)"
pkg-config --exists sqlite3 2>/dev/null || fail "pkg-config cannot find sqlite3 (package libsqlite3-dev)"
pkg-config --exists openssl 2>/dev/null || fail "pkg-config cannot find openssl (package libssl-dev)"
need_cmd shellcheck shellcheck
need_cmd openssl openssl
need_cmd mariadb mariadb-client
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  fail "command 'qemu-system-x86_64' not found (package qemu-system-x86)"
elif ! qemu_ready; then
  fail "qemu-system-x86_64 lacks -spice password-secret= or the qxl device (need qemu-system-modules-spice)"
fi
need_cmd spicy-screenshot spice-client-gtk
need_cmd remote-viewer virt-viewer
need_cmd Xvfb xvfb
need_cmd xwd x11-apps
need_cmd xxd xxd
need_cmd nasm nasm
need_cmd chromium chromium
need_cmd chromedriver chromium-driver
[ -f /usr/share/spice-html5/spice_auto.html ] ||
  fail "/usr/share/spice-html5/spice_auto.html not found (package spice-html5)"
ryll_ready || fail "ryll $ryll_version not found in $ryll_venv (installed from PyPI by this script)"
python_gi_ready || fail "/usr/bin/python3 cannot load SpiceClientGLib 2.0 (packages gir1.2-spiceclientglib-2.0 python3-gi)"

if [ "$failures" -gt 0 ]; then
  echo "$prog: $failures problem(s); run tools/install-test-deps.sh as root" >&2
  exit 1
fi
echo "$prog: ready ($(qemu-system-x86_64 --version | head -n 1))"
