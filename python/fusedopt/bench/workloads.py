"""What the benchmark updates: one tensor of a given size, or the parameter
list of a model (many tensors of different sizes in one step).

Every workload is a list of shapes; the arrays are made by :func:`make_arrays`.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Workload", "single_tensor", "model200", "resnet18", "gpt2_small", "MODELS", "DEFAULT_SIZES",
    "QUICK_SIZES", "parse_size", "size_label", "make_arrays", "available_memory_bytes",
]


@dataclass(frozen=True)
class Workload:
    """The params of one optimizer: ``shapes`` of its tensors and a short name."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    kind: str  # "tensor" (one tensor of `elements`) or "model"

    @property
    def elements(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


# Single tensors: 0 (the call overhead alone) and 1e3 .. 3e7 elements.
DEFAULT_SIZES = [0, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000,
                 10_000_000, 30_000_000, 100_000_000]
QUICK_SIZES = [0, 1_000, 100_000, 10_000_000]


def parse_size(text: str) -> int:
    """'1e5', '3e7', '100000' -> an element count."""
    value = float(text)
    if value < 0 or value != int(value):
        raise ValueError(f"a size must be a whole number of elements >= 0, got {text!r}")
    return int(value)


def size_label(n: int) -> str:
    """1000 -> '1e3', 30000000 -> '3e7', 123 -> '123'."""
    if n >= 1000:
        exponent = int(math.floor(math.log10(n)))
        mantissa = n / 10**exponent
        if mantissa == int(mantissa):
            return f"{int(mantissa)}e{exponent}" if mantissa != 1 else f"1e{exponent}"
    return str(n)


def single_tensor(n: int) -> Workload:
    return Workload(size_label(n), ((n,),), "tensor")


def model200(seed: int = 0) -> Workload:
    """200 tensors with sizes log-uniform in [1e2, 1e6] (about 2e7 elements).

    Python's ``random.Random`` is used because its sequence for a seed is
    guaranteed across Python versions, so the model is the same everywhere.
    """
    generator = random.Random(seed)
    sizes = [round(math.exp(generator.uniform(math.log(1e2), math.log(1e6)))) for _ in range(200)]
    return Workload("model200", tuple((n,) for n in sizes), "model")


# torchvision's resnet18(): conv weights, batch-norm scales and shifts, the
# classifier (62 tensors, 11,689,512 parameters).
def _basic_block(channels_in: int, channels: int) -> list[tuple[int, ...]]:
    block = [(channels, channels_in, 3, 3), (channels,), (channels,),   # conv1, bn1
             (channels, channels, 3, 3), (channels,), (channels,)]      # conv2, bn2
    if channels_in != channels:
        block += [(channels, channels_in, 1, 1), (channels,), (channels,)]  # downsample conv, bn
    return block


_RESNET18_SHAPES = (
    [(64, 3, 7, 7), (64,), (64,)]                                  # stem: conv1, bn1
    + _basic_block(64, 64) + _basic_block(64, 64)                  # layer1
    + _basic_block(64, 128) + _basic_block(128, 128)               # layer2
    + _basic_block(128, 256) + _basic_block(256, 256)              # layer3
    + _basic_block(256, 512) + _basic_block(512, 512)              # layer4
    + [(1000, 512), (1000,)]                                       # fc
)


def resnet18() -> Workload:
    return Workload("resnet18", tuple(_RESNET18_SHAPES), "model")


# Hugging Face's GPT-2 small (GPT2Model, the LM head tied to wte): 148
# tensors, 124,439,808 parameters. One transformer block, repeated 12 times:
_GPT2_BLOCK = [
    (768,), (768,),                 # ln_1 weight, bias
    (768, 2304), (2304,),           # attn.c_attn (q, k, v) weight, bias
    (768, 768), (768,),             # attn.c_proj
    (768,), (768,),                 # ln_2
    (768, 3072), (3072,),           # mlp.c_fc
    (3072, 768), (768,),            # mlp.c_proj
]
_GPT2_SMALL_SHAPES = [(50257, 768), (1024, 768)] + _GPT2_BLOCK * 12 + [(768,), (768,)]  # wte, wpe, ..., ln_f


def gpt2_small() -> Workload:
    return Workload("gpt2-small", tuple(_GPT2_SMALL_SHAPES), "model")


MODELS = {"model200": model200, "resnet18": resnet18, "gpt2-small": gpt2_small}


def make_arrays(workload: Workload, dtype: np.dtype, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Params and grads for a workload, every page written (no page faults
    later): params uniform in [-1, 1), grads in [-1e-2, 1e-2), each tensor
    its own allocation as in a real model. 16-bit arrays are the float32
    values rounded to nearest."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    drawn = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)

    def uniform(shape, scale):
        values = rng.random(shape, dtype=drawn)
        values *= 2 * scale
        values -= scale
        return values if drawn == dtype else values.astype(dtype)

    params = [uniform(shape, 1.0) for shape in workload.shapes]
    grads = [uniform(shape, 1e-2) for shape in workload.shapes]
    return params, grads


def grad_sets(rule, grads: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The grads an implementation steps with, one set per step in turn.

    A gradient that never changes drives centered RMSprop's variance
    estimate v - gbar^2 to zero: after a couple of thousand steps it is a
    rounding error, half the time negative, and every implementation takes
    the square root of a negative number (NaN params; NumPy warns "invalid
    value encountered in sqrt"). For the rules that track the gradient's
    variance the grads alternate with their negatives, which keeps the
    variance at g^2 as a noisy gradient would; the others get the grads
    alone, at no cost.
    """
    if not rule.kwargs.get("centered"):
        return [grads]
    return [grads, [np.negative(g) for g in grads]]


def available_memory_bytes() -> int | None:
    """Memory the benchmark may still use (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
