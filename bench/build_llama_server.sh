#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the same llama-cpp-python sdist the appliance uses, for
# bench/serve_bench.py's baseline. Cached; nothing is fetched beyond the sdist already in the cache
# (the web UI download is switched off). Prints the binary's path on the last line.
set -euo pipefail
CACHE="${SLM_APPLIANCE_CACHE:-$HOME/.cache/slm-appliance}"
SDIST="$CACHE/sdist/llama_cpp_python-0.3.36.tar.gz"
OUT="$CACHE/llama-server-0.3.36"
if [ -x "$OUT/bin/llama-server" ]; then echo "$OUT/bin/llama-server"; exit 0; fi
[ -f "$SDIST" ] || { echo "error: $SDIST missing: run make venv first (it caches the sdist)" >&2; exit 1; }
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT.tmp/bin" && cp "$WORK/build/bin/llama-server" "$OUT.tmp/bin/" && rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT/bin/llama-server"
