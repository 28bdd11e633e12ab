"""The precisions the benchmark measures: a param dtype and the storage
options of one precision mode (docs/precision.md), with the bytes a step of
each rule moves in that mode and the arrays of its memory roof.

``--dtypes float32,bfloat16`` runs every mode of each 16-bit dtype (and the
plain float32 step); a mode's own name (``bfloat16+fp32-state``,
``float32+8bit``) runs that mode alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from fusedopt.precision import DTYPES

from .rules import BenchRule

__all__ = ["Precision", "PRECISIONS", "precisions_named", "precision_named", "unsigned_view"]


@dataclass(frozen=True, eq=False)  # one instance per mode (PRECISIONS): compared by identity
class Precision:
    name: str                      # what the tables and the command line call it
    dtype: str                     # of the params and grads
    options: Mapping[str, Any] = field(default_factory=dict)  # fusedopt's storage options
    summary: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def state_dtype(self) -> np.dtype:
        """How each state element is stored (8-bit codes as uint8)."""
        if self.options.get("state_bits") == 8:
            return np.dtype(np.uint8)
        return DTYPES[self.options.get("state_dtype") or self.dtype]

    @property
    def is_plain(self) -> bool:
        """Params, grads and state in one float dtype: what every peer steps."""
        return not self.options

    @property
    def is_wide(self) -> bool:
        """Plain float32 or float64: what the float roof and the plain loops take."""
        return self.is_plain and self.dtype in ("float32", "float64")

    def bytes_per_element(self, rule: BenchRule) -> int:
        """Minimal traffic of one step: every array read once, every array
        but the grad written once; with master weights the float32 master is
        read and written and the param only written. 8-bit state counts its
        codes, one byte per element, not the float32 scale of each block of
        256 (another 4/256 bytes per state array, read and written)."""
        param, state = self.numpy_dtype.itemsize, self.state_dtype.itemsize
        states = 2 * state * len(rule.state_keys)
        if self.options.get("master_weights"):
            return 2 * 4 + param + param + states  # master rw, param w, grad r
        kahan = 2 * param if self.options.get("kahan_sum") else 0
        return 2 * param + param + states + kahan

    def roof_tensor(self, rule: BenchRule, param: np.ndarray, grad: np.ndarray
                    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """The arrays of this mode's roof for one tensor, as ``_core.bytes_roof``
        takes them: (updated, read, stored), unsigned integers of each
        stream's width, the param and grad viewing their memory."""
        n = param.size
        updated = [np.zeros(n, _unsigned(self.state_dtype.itemsize)) for _ in rule.state_keys]
        stored = []
        if self.options.get("master_weights"):
            updated.insert(0, np.zeros(n, np.uint32))  # the float32 master, read and written
            stored.append(unsigned_view(param))         # the param, written only
        else:
            updated.insert(0, unsigned_view(param))
        if self.options.get("kahan_sum"):
            updated.append(np.zeros(n, _unsigned(param.itemsize)))  # the compensation
        return updated, [unsigned_view(grad)], stored


def unsigned_view(array: np.ndarray) -> np.ndarray:
    """The same memory as unsigned integers of the element's width, flat."""
    return array.reshape(-1).view(_unsigned(array.itemsize))


def _unsigned(itemsize: int) -> np.dtype:
    return np.dtype(f"u{itemsize}")


def _frozen(**options: Any) -> Mapping[str, Any]:
    return MappingProxyType(options)


def _modes(dtype: str) -> list[Precision]:
    plain = Precision(dtype, dtype, _frozen(), f"params, grads and state in {dtype}")
    if dtype in ("float32", "float64"):
        return [plain]
    return [
        plain,
        Precision(f"{dtype}+fp32-state", dtype, _frozen(state_dtype="float32"),
                  f"{dtype} params and grads, float32 state (DeepSpeed's fp32_optimizer_states)"),
        Precision(f"{dtype}+master", dtype, _frozen(state_dtype="float32", master_weights=True),
                  f"{dtype} params and grads, float32 master weights and state"),
        Precision(f"{dtype}+kahan", dtype, _frozen(kahan_sum=True),
                  f"{dtype} params, grads and state, a {dtype} Kahan compensation"),
        Precision(f"{dtype}+stochastic", dtype, _frozen(rounding="stochastic"),
                  f"{dtype} params, grads and state, params rounded stochastically"),
        _eight_bit(dtype),
    ]


def _eight_bit(dtype: str) -> Precision:
    # min_8bit_size=0: every tensor keeps 8-bit state, so each workload moves the mode's bytes.
    return Precision(f"{dtype}+8bit", dtype, _frozen(state_bits=8, min_8bit_size=0),
                     f"{dtype} params and grads, 8-bit block-wise quantized state (blocks of 256)")


# Every mode by name: a dtype's modes, and float32 params with 8-bit state,
# which runs only when named (--dtypes float32 stays the plain float32 step).
PRECISIONS: dict[str, Precision] = {p.name: p for dtype in DTYPES for p in _modes(dtype)}
PRECISIONS["float32+8bit"] = _eight_bit("float32")


def precision_named(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown dtype or precision {name!r}; they are {', '.join(DTYPES)} "
                         f"(every mode of the dtype) or one of {', '.join(PRECISIONS)}") from None


def precisions_named(name: str) -> list[Precision]:
    """A dtype's every mode, or one mode by its name."""
    if name in DTYPES:
        return [PRECISIONS[mode.name] for mode in _modes(name)]
    return [precision_named(name)]
