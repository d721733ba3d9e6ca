#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs beyond a CUDA machine's stock torch stack into one tarball
# small enough to travel to a lent GPU machine (its working tree is capped at 64 MiB):
#
#     bash scripts/gpu_site.sh OUT.tar.xz        (about 10 MB; here, with pip and PyPI)
#     bash scripts/gpu_check.sh OUT.tar.xz       (there: unpacked into /tmp/site, first on PYTHONPATH)
#
# The wheels are the project's pins (requirements.lock, the gpu extra) for CPython 3.12 on
# manylinux x86_64, installed with --no-deps into a folder, then trimmed: unsloth's wheel carries
# its web "studio" (82 MB unpacked, not imported by `import unsloth`) and bitsandbytes one kernel
# library per CUDA/ROCm/XPU release (only the CUDA 13 ones are kept: the device's torch is cu130).
# Assumes the device already has torch, torchvision, triton, transformers 5.17, accelerate, pyarrow,
# pandas, xxhash, typer and rich (KINDS.md lists its image; this is what it lacked on 2026-12-05).
# xformers, torchao and cut_cross_entropy are optional for unsloth and left out.
set -euo pipefail
out=$(realpath -m "${1:?usage: gpu_site.sh OUT.tar.xz}")
pins=(unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 trl==1.14.2 datasets==4.8.5
      dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 fsspec==2026.2.0 pydantic==2.14.4
      pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)
platforms=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_28_x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$work/whl" "${pins[@]}"
python3 -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --target "$work/site" "$work"/whl/*.whl
rm -rf "$work/site/studio" "$work/site/unsloth_cli" "$work/site/bin"
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda13*.so' \
  ! -name 'libbitsandbytes_cpu.so' -delete
tar -C "$work/site" -cJf "$out.tmp" . && mv "$out.tmp" "$out"
echo "$out ($(du -h "$out" | cut -f1))" >&2
