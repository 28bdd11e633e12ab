"""What the package says about itself: its version, the command line's
--version, and the type information it ships."""

import importlib.metadata
import pathlib
import subprocess
import sys

import fusedopt


def test_version_comes_from_the_distribution_and_matches_the_core():
    assert fusedopt.__version__ == importlib.metadata.version("fusedopt")
    assert fusedopt.__version__ == fusedopt.cpu_features()["version"]


def test_python_m_fusedopt_version():
    result = subprocess.run([sys.executable, "-m", "fusedopt", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fusedopt {fusedopt.__version__}\n"


def test_type_checkers_are_told_the_package_is_typed():
    assert (pathlib.Path(fusedopt.__file__).parent / "py.typed").is_file()
