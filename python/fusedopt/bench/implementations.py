"""Everything the benchmark compares, behind one interface.

An implementation says whether it can run a rule here (``unavailable``
returns the reason it cannot) and, given params and grads, prepares a
step: a callable that does one optimizer step over all params, with its
threads and SIMD target set for as long as the ``prepared`` context lasts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

import fusedopt
from fusedopt import _core

from .baselines import tuned_numpy_class
from .rules import BenchRule

__all__ = ["Implementation", "FAMILIES", "FAMILY_KEYS", "make"]

Step = Callable[[], object]

# The roof kernel (csrc/kernels.cpp) handles a param, its grad and up to
# three state arrays.
ROOF_MAX_STREAMS = 5


@dataclass(frozen=True)
class Implementation:
    family: str = ""
    threads: int = 1
    target: str | None = None

    # What the family is, for the legend and the JSON.
    description = ""

    @property
    def label(self) -> str:
        parts = [self.family]
        if self.target:
            parts.append(self.target)
        return " ".join(parts) + f" {self.threads}t"

    def unavailable(self, rule: BenchRule) -> str | None:
        """Why this cannot run ``rule`` here, or None if it can."""
        return None

    @contextlib.contextmanager
    def prepared(self, rule: BenchRule, params: list[np.ndarray], grads: list[np.ndarray]) -> Iterator[Step]:
        raise NotImplementedError
        yield


@contextlib.contextmanager
def _on_target(target: str) -> Iterator[None]:
    chosen = fusedopt.cpu_features()["isa"]
    _core.select_target(target)
    try:
        yield
    finally:
        _core.select_target(chosen)


class Fusedopt(Implementation):
    description = "fusedopt's optimizer: opt.step(grads), one call into C++"

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        with _on_target(self.target), fusedopt.threads(self.threads):
            optimizer = getattr(fusedopt, rule.optimizer)(params, **rule.kwargs)
            yield functools.partial(optimizer.step, grads)


class Roof(Implementation):
    """Always on fusedopt's best target, so the label leaves the target out."""

    description = ("the memory roof: a kernel in fusedopt's core with the rule's streams and "
                   "trivial arithmetic (w and each state array += g, in place)")

    @property
    def label(self):
        return f"roof {self.threads}t"

    def unavailable(self, rule):
        if rule.streams > ROOF_MAX_STREAMS:
            return f"the roof kernel has at most {ROOF_MAX_STREAMS} streams, {rule.key} has {rule.streams}"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        states = len(rule.state_keys)
        tensors = [[p, *(np.zeros_like(p) for _ in range(states)), g] for p, g in zip(params, grads)]
        with _on_target(self.target), fusedopt.threads(self.threads):
            yield functools.partial(_core.roof, tensors)


class NumpyReference(Implementation):
    description = "fusedopt.reference: NumPy written the way a user writes it, one expression per line"

    @property
    def label(self):
        return "numpy"

    def unavailable(self, rule):
        if not hasattr(fusedopt.reference, rule.optimizer):
            return f"fusedopt.reference has no {rule.optimizer}"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        optimizer = getattr(fusedopt.reference, rule.optimizer)(params, **rule.kwargs)
        yield functools.partial(optimizer.step, grads)


class NumpyTuned(Implementation):
    description = "NumPy tuned by hand: in-place out= operations and scratch buffers, no temporaries"

    @property
    def label(self):
        return "numpy tuned"

    def unavailable(self, rule):
        if tuned_numpy_class(rule.optimizer) is None:
            return f"no tuned NumPy update is written for {rule.optimizer} (fusedopt/bench/baselines.py)"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        optimizer = tuned_numpy_class(rule.optimizer)(params, **rule.kwargs)
        yield functools.partial(optimizer.step, grads)


class CythonLoop(Implementation):
    description = "a plain compiled loop: the rule as one pass in Cython, -O2, no SIMD pragmas, no threads"

    @property
    def label(self):
        return "cython loop"

    def unavailable(self, rule):
        from . import cython_loop
        if cython_loop.cython_class(rule.optimizer) is None:
            return f"no Cython loop is written for {rule.optimizer} (fusedopt/bench/loops.pyx)"
        try:
            cython_loop.load()
        except cython_loop.BuildError as error:
            return str(error)
        return None

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        from . import cython_loop
        optimizer = cython_loop.cython_class(rule.optimizer)(params, **rule.kwargs)
        yield functools.partial(optimizer.step, grads)


class Torch(Implementation):
    """torch.optim on tensors that share the NumPy arrays' memory, grads already in ``p.grad``."""

    flavours = {"torch for": {"foreach": False}, "torch foreach": {"foreach": True}, "torch fused": {"fused": True}}
    description = "torch.optim's step(): for-loop (foreach=False), foreach=True, fused=True"

    def unavailable(self, rule):
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if rule.torch is None:
            return f"torch.optim has no counterpart of {rule.describe()}"
        name = rule.torch[0]
        optimizer_class = getattr(torch.optim, name, None)
        if optimizer_class is None:
            return f"this torch {torch.__version__} has no torch.optim.{name}"
        for option in self.flavours[self.family]:
            if option not in inspect.signature(optimizer_class).parameters:
                return f"torch.optim.{name} has no {option}= implementation"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, params, grads):
        import torch
        name, kwargs = rule.torch
        tensors = [torch.from_numpy(p) for p in params]
        for tensor, grad in zip(tensors, grads):
            tensor.grad = torch.from_numpy(grad)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            optimizer = getattr(torch.optim, name)(tensors, **kwargs, **self.flavours[self.family])
            yield optimizer.step
        finally:
            torch.set_num_threads(previous)


# Families in the order of the table; the torch ones in increasing speed.
FAMILIES: dict[str, type[Implementation]] = {
    "roof": Roof,
    "fusedopt": Fusedopt,
    "numpy": NumpyReference,
    "numpy tuned": NumpyTuned,
    "cython loop": CythonLoop,
    "torch for": Torch,
    "torch foreach": Torch,
    "torch fused": Torch,
}

# The short names the command line accepts.
FAMILY_KEYS = {family.replace(" ", "-"): family for family in FAMILIES}


def make(family: str, threads: int = 1, target: str | None = None) -> Implementation:
    return FAMILIES[family](family, threads, target)
