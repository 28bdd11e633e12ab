"""fusedopt: fused, SIMD-vectorised, OpenMP-parallel optimizer steps over NumPy arrays.

    >>> opt = fusedopt.Adam([w1, w2], lr=1e-3)
    >>> opt.step([g1, g2])          # w1, w2 and the state updated in place

    >>> fusedopt.save("run.npz", opt)   # a checkpoint: see ``fusedopt.checkpoint``

See ``fusedopt.functional`` for stateless kernels and ``fusedopt.reference``
for the NumPy oracle.
"""

import importlib.metadata

from . import _core, optimizers
from ._config import cpu_features, get_num_threads, set_num_threads, show_config, threads
from .optimizer import Optimizer
from .optimizers import *  # noqa: F403  (every rule's class: optimizers.__all__)
from .optimizers import Adam8bit, AdamW8bit, Lion8bit, SGD8bit
from .rule import NonFiniteGradError
from . import checkpoint, distributed, functional, lr_scheduler, reference, schedules
from .checkpoint import load, save
from .functional import clip_grad_norm_, clip_grad_value_, get_total_norm

try:
    __version__ = importlib.metadata.version("fusedopt")
except importlib.metadata.PackageNotFoundError:  # a source tree run in place: the core's own
    __version__ = _core.build_info()["version"]

__all__ = [
    "Optimizer", *optimizers.__all__, *optimizers.EIGHT_BIT,
    "NonFiniteGradError", "clip_grad_norm_", "clip_grad_value_", "get_total_norm",
    "functional", "reference", "checkpoint", "save", "load", "lr_scheduler", "schedules", "distributed",
    "cpu_features", "show_config", "get_num_threads", "set_num_threads", "threads",
    "__version__",
]
