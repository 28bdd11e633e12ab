"""Everything the benchmark compares, behind one interface.

An implementation says whether it can run a rule here (``unavailable``
returns the reason it cannot) and, given a precision mode (precisions.py),
params and grad sets, prepares a step: a callable that does one optimizer
step over all params, with the grad sets in turn (see
``workloads.grad_sets``), with its threads and SIMD target set for as long
as the ``prepared`` context lasts. ``refuses`` says why it cannot run a
precision mode (None if it can). A peer that finds it cannot run an array
raises ``Unsupported`` in ``prepared``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import hashlib
import inspect
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt.precision import bfloat16

from .baselines import tuned_numpy_class
from .precisions import Precision, unsigned_view
from .rules import BenchRule

__all__ = ["Implementation", "Unsupported", "FAMILIES", "FAMILY_KEYS", "PEERS", "make"]

Step = Callable[[], object]
GradSets = Sequence[list[np.ndarray]]


class Unsupported(Exception):
    """A peer cannot run these arrays: reported, not raised."""


def _each_in_turn(step_with: Callable[[list[np.ndarray]], object], grad_sets: GradSets) -> Step:
    """A step with grad_sets[0], then [1], ...; with one set, no overhead at all."""
    if len(grad_sets) == 1:
        return functools.partial(step_with, grad_sets[0])
    steps = itertools.cycle([functools.partial(step_with, grads) for grads in grad_sets])
    return lambda: next(steps)()


def _threads(count: int):
    """fusedopt at its default count runs as a user gets it (on a busy machine
    it steps back to one thread); any other count is fixed."""
    return contextlib.nullcontext() if count == fusedopt.get_num_threads() else fusedopt.threads(count)

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

    def refuses(self, precision: Precision) -> str | None:
        """Why this cannot run ``precision`` (a mode it lacks), or None if it can."""
        return None

    @contextlib.contextmanager
    def prepared(self, rule: BenchRule, precision: Precision, params: list[np.ndarray],
                 grad_sets: GradSets) -> Iterator[Step]:
        raise NotImplementedError
        yield


def _plain_floats_only(impl: Implementation, precision: Precision) -> str | None:
    if precision.is_wide:
        return None
    return f"{impl.family} is written for float32 and float64 arrays, not {precision.name}"


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
    def prepared(self, rule, precision, params, grad_sets):
        with _on_target(self.target), _threads(self.threads):
            optimizer = getattr(fusedopt, rule.optimizer)(params, **rule.kwargs, **precision.options)
            yield _each_in_turn(optimizer.step, grad_sets)


class Roof(Implementation):
    """Always on fusedopt's best target, so the label leaves the target out."""

    description = ("the memory roof: a kernel in fusedopt's core with the rule's streams in the precision "
                   "mode's widths and trivial arithmetic (w and each state array += g, in place)")

    @property
    def label(self):
        return f"roof {self.threads}t"

    def unavailable(self, rule):
        if rule.streams > ROOF_MAX_STREAMS:
            return f"the roof kernel has at most {ROOF_MAX_STREAMS} streams, {rule.key} has {rule.streams}"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        if precision.is_wide:
            states = [[np.zeros_like(p) for _ in rule.state_keys] for p in params]
            tensor_sets = [[[p, *s, g] for p, s, g in zip(params, states, grads)] for grads in grad_sets]
            roof = _core.roof
        else:  # streams of mixed widths, as unsigned integers
            first = [precision.roof_tensor(rule, p, g) for p, g in zip(params, grad_sets[0])]
            tensor_sets = [[(updated, [unsigned_view(g)], stored) for (updated, _, stored), g in zip(first, grads)]
                           for grads in grad_sets]  # the same state with each grad set
            roof = _core.bytes_roof
        with _on_target(self.target), _threads(self.threads):
            yield _each_in_turn(roof, tensor_sets)



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
    def prepared(self, rule, precision, params, grad_sets):
        optimizer = getattr(fusedopt.reference, rule.optimizer)(params, **rule.kwargs, **precision.options)
        yield _each_in_turn(optimizer.step, grad_sets)


class NumpyTuned(Implementation):
    description = "NumPy tuned by hand: in-place out= operations and scratch buffers, no temporaries"

    @property
    def label(self):
        return "numpy tuned"

    def unavailable(self, rule):
        if tuned_numpy_class(rule.optimizer) is None:
            return f"no tuned NumPy update is written for {rule.optimizer} (fusedopt/bench/baselines.py)"
        return None

    def refuses(self, precision):
        return _plain_floats_only(self, precision)

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        optimizer = tuned_numpy_class(rule.optimizer)(params, **rule.kwargs)
        yield _each_in_turn(optimizer.step, grad_sets)


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

    def refuses(self, precision):
        return _plain_floats_only(self, precision)

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        from . import cython_loop
        optimizer = cython_loop.cython_class(rule.optimizer)(params, **rule.kwargs)
        yield _each_in_turn(optimizer.step, grad_sets)


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

    def refuses(self, precision):
        if not precision.is_plain:
            return (f"torch.optim keeps state in the param's dtype and rounds to nearest: it has no "
                    f"{precision.name} mode")
        return None

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        import torch
        name, kwargs = rule.torch
        with _torch_tensors(params, grad_sets, self.threads) as (tensors, step_with):
            optimizer = getattr(torch.optim, name)(tensors, **kwargs, **self.flavours[self.family])
            yield step_with(optimizer.step)


@contextlib.contextmanager
def _torch_tensors(params, grad_sets: GradSets, threads: int):
    """Tensors sharing the params' memory with the first grads in ``.grad``,
    torch's threads set, and a way to make a step that uses each grad set in
    turn (setting ``.grad`` only when there are several)."""
    import torch
    tensors = [_shared_tensor(p) for p in params]
    grad_tensors = [[_shared_tensor(g) for g in grads] for grads in grad_sets]
    for tensor, grad in zip(tensors, grad_tensors[0]):
        tensor.grad = grad

    def step_with(optimizer_step: Step) -> Step:
        if len(grad_tensors) == 1:
            return optimizer_step

        def with_grads(grads):
            for tensor, grad in zip(tensors, grads):
                tensor.grad = grad
            return optimizer_step()
        return _each_in_turn(with_grads, grad_tensors)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield tensors, step_with
    finally:
        torch.set_num_threads(previous)


def _shared_tensor(array: np.ndarray):
    """A torch tensor on the array's memory: bfloat16 (which NumPy's buffer
    protocol cannot carry) through an int16 view."""
    import torch
    if array.dtype == bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


class DeepSpeed(Implementation):
    """DeepSpeed's CPU Adam, the peer CPU users of DeepSpeed pick (ZeRO-Offload)."""

    description = ("DeepSpeed's DeepSpeedCPUAdam (DS_ACCELERATOR=cpu) on tensors sharing the arrays' memory; "
                   "DeepSpeed builds its kernel on first use, with -march=native (its own build, not fusedopt's)")
    # torch.optim's class -> DeepSpeedCPUAdam's adamw_mode.
    MODES = {"Adam": False, "AdamW": True}
    # The precision modes DeepSpeedCPUAdam has, and its fp32_optimizer_states
    # for each: float32 state for 16-bit params by default, or state in the
    # param's dtype.
    PRECISIONS = {"float32": True, "bfloat16": False, "float16": False,
                  "bfloat16+fp32-state": True, "float16+fp32-state": True}

    @property
    def label(self):
        return f"deepspeed {self.threads}t"

    def unavailable(self, rule):
        if importlib.util.find_spec("deepspeed") is None:
            return "deepspeed is not installed (pip install 'fusedopt[peers]')"
        if rule.torch is None or rule.torch[0] not in self.MODES:
            return f"DeepSpeed's CPU optimizer is Adam and AdamW only, not {rule.describe()}"
        if set(rule.torch[1]) - {"lr", "betas", "eps", "weight_decay"}:
            return f"DeepSpeedCPUAdam has no {', '.join(sorted(set(rule.torch[1]) - {'lr', 'betas', 'eps', 'weight_decay'}))}"
        try:
            deepspeed_adam()
        except ImportError as error:
            return f"deepspeed could not be loaded: {error}"
        return None

    def refuses(self, precision):
        if precision.name not in self.PRECISIONS:
            return f"DeepSpeedCPUAdam steps {', '.join(self.PRECISIONS)}, not {precision.name}"
        return None

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        name, kwargs = rule.torch
        with _torch_tensors(params, grad_sets, self.threads) as (tensors, step_with):
            optimizer = deepspeed_adam()(tensors, adamw_mode=self.MODES[name],
                                         fp32_optimizer_states=self.PRECISIONS[precision.name], **kwargs)
            yield step_with(optimizer.step)


@functools.lru_cache(maxsize=None)
def deepspeed_adam():
    """DeepSpeedCPUAdam, imported once with DeepSpeed's CPU accelerator.

    torch keeps the kernels it builds for DeepSpeed in one directory per
    user, keyed by name only: two DeepSpeed installations (two virtual
    environments) rebuild each other's kernel on every first use, minutes
    each. Unless TORCH_EXTENSIONS_DIR says otherwise, each installation gets
    its own directory in fusedopt's cache."""
    import importlib.util
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        raise ImportError("No module named 'deepspeed'")
    from .cython_loop import cache_dir
    installation = hashlib.sha256(os.path.dirname(spec.origin).encode()).hexdigest()[:12]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions" / installation))
    stale = stale_build_lock(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "cpu_adam"))
    if stale is not None:
        raise ImportError(f"{stale} is left by a DeepSpeed kernel build that was killed midway, and DeepSpeedCPUAdam "
                          f"would wait for it forever: delete it")
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    return DeepSpeedCPUAdam


# A build of DeepSpeed's kernel takes a few minutes; a lock this old is no build's.
STALE_LOCK_SECONDS = 30 * 60


def stale_build_lock(build_directory: str, now: float | None = None) -> str | None:
    """The path of torch's build lock in ``build_directory`` if a build left
    it long ago (torch's extension builds wait on it without a timeout), else None."""
    import time
    path = os.path.join(build_directory, "lock")
    try:
        age = (time.time() if now is None else now) - os.path.getmtime(path)
    except OSError:  # no lock: no build is running, or none was killed
        return None
    return path if age > STALE_LOCK_SECONDS else None


class EightBitPeer(Implementation):
    """A library's 8-bit optimizers as the peer of fusedopt's 8-bit state:
    ``module`` is its package, ``CLASSES`` maps fusedopt's class names to
    its own (in ``module.optim``), ``make`` builds one on torch tensors."""

    module: str
    CLASSES: dict[str, str]

    @property
    def label(self):
        return f"{self.module} {self.threads}t"

    def unavailable(self, rule):
        if importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install 'fusedopt[peers]')"
        if rule.optimizer not in self.CLASSES or not self.runs(rule):
            return f"{self.module} has no 8-bit {rule.describe()}"
        return None

    def runs(self, rule):
        """Whether the library's class of the rule runs its settings."""
        return True

    def refuses(self, precision):
        if not precision.name.endswith("+8bit"):
            return f"{self.module}'s 8-bit optimizers keep 8-bit state, not {precision.name}'s"
        return None

    def make(self, optimizer_class, tensors, rule, params):
        raise NotImplementedError

    @contextlib.contextmanager
    def prepared(self, rule, precision, params, grad_sets):
        library = importlib.import_module(f"{self.module}.optim")
        optimizer_class = getattr(library, self.CLASSES[rule.optimizer])
        with _torch_tensors(params, grad_sets, self.threads) as (tensors, step_with):
            yield step_with(self.make(optimizer_class, tensors, rule, params).step)


class BitsAndBytes(EightBitPeer):
    """bitsandbytes' 8-bit optimizers."""

    description = ("bitsandbytes' Adam8bit / AdamW8bit / Lion8bit / SGD8bit (block-wise 8-bit state, "
                   "min_8bit_size=0) on tensors sharing the arrays' memory, grads set; on the CPU an "
                   "unfused eager step")
    module = "bitsandbytes"
    CLASSES = {"Adam": "Adam8bit", "AdamW": "AdamW8bit", "Lion": "Lion8bit", "SGD": "SGD8bit"}

    def runs(self, rule):
        return rule.optimizer != "SGD" or bool(rule.kwargs.get("momentum"))  # SGD8bit keeps a momentum buffer

    def make(self, optimizer_class, tensors, rule, params):
        return optimizer_class(tensors, **rule.kwargs, min_8bit_size=0)


class TorchAO(EightBitPeer):
    """torchao's 8-bit Adam and AdamW."""

    description = ("torchao's Adam8bit / AdamW8bit (block-wise 8-bit state, its step through torch.compile) on "
                   "tensors sharing the arrays' memory, grads set; blocks of the largest power of two up to 256 "
                   "that divides every param's size, since torchao keeps 32-bit state for a tensor its block size "
                   "does not divide (and for tensors under 4096 elements)")
    module = "torchao"
    CLASSES = {"Adam": "Adam8bit", "AdamW": "AdamW8bit"}

    def make(self, optimizer_class, tensors, rule, params):
        return optimizer_class(tensors, **rule.kwargs, block_size=math.gcd(256, *(p.size for p in params)))


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
    "deepspeed": DeepSpeed,
    "bitsandbytes": BitsAndBytes,
    "torchao": TorchAO,
}

# The families that run on torch tensors: their refusals are reported, not raised.
PEERS = (Torch, DeepSpeed, BitsAndBytes, TorchAO)

# The short names the command line accepts.
FAMILY_KEYS = {family.replace(" ", "-"): family for family in FAMILIES}


def make(family: str, threads: int = 1, target: str | None = None) -> Implementation:
    return FAMILIES[family](family, threads, target)
