#!/bin/sh
# Install (or upgrade, or --uninstall) the SLM Appliance from this bundle, with no network.
#
#   sh install.sh --pubkey site-bundle.pub [--prefix /opt/slm-appliance] [--workspace DIR]
#   sh install.sh --fingerprint HEX        (first install: trust bundle-key.pub if its sha256 is HEX)
#   sh install.sh [--prefix DIR]           (later installs: the key pinned at the first one is used)
#   sh install.sh --uninstall [--prefix DIR]
#   sh install.sh --python /usr/bin/python3.11 ...   (which interpreter; default python3.11, then python3)
#
# This script only finds a Python 3.11 and hands over to installer/install.py (standard library
# only), which verifies the signature and every file's sha256 before it changes anything, then
# installs from the wheelhouse, places models and artefacts, runs the self-test and commits or
# rolls back. See README.md beside this file.
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
python=
prev=
for arg in "$@"; do
  if [ "$prev" = "--python" ]; then python=$arg; fi
  prev=$arg
done
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$(command -v "$candidate"); break; fi
  done
fi
if [ -z "$python" ]; then
  echo "error: no python3 found; this bundle needs CPython 3.11 (give it with --python PATH)" >&2
  exit 1
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)
if [ "$version" != "3.11" ]; then
  echo "error: $python is Python $version; this bundle's wheelhouse is built for CPython 3.11 (cp311 wheels:" >&2
  echo "       torch, numpy, pyarrow, ...). Install python3.11 (e.g. the distribution's or deadsnakes' package)" >&2
  echo "       and run: sh $0 --python /path/to/python3.11 ...   (README.md: Which Python)" >&2
  exit 1
fi
# drop --python VALUE; install.py does not take it
n=$#
skip=0
i=0
for arg in "$@"; do
  i=$((i + 1))
  if [ $skip = 1 ]; then skip=0; continue; fi
  if [ "$arg" = "--python" ]; then skip=1; continue; fi
  set -- "$@" "$arg"
done
shift "$n"
exec "$python" -I -B "$here/installer/install.py" --python-name "$python" "$@"
