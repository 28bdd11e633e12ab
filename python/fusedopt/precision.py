"""Precisions: which dtypes fusedopt steps, and the storage options every
optimizer takes (``state_dtype``, ``master_weights``, ``kahan_sum``,
``rounding``, ``seed``, ``state_bits``, ``block_size``, ``min_8bit_size``),
in the form the core reads from a param group.

Params may be float32, float64, bfloat16 (``ml_dtypes.bfloat16``, NumPy's
bfloat16 dtype, as JAX and TensorFlow use) or float16. The arithmetic of a
16-bit param is float32, in the same order as the float32 kernel; state may
be kept in the param's dtype (the default, as torch), in float32 for a
16-bit param (DeepSpeed's ``fp32_optimizer_states``), or in a 16-bit dtype
for a float32 param. docs/precision.md has the byte counts and the rules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["bfloat16", "bfloat16_dtype", "is_bfloat16", "DTYPES", "dtype_name", "storage_options",
           "storage_state_keys", "state_dtypes", "absmax_key", "deciding_elements"]

_bfloat16: np.dtype | None = None


def bfloat16_dtype() -> np.dtype:
    """ml_dtypes' bfloat16, imported on first use: with NumPy 2.4, importing
    ml_dtypes takes about a second (it registers its ufunc loops), which
    ``import fusedopt`` should not cost a user who steps float32."""
    global _bfloat16
    if _bfloat16 is None:
        import ml_dtypes

        _bfloat16 = np.dtype(ml_dtypes.bfloat16)
    return _bfloat16


def _bfloat16_can_exist() -> bool:
    """No array, dtype or state can be bfloat16 before ml_dtypes is imported."""
    return "ml_dtypes" in sys.modules


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is bfloat16, without importing ml_dtypes."""
    return _bfloat16_can_exist() and dtype == bfloat16_dtype()


def __getattr__(name: str) -> Any:  # precision.bfloat16, made on first use
    if name == "bfloat16":
        return bfloat16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Dtypes(Mapping):
    """The dtypes a step takes, by the names the core and the param groups
    use; bfloat16's is made when it is first asked for (bfloat16_dtype)."""

    _NAMES = ("float32", "float64", "bfloat16", "float16")

    def __getitem__(self, name: str) -> np.dtype:
        if name == "bfloat16":
            return bfloat16_dtype()
        if name in self._NAMES:
            return np.dtype(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


DTYPES: Mapping[str, np.dtype] = _Dtypes()

# Storage options and their defaults: a group holds only those set otherwise.
STORAGE_DEFAULTS = {"state_dtype": None, "master_weights": False, "kahan_sum": False, "rounding": "nearest",
                    "seed": 0, "state_bits": 32, "block_size": 256, "min_8bit_size": 4096}
# An 8-bit group keeps these in the group even at their defaults: its state's
# layout depends on them, so a state_dict or checkpoint must say them.
_QUANTIZED_LAYOUT = ("block_size", "min_8bit_size")


def dtype_name(value: Any, name: str = "state_dtype") -> str:
    """The name of a dtype fusedopt steps ("float32", "bfloat16", ...), from a
    NumPy dtype, a scalar type or a name; ValueError naming ``name`` otherwise."""
    if isinstance(value, str) and value == "bfloat16":
        bfloat16_dtype()  # NumPy knows the name once ml_dtypes is imported
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    for key in DTYPES:
        if dtype is None:  # a dtype compares equal to None as float64 does
            break
        if is_bfloat16(dtype) if key == "bfloat16" else dtype == DTYPES[key]:
            return key
    raise ValueError(f"{name} must be one of {', '.join(DTYPES)} (or None), got {value!r}")


def _state_dtype(value: Any) -> str | dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: dtype_name(dtype, f"state_dtype[{key!r}]") for key, dtype in value.items()}
    return dtype_name(value)


def storage_options(**options: Any) -> dict[str, Any]:
    """The storage options that differ from their defaults, normalised
    (dtypes as names), for a param group or the defaults. The core checks
    them (kinds, combinations) when a group is added."""
    unknown = set(options) - set(STORAGE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown storage options {sorted(unknown)}")
    out = {}
    for key, value in options.items():
        if key == "state_dtype":
            value = _state_dtype(value)
        if value is not STORAGE_DEFAULTS[key] and value != STORAGE_DEFAULTS[key]:
            out[key] = value
    return out


def normalized_group(group: dict[str, Any]) -> dict[str, Any]:
    """A group's storage options in the core's form (dtypes as names; an
    8-bit group's block_size and min_8bit_size spelled out)."""
    if "state_dtype" in group:
        group["state_dtype"] = _state_dtype(group["state_dtype"])
    if group.get("state_bits") == 8:
        for key in _QUANTIZED_LAYOUT:
            group.setdefault(key, STORAGE_DEFAULTS[key])
    return group


def storage_state_keys(group: Mapping[str, Any]) -> list[str]:
    """The state arrays a group's storage options add: the float32 master copy
    or the Kahan compensation."""
    return (["master_param"] if group.get("master_weights") else []) + (
        ["kahan_comp"] if group.get("kahan_sum") else [])


def deciding_elements(group: Mapping[str, Any], k: int, param: np.ndarray) -> int:
    """The element count that decides whether ``group["params"][k]`` keeps
    8-bit state: its own, or its full param's for a shard piece of
    fusedopt.distributed (the private "_random_index"; csrc/rules.hpp)."""
    pieces = group.get("_random_index")
    if pieces is not None and k < len(pieces) and len(pieces[k]) == 3 and pieces[k][2] > 0:
        return int(pieces[k][2])
    return param.size


def absmax_key(key: str) -> str:
    """The state key of the per-block scales of 8-bit state array ``key``."""
    return key + "_absmax"


def state_dtypes(key: str, param_dtype: np.dtype) -> tuple[np.dtype, ...]:
    """The dtypes a state array ``key`` may have beside a param of
    ``param_dtype``. bfloat16 is among them only once ml_dtypes is imported
    (no array can have it before), so checking a float32 run's state does
    not import it."""
    if key == "master_param":
        return (DTYPES["float32"],)
    if key == "kahan_comp":
        return (np.dtype(param_dtype),)
    if np.dtype(param_dtype) == DTYPES["float64"]:
        return (DTYPES["float64"],)
    bfloat16 = (DTYPES["bfloat16"],) if _bfloat16_can_exist() else ()
    return (DTYPES["float32"], *bfloat16, DTYPES["float16"])
