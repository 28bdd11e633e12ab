#!/usr/bin/env bash
# The suite under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Builds the extension with -fsanitize=address,undefined into its own venv
# and build directory (the normal install is left alone), then runs the
# tests with a stock python and libasan/libstdc++ preloaded. Any finding
# stops the run with a report and a non-zero exit: the job must be clean.
#
#     tools/sanitize.sh                 # the default subset below
#     tools/sanitize.sh tests/test_state.py -k adam    # or any pytest arguments
#
# FUSEDOPT_SANITIZE_DIR (default /tmp/fusedopt-sanitize) holds the venv and
# the build. The venv sees the interpreter's site-packages (numpy, torch,
# pytest...: what `pip install ".[test]"` brought); its own fusedopt shadows
# any installed one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${FUSEDOPT_SANITIZE_DIR:-/tmp/fusedopt-sanitize}
PYTHON=${PYTHON:-python}  # the interpreter .ci/run installed the test extra into
VENV=$DIR/venv
SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

"$PYTHON" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.13"
"$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps --force-reinstall "$ROOT" \
    -Cbuild-dir="$DIR/build" -Ccmake.define.CMAKE_CXX_FLAGS="$SANITIZE"

# The runtimes first in the process: python itself is not built with ASan, so
# libasan must be loaded before anything else; libstdc++ with it so that
# ASan's operator new/delete interceptors see every C++ allocation.
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
cd "$DIR"  # the venv's fusedopt, never the source tree's
CORE=$("$VENV/bin/python" -c "import fusedopt._core as c; print(c.__file__)" 2>/dev/null \
       || LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 \
          "$VENV/bin/python" -c "import fusedopt._core as c; print(c.__file__)")
case "$CORE" in "$VENV"/*) ;; *) echo "sanitize.sh: imported $CORE, not the venv's build" >&2; exit 1 ;; esac
# (Through a file: with pipefail, `ldd | grep -q` fails when grep stops reading early.)
ldd "$CORE" > "$DIR/ldd.txt"
grep -q libasan "$DIR/ldd.txt" || { echo "sanitize.sh: $CORE is not linked with libasan" >&2; exit 1; }
cd "$ROOT"

# The default subset: every file that drives the C++ core. Left out:
# test_bench.py and test_examples.py (they build Cython baselines or run
# whole examples: minutes under ASan for no code of the core not already
# covered) and test_large.py (8.5 GB resident; ASan's shadow memory would
# double it).
DEFAULT_TESTS=(
  tests/test_hardening.py tests/test_properties.py tests/test_bad_input.py tests/test_against_reference.py
  tests/test_state.py tests/test_state_dict.py tests/test_checkpoint.py tests/test_nonfinite.py
  tests/test_clip.py tests/test_determinism.py tests/test_functional.py tests/test_rules.py
  tests/test_runtime.py tests/test_lr_scheduler.py tests/test_schedules.py tests/test_package.py
  tests/test_table.py tests/test_against_torch.py tests/test_torch_adapter.py tests/test_precision.py
  tests/test_packaging.py tests/test_quantized.py tests/test_torch_8bit.py tests/test_step_cache.py
  tests/test_step_entry.py
)
if [ $# -eq 0 ]; then set -- "${DEFAULT_TESTS[@]}"; fi

# PYTHONMALLOC=malloc: every Python allocation through ASan's malloc too.
# detect_leaks=0: CPython and torch keep interned objects and caches alive
# until exit by design; LeakSanitizer reports them as leaks.
export LD_PRELOAD="$PRELOAD" PYTHONMALLOC=malloc
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
