"""The compiled core's update rules as Python sees them, and the error a
guarded step raises.

Each rule is an instance of :class:`Rule` (``_core.adam``, ``_core.sgd``, ...,
made from the one list in ``csrc/rule_list.hpp``); its ``step`` is the
generic step of ``csrc/step.cpp`` instantiated for that rule. This module
sits below both the optimizer classes and :mod:`fusedopt.functional`, so
neither needs the other.
"""

from __future__ import annotations

import numpy as np

from . import _core

__all__ = ["Rule", "RULES", "MAX_STEP", "NonFiniteGradError", "nonfinite_grad_error"]

Rule = _core.Rule
RULES: dict[str, Rule] = dict(_core.rules)  # by name: "adam", "sgd", ...
MAX_STEP: int = _core.MAX_STEP  # a state's "step" is an int in [0, MAX_STEP)


class NonFiniteGradError(FloatingPointError, RuntimeError):
    """A gradient holds a NaN or an infinity, and nothing was changed.

    ``index`` is the position of the first such array in the list passed in
    (``grads[index]``), or ``None`` when every array is finite but a result
    computed from them is not (a norm that overflowed). It is also a
    ``RuntimeError``, which is what ``torch.nn.utils.clip_grad_norm_`` raises.
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


# Elements scanned at a time for the first bad one: bounds the temporary.
_SCAN_CHUNK = 1 << 16


def first_nonfinite_element(array: np.ndarray) -> int | None:
    """The flat index of the first NaN or infinity in ``array``, or None,
    without a temporary the size of the array."""
    flat = array.reshape(-1)  # a view for the contiguous arrays a step takes
    for start in range(0, flat.size, _SCAN_CHUNK):
        bad = np.flatnonzero(~np.isfinite(flat[start:start + _SCAN_CHUNK]))
        if bad.size:
            return start + int(bad[0])
    return None


def nonfinite_grad_error(grad: np.ndarray, index: int, label: str | None = None) -> NonFiniteGradError:
    """The error for ``nonfinite="raise"``: ``label`` names the gradient
    (``grads[index]`` unless given: fusedopt.torch names the param)."""
    where = first_nonfinite_element(grad)
    first = f" (first at flat index {where}: {grad.reshape(-1)[where]})" if where is not None else ""
    return NonFiniteGradError(
        f"{label or f'grads[{index}]'} holds a NaN or an infinity{first}; the step was skipped and "
        "nothing changed (nonfinite='raise')",
        index,
    )
