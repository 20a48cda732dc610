#!/usr/bin/env bash
# Runs one fuzz target, coverage-guided, for SECONDS (default 60):
#   bash fuzz/run.sh client_hello 600
# cargo-fuzz needs nightly compiler features; the stable toolchain gives
# them with RUSTC_BOOTSTRAP=1. It starts from the committed seeds in
# fuzz/corpus/TARGET and writes what it finds to fuzz/work/TARGET (not
# committed; `cargo fuzz cmin` it before adding any to the seeds); crashes
# go to fuzz/artifacts/TARGET, and each becomes a regression case.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
secs=${2:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p "corpus/$target" "work/$target"
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "work/$target" "corpus/$target" -- \
  -max_total_time="$secs" -max_len=20000 -print_final_stats=1
