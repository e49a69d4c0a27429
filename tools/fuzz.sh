#!/bin/bash
# fuzz.sh: run every cargo-fuzz target of the SPICE parsers for SECONDS each (default 60).
#
# Installs cargo-fuzz from crates.io when missing. cargo-fuzz needs nightly-only rustc flags;
# on a stable toolchain RUSTC_BOOTSTRAP=1 allows them for this build only. The corpus is
# seeded from the real link-stage captures in kerbside-rs/spice/src/testdata/.
# KERBSIDE_FUZZ_TARGET_DIR moves the fuzz build directory (default fuzz/target).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

unhex() { grep -v '^#' "$1" | tr -d ' \n' | xxd -r -p; }
data=../kerbside-rs/spice/src/testdata
mkdir -p corpus/link_message corpus/link_reply corpus/framer
for f in "$data"/*c2s_link.hex; do unhex "$f" >"corpus/link_message/$(basename "$f" .hex)"; done
for f in "$data"/*s2c_reply.hex; do unhex "$f" >"corpus/link_reply/$(basename "$f" .hex)"; done
for f in "$data"/*result_data.hex; do unhex "$f" | tail -c +5 >"corpus/framer/$(basename "$f" .hex)"; done

export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR
target_args=()
if [ -n "${KERBSIDE_FUZZ_TARGET_DIR:-}" ]; then
  target_args=(--target-dir "$KERBSIDE_FUZZ_TARGET_DIR")
fi
for target in link_message link_reply framer; do
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run "${target_args[@]}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 12
  # A crash makes cargo fuzz exit non-zero; with pipefail this script fails with it.
done
echo "fuzzing: no crash in ${seconds}s per target"
