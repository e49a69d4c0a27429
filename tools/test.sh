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

step() { printf '\n== %s\n' "$*"; }

step "installing test dependencies"
tools/install-test-deps.sh
tools/install-openstack.sh
tools/check-services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export KERBSIDE_TEST_REQUIRE="${KERBSIDE_TEST_REQUIRE:-mariadb,rabbitmq,qemu,spice-clients}"
export RUST_BACKTRACE=1

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
cargo test --workspace --locked --no-fail-fast -- --test-threads="${KERBSIDE_TEST_THREADS:-4}"

step "deployment tooling: DevStack plugin, Kolla images and kolla-ansible role"
KERBSIDE_MANAGE="$CARGO_TARGET_DIR/debug/kerbside-manage" tools/test-deploy.sh

if [ "$quick" = 0 ]; then
  step "fuzzing (short run)"
  tools/fuzz.sh 20

  step "demo: the README run command, up and down"
  tools/run-demo.sh --check
fi
echo
echo "all checks passed"
