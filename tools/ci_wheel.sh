#!/usr/bin/env bash
# tools/ci_wheel.sh: the release wheel, checked the way a user gets it (.ci/run
# calls this after the main suite; about 10 minutes).
#   1. tools/build_wheel.sh builds the sdist and the repaired wheel;
#   2. auditwheel show must tag the wheel manylinux_2_17_x86_64;
#   3. a fresh venv (no system site-packages) installs the wheel and the test
#      extra with --only-binary :all: (no build backend comes in);
#   4. the suite runs from a copy of tests/ against the installed wheel, then
#      tools/check_wheel.py checks the bundled libomp beside torch's libgomp.
# PYTHON (default python3) is the CPython the wheel is built for.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
EXPECTED_TAG=manylinux_2_17_x86_64
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusedopt-ci-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

bash "$ROOT/tools/build_wheel.sh" "$WORK/dist"
wheels=("$WORK"/dist/*.whl)
if [[ ${#wheels[@]} -ne 1 ]]; then
  echo "expected one wheel, got: ${wheels[*]}" >&2
  exit 1
fi
WHEEL=${wheels[0]}

echo "== the tag auditwheel gives $(basename "$WHEEL")"
"$PYTHON" -m venv "$WORK/audit"
"$WORK/audit/bin/python" -m pip install --quiet "auditwheel==6.8.2"
shown=$("$WORK/audit/bin/auditwheel" show "$WHEEL" 2>/dev/null | tr -s ' \n' ' ')
echo "$shown"
if [[ $shown != *"consistent with the following platform tag: \"$EXPECTED_TAG\""* ]]; then
  echo "FAILED: auditwheel does not tag the wheel $EXPECTED_TAG" >&2
  exit 1
fi

echo "== every file of python/fusedopt is in the wheel (stubs, py.typed, loops.pyx)"
"$PYTHON" - "$ROOT/python" "$WHEEL" <<'EOF'
import pathlib, sys, zipfile
source, wheel = pathlib.Path(sys.argv[1]), sys.argv[2]
wanted = {path.relative_to(source).as_posix() for path in (source / "fusedopt").rglob("*")
          if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so"}
missing = sorted(wanted - set(zipfile.ZipFile(wheel).namelist()))
assert not missing, f"not in the wheel: {missing}"
print(len(wanted), "files, among them", ", ".join(sorted(w for w in wanted if not w.endswith(".py"))))
EOF

echo "== a fresh venv with the wheel and the test extra, binaries only"
VENV="$WORK/venv"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --only-binary :all: "$WHEEL[test]"
if "$VENV/bin/python" -c "import scikit_build_core" 2>/dev/null; then
  echo "FAILED: a build backend was installed: the wheel was not used as it is" >&2
  exit 1
fi

echo "== the suite, from a copy of tests/, against the installed wheel"
# The tests run examples/ and benchmarks/ beside them and the README's
# snippets; pyproject.toml carries pytest's settings. No python/ here, so
# only the venv's fusedopt can import.
SUITE="$WORK/suite"
mkdir "$SUITE"
cp -r "$ROOT/tests" "$ROOT/examples" "$ROOT/benchmarks" "$ROOT/pyproject.toml" "$ROOT/README.md" "$SUITE"/
cd "$SUITE"
"$VENV/bin/python" - "$VENV" <<'EOF'
import sys, fusedopt
venv = sys.argv[1]
assert fusedopt.__file__.startswith(venv + "/"), f"fusedopt imports from {fusedopt.__file__}, not {venv}"
print("fusedopt", fusedopt.__version__, "from", fusedopt.__file__)
fusedopt.show_config()
EOF
"$VENV/bin/python" -m pytest -p no:cacheprovider
"$VENV/bin/python" "$ROOT/tools/check_wheel.py"
