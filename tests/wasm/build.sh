#!/usr/bin/env bash
# Builds the proxy-wasm filters Strait's tests run into out/ (committed):
# AssemblyScript ones with @gcoredev/proxy-wasm-sdk-as 1.2.3 and
# assemblyscript 0.28.20 (pinned in package.json / package-lock.json), and a
# C one with clang --target=wasm32. With --check, builds into a temporary
# directory and fails if any module differs from the committed one.
set -euo pipefail
cd "$(dirname "$0")"

check=0
[ "${1:-}" = "--check" ] && check=1
out=out
if [ "$check" = 1 ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

need() { command -v "$1" >/dev/null || { echo "build.sh: $1 is needed ($2)" >&2; exit 1; }; }
need npm "apt-get install npm"
need clang "apt-get install clang lld"
need wasm-ld "apt-get install lld"

[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
asc=./node_modules/.bin/asc

# Built without WASI (the SDK's log goes to proxy_log through aslib/).
for f in transform waitnl closeon shared gate passthrough; do
  "$asc" "assembly/$f.ts" --config asconfig.json --target release -o "$out/$f.wasm"
done
# Built as the SDK documents it: with the WASI shim (log() writes to stdout).
"$asc" assembly/props.ts --config asconfig.wasi.json --target release -o "$out/props.wasm"
clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export-dynamic -o "$out/count.wasm" c/count.c

if [ "$check" = 1 ]; then
  status=0
  for m in "$out"/*.wasm; do
    name=$(basename "$m")
    if ! cmp -s "$m" "out/$name"; then
      echo "tests/wasm/out/$name does not match its source: run tests/wasm/build.sh and commit" >&2
      status=1
    fi
  done
  for m in out/*.wasm; do
    [ -e "$out/$(basename "$m")" ] || { echo "tests/wasm/$m has no source" >&2; status=1; }
  done
  [ "$status" = 0 ] && echo "test filters match their sources"
  exit "$status"
fi
echo "built: $(ls out | tr '\n' ' ')"
