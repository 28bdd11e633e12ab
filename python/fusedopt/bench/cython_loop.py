"""The plain compiled loop: loops.pyx, built on first use with Cython.

Built once per source, compiler flags, Cython and Python version into the
user's cache (``$FUSEDOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fusedopt``,
else ``~/.cache/fusedopt``), in a subprocess so the compiler's output stays
out of the benchmark's. Needs Cython, setuptools and a C compiler (the
``bench`` extra installs the first two).

The flags are plain ``-O2``: no ``-march``, no OpenMP, no SIMD pragmas, so
the loop is what a user gets from writing the rule once in a compiled
language. ``-ffp-contract=off`` only keeps the rounding the reference's (it
matters where FMA is in the baseline ISA, e.g. AArch64).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from .baselines import Update, nadam_step_sizes, optimizer_class, radam_step_size

__all__ = ["BuildError", "load", "cython_class", "CYTHON_UPDATES", "COMPILE_ARGS", "cache_dir"]

SOURCE = Path(__file__).with_name("loops.pyx")
COMPILE_ARGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]


class BuildError(RuntimeError):
    """The loop could not be built here (no Cython, no compiler, ...)."""


def cache_dir() -> Path:
    if os.environ.get("FUSEDOPT_CACHE_DIR"):
        return Path(os.environ["FUSEDOPT_CACHE_DIR"]) / "bench"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusedopt" / "bench"


def _module_name() -> str:
    try:
        import Cython
    except ImportError as error:
        raise BuildError("Cython is not installed (pip install 'fusedopt[bench]')") from error
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), repr(COMPILE_ARGS).encode(), Cython.__version__.encode(),
                 sys.version.encode(), str(sysconfig.get_config_var("EXT_SUFFIX")).encode()):
        key.update(part)
    return f"_fusedopt_loops_{key.hexdigest()[:16]}"


_loaded: ModuleType | None = None


def load() -> ModuleType:
    """The compiled loops, built first if this machine has not built them yet."""
    global _loaded
    if _loaded is not None:
        return _loaded
    name = _module_name()
    path = cache_dir() / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    if not path.exists():
        _build(name, path)
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    _loaded = module
    return module


def _build(name: str, path: Path) -> None:
    """Compile in a scratch directory, then move the module into place (atomic,
    so concurrent runs never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=path.parent))
    try:
        shutil.copyfile(SOURCE, scratch / f"{name}.pyx")
        result = subprocess.run(
            [sys.executable, "-c", _BUILD_SCRIPT, str(scratch), name, *COMPILE_ARGS],
            capture_output=True, text=True, cwd=scratch,
        )
        built = list(scratch.glob(name + "*" + sysconfig.get_config_var("EXT_SUFFIX")))
        if result.returncode != 0 or not built:
            log = (result.stdout + result.stderr).strip().splitlines()
            raise BuildError("building the Cython loop failed:\n    " + "\n    ".join(log[-15:]))
        os.replace(built[0], path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# Run as `python -c SCRIPT scratch_dir module_name compile_args...`.
_BUILD_SCRIPT = """
import sys
from Cython.Build import cythonize
from setuptools import Distribution, Extension

scratch, name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
extension = Extension(name, [f"{scratch}/{name}.pyx"], extra_compile_args=args)
distribution = Distribution({"name": name, "ext_modules": cythonize([extension], quiet=True)})
command = distribution.get_command_obj("build_ext")
command.build_lib = command.build_temp = scratch
command.ensure_finalized()
command.run()
"""


# ------------------------------------------------ the rules on the loops
# Python's side of each loop: the per-step scalars, computed in double as
# the reference computes them.

def _flat(a):
    return a.reshape(-1)  # a view: params are C-contiguous


def _momentum(self, w, g, state, scratch, *, lr, momentum, **_):
    load().momentum(_flat(w), _flat(g), _flat(state["velocity"]), lr, momentum)


def _sgd(self, w, g, state, scratch, *, lr, momentum, dampening, weight_decay, nesterov, maximize, **_):
    if momentum == 0:
        load().sgd(_flat(w), _flat(g), lr, weight_decay, maximize)
        return
    b = state.get("momentum_buffer")
    if b is None:
        b = state["momentum_buffer"] = w * 0
    load().sgd_momentum(_flat(w), _flat(g), _flat(b), lr, momentum, dampening, weight_decay,
                        nesterov, maximize, state["step"] == 1)


def _adadelta(self, w, g, state, scratch, *, lr, rho, eps, weight_decay, maximize, scale, **_):
    by_weights = scale == "weights"
    scale_avg = state["square_weight_avg" if by_weights else "acc_delta"]
    load().adadelta(_flat(w), _flat(g), _flat(state["square_avg"]), _flat(scale_avg), lr, rho, eps,
                    weight_decay, maximize, by_weights)


def _weight_decay_terms(lr, weight_decay, decoupled_weight_decay):
    """(coupled decay, decoupled factor 1 - lr wd): one of them a no-op."""
    if decoupled_weight_decay:
        return 0.0, 1 - lr * weight_decay
    return weight_decay, 1.0


def _adam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, amsgrad, maximize,
          decoupled_weight_decay, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    t = state["step"]
    v = state["exp_avg_sq"]
    v_max = state["max_exp_avg_sq"] if amsgrad else v
    coupled, decay_factor = _weight_decay_terms(lr, weight_decay, decoupled_weight_decay)
    load().adam(_flat(w), _flat(g), _flat(state["exp_avg"]), _flat(v), _flat(v_max), beta1, beta2, eps,
                coupled, decay_factor, lr / (1 - beta1**t), math.sqrt(1 - beta2**t), maximize, amsgrad)


def _rmsprop(self, w, g, state, scratch, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, **_):
    square_avg = state["square_avg"]
    b = state["momentum_buffer"] if momentum > 0 else square_avg
    grad_avg = state["grad_avg"] if centered else square_avg
    load().rmsprop(_flat(w), _flat(g), _flat(square_avg), _flat(b), _flat(grad_avg), lr, alpha, eps, weight_decay,
                   momentum, maximize, momentum > 0, centered)


def _adagrad(self, w, g, state, scratch, *, lr, lr_decay, weight_decay, eps, maximize, **_):
    step_size = lr / (1 + (state["step"] - 1) * lr_decay)
    load().adagrad(_flat(w), _flat(g), _flat(state["sum"]), step_size, eps, weight_decay, maximize)


def _nadam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
           maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    grad_step, momentum_step = nadam_step_sizes(state, lr=lr, beta1=beta1, momentum_decay=momentum_decay)
    coupled, decay_factor = _weight_decay_terms(lr, weight_decay, decoupled_weight_decay)
    load().nadam(_flat(w), _flat(g), _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]), beta1, beta2, eps,
                 coupled, decay_factor, 1 - beta2 ** state["step"], grad_step, momentum_step, maximize)


def _radam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    rectified, step_size = radam_step_size(state["step"], lr=lr, beta1=beta1, beta2=beta2)
    coupled, decay_factor = _weight_decay_terms(lr, weight_decay, decoupled_weight_decay)
    load().radam(_flat(w), _flat(g), _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]), beta1, beta2, eps,
                 coupled, decay_factor, step_size, maximize, rectified)


def _adamax(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    load().adamax(_flat(w), _flat(g), _flat(state["exp_avg"]), _flat(state["exp_inf"]), beta1, beta2, eps,
                  weight_decay, lr / (1 - beta1 ** state["step"]), maximize)


def _lion(self, w, g, state, scratch, *, lr, betas, weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    load().lion(_flat(w), _flat(g), _flat(state["exp_avg"]), lr, beta1, beta2, 1 - lr * weight_decay, maximize)


CYTHON_UPDATES: dict[str, Update] = {
    "Momentum": _momentum,
    "SGD": _sgd,
    "Adadelta": _adadelta,
    "Adam": _adam,
    "AdamW": _adam,
    "RMSprop": _rmsprop,
    "Adagrad": _adagrad,
    "NAdam": _nadam,
    "RAdam": _radam,
    "Adamax": _adamax,
    "Lion": _lion,
}


def cython_class(name: str) -> type | None:
    return optimizer_class(name, CYTHON_UPDATES, "CythonLoop")
