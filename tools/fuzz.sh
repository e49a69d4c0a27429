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
mkdir -p corpus/link_message corpus/link_reply corpus/framer corpus/firewall corpus/agent_reassembly
for f in "$data"/*c2s_link.hex; do unhex "$f" >"corpus/link_message/$(basename "$f" .hex)"; done
for f in "$data"/*s2c_reply.hex; do unhex "$f" >"corpus/link_reply/$(basename "$f" .hex)"; done
for f in "$data"/*result_data.hex; do unhex "$f" | tail -c +5 >"corpus/framer/$(basename "$f" .hex)"; done
# firewall: 3 selector bytes (channel, direction/kind/mode/profile, segmentation seed) + stream.
{ printf '\x01\x01\x07'; unhex "$data/main_s2c_result_data.hex" | tail -c +5; } >corpus/firewall/main_s2c
{ printf '\x02\x01\x05'; unhex "$data/display_s2c_result_data.hex" | tail -c +5; } >corpus/firewall/display_s2c
# inputs client->server: a MOUSE_MOTION and a KEY_SCANCODE, view-only profile.
printf '\x03\x08\x03\x6f\x00\x0a\x00\x00\x00\x05\x00\x00\x00\xfd\xff\xff\xff\x00\x00\x68\x00\x01\x00\x00\x00\x1e' >corpus/firewall/inputs_c2s
# agent_reassembly: one 24-byte chunk (VDAgentMessage CLIPBOARD_GRAB, 4 data bytes).
printf '\x18\x00\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00' >corpus/agent_reassembly/grab

export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR
target_args=()
if [ -n "${KERBSIDE_FUZZ_TARGET_DIR:-}" ]; then
  target_args=(--target-dir "$KERBSIDE_FUZZ_TARGET_DIR")
fi
for target in link_message link_reply framer firewall agent_reassembly; do
  echo "fuzzing $target for ${seconds}s"
  log="$(mktemp)"
  if cargo fuzz run "${target_args[@]}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 12 "$log"
    rm -f "$log"
  else
    # A crash: show what libFuzzer said about it (the panic, the input, the artifact path).
    grep -v -e '^#[0-9]' -e '^INFO:' "$log" | tail -n 80
    for artifact in artifacts/"$target"/*; do
      [ -f "$artifact" ] || continue
      echo "crashing input $artifact:"
      xxd "$artifact" | head -n 40
    done
    rm -f "$log"
    exit 1
  fi
done
echo "fuzzing: no crash in ${seconds}s per target"
