#!/bin/bash
# test.sh: install everything the tests need, then run every check and test of kerbside.
#
#   tools/test.sh            the whole suite (what CI runs)
#   tools/test.sh --quick    skip the fuzz run and the demo check
#
# Real services only: MariaDB on 127.0.0.1:3306 and RabbitMQ on 127.0.0.1:5672 must be
# running; QEMU and the SPICE clients are installed by tools/install-test-deps.sh, Keystone
# and the Nova API (from PyPI, started by the API tests) by tools/install-openstack.sh. A missing
# service or peer fails the run; nothing is skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = --quick ] && quick=1

# Each step prints how long the previous one took, and the run ends with the total.
started=$SECONDS
last=
step() {
  [ -z "$last" ] || printf '   (%d s)\n' $((SECONDS - last))
  last=$SECONDS
  printf '\n== %s\n' "$*"
}

step "installing test dependencies"
tools/install-test-deps.sh
tools/install-openstack.sh
tools/check-services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export KERBSIDE_TEST_REQUIRE="${KERBSIDE_TEST_REQUIRE:-mariadb,rabbitmq,qemu,spice-clients}"
export RUST_BACKTRACE=1

# The tests' output is long (each failing test prints its logs); when a test step fails, its
# panic messages are printed again at the end, where a reader of the run's tail finds them.
tests_log="$(mktemp -t kerbside-tests.XXXXXX)"
trap 'rm -f "$tests_log"' EXIT
tests() {
  if "$@" 2>&1 | tee -a "$tests_log"; then
    return 0
  fi
  printf '\n== why the tests failed (panic messages and errors, without log lines)\n'
  grep -a -E -A8 "panicked at|^Error: " "$tests_log" \
    | grep -a -v -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T|^ +[0-9]+: |^ +at |^stack backtrace:|^note: ' \
    | tail -n 120
  return 1
}

step "formatting"
cargo fmt --all -- --check

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' 'devstack/plugin.sh' 'devstack/settings' | sort -u)
shellcheck -x "${scripts[@]}"

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "documentation"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "build"
cargo build --workspace --locked --bins

step "tests"
tests cargo test --workspace --locked --no-fail-fast -- --test-threads="${KERBSIDE_TEST_THREADS:-4}"

step "real-client proxy tests again with one RSA ticket key per link ([proxy] ticket_key_uses = 1)"
KERBSIDE_TEST_TICKET_KEY_USES=1 tests cargo test -p kerbside-tests --test integration --locked -- \
  --test-threads="${KERBSIDE_TEST_THREADS:-4}" proxy:: peers:: readiness::

step "deployment tooling: DevStack plugin, Kolla images and kolla-ansible role"
KERBSIDE_MANAGE="$CARGO_TARGET_DIR/debug/kerbside-manage" tools/test-deploy.sh

if [ "$quick" = 0 ]; then
  step "fuzzing (short run)"
  tools/fuzz.sh 20

  step "demo: the README run command, up and down"
  tools/run-demo.sh --check
fi
printf '   (%d s)\n' $((SECONDS - last))
echo
echo "all checks passed in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
