#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment, offline apart from PyPI.
#
#   bash scripts/setup_env.sh [VENV]        (the Makefile calls this; VENV defaults to .venv)
#
# 1. Every package comes from requirements.lock (the whole resolved CPU stack, sha256-pinned;
#    regenerate it with scripts/lock.sh), installed with --require-hashes --no-deps: two fresh
#    machines get the same bytes. torch is the CPU wheel 2.13.0+cpu from pip's find-links.
# 2. llama-cpp-python is compiled from its PyPI sdist (sha256 pinned below) with
#    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" (the native build enables AMX kernels that
#    die with "Illegal instruction" on some CPUs; the multimodal mtmd library is not used here),
#    after scripts/patch_llama_cpp.py has added per-sequence LoRA routing to its vendored
#    llama.cpp and turned off llama.cpp's unused common library (74 of 178 compile units left).
#    The wheel is kept in a cache folder named after the flags and the patch, so a second venv,
#    or CI on the same machine, reuses it.
# 3. The project itself, editable and with --no-deps (everything it needs is in the lock).
# 4. llama.cpp's converters (convert_hf_to_gguf.py + conversion/ + gguf-py/,
#    convert_lora_to_gguf.py) are taken from that same sdist into $VENV/share/slm-appliance/llama.cpp.
# Nothing is cloned or fetched from anywhere but the package registry. The gpu extra (unsloth) is
# not installed here (see scripts/gpu_check.sh).
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_PYTHON_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
CACHE=${SLM_APPLIANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-appliance}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.slm-appliance-installed"
# re-install when any input of the environment changes
want=$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" "$LOCK" "$ROOT/scripts/hatch_build.py" \
  "$ROOT/scripts/patch_llama_cpp.py" \
  | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
log() { printf '[setup] %s\n' "$*" >&2; }

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

sdist_dir="$CACHE/sdist"
sdist="$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
  mkdir -p "$sdist_dir"
  $PIP download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$sdist_dir"
fi
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$got" != "$LLAMA_CPP_PYTHON_SDIST_SHA256" ]; then
  log "error: $sdist has sha256 $got, expected $LLAMA_CPP_PYTHON_SDIST_SHA256; delete it to download it again"
  exit 1
fi

# the folder is named after the build: flags and patch (appliance/bundle/build.py computes the same)
build_id=$( { printf '%s\n' "$LLAMA_CMAKE_ARGS"; cat "$ROOT/scripts/patch_llama_cpp.py"; } | sha256sum | cut -c1-8)
wheel_dir="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$build_id"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "compiling llama-cpp-python with CMAKE_ARGS=$LLAMA_CMAKE_ARGS and the LoRA routing patch (about 2 minutes on 2 cores, longer under load)"
  src=$(mktemp -d)
  tar -xzf "$sdist" -C "$src"
  "$VENV/bin/python" "$ROOT/scripts/patch_llama_cpp.py" "$src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  rm -rf "$wheel_dir.partial" && mkdir -p "$wheel_dir.partial"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    $PIP wheel --no-deps --no-cache-dir "$src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" -w "$wheel_dir.partial"
  rm -rf "$src" "$wheel_dir" && mv "$wheel_dir.partial" "$wheel_dir"
fi

log "installing the locked stack ($(grep -c '^[A-Za-z0-9]' "$LOCK") packages, torch 2.13.0+cpu) from requirements.lock"
$PIP install --quiet --require-hashes --no-deps -r "$LOCK"
log "installing llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from the wheel built from the verified sdist"
# forced: a venv holding an earlier build of the same version (unpatched, other flags) gets this one
$PIP install --quiet --no-deps --no-index --force-reinstall "$wheel_dir"/llama_cpp_python-*.whl
log "installing slm-appliance (editable)"
# hatchling (the build backend) and editables are in the lock: no unpinned build environment
$PIP install --quiet --no-deps --no-build-isolation -e "$ROOT"
$PIP check >&2

tools="$VENV/share/slm-appliance/llama.cpp"
log "unpacking llama.cpp converters into $tools"
tmp=$(mktemp -d)
prefix="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
tar -xzf "$sdist" -C "$tmp" "$prefix/convert_hf_to_gguf.py" "$prefix/convert_lora_to_gguf.py" \
  "$prefix/conversion" "$prefix/gguf-py" "$prefix/models" "$prefix/LICENSE"
rm -rf "$tools" && mkdir -p "$(dirname "$tools")"
mv "$tmp/$prefix" "$tools"
rm -rf "$tmp"
printf '%s\n' "$LLAMA_CPP_PYTHON_VERSION" > "$tools/VERSION"

echo "$want" > "$STAMP"
log "environment ready in $VENV"
