"""Plain NumPy implementations of every rule, behind the same class API.

Written the way a user writes an optimizer in NumPy: one loop over the
params, one line per formula, each operation a separate NumPy expression.
They are the tests' oracle and the benchmarks' baseline. Each line
evaluates in the order the compiled kernels do, so the two agree to the
last bit on every target; the tests still allow the few ULP that
``ALGORITHMS.md`` allows.

The constructors, validation and state layout are those of the fused
classes (these subclass them); only ``step`` differs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import optimizers
from .optimizer import Optimizer

__all__ = ["Momentum", "SGD", "Adadelta", "Adam", "AdamW"]


class _NumpyStep(Optimizer):
    """The loop over params; subclasses write one param's update."""

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        grads = list(grads)
        params = [(group, p) for group in self.param_groups for p in group["params"]]
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} params")
        for (group, param), grad, state in zip(params, grads, self.state):
            if grad is None:
                continue
            hyper = {k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
                         else v) for k, v in group.items() if k != "params"}
            state["step"] += 1
            self._update(param, grad, state, **hyper)

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, Any], **hyper: Any) -> None:
        raise NotImplementedError


class Momentum(_NumpyStep, optimizers.Momentum):
    def _update(self, w, g, state, *, lr, momentum, **_):
        v = state["velocity"]
        v[...] = momentum * v - lr * g
        w += v


class SGD(_NumpyStep, optimizers.SGD):
    def _update(self, w, g, state, *, lr, momentum, dampening, weight_decay, nesterov, maximize, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        if momentum != 0:
            if state["step"] == 1 or "momentum_buffer" not in state:
                b = state["momentum_buffer"] = g.copy()  # torch starts from the first gradient
            else:
                b = state["momentum_buffer"]
                b[...] = momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        w -= lr * g


class Adadelta(_NumpyStep, optimizers.Adadelta):
    def _update(self, w, g, state, *, lr, rho, eps, weight_decay, maximize, scale, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        square_avg = state["square_avg"]
        square_avg[...] = rho * square_avg + (1 - rho) * g**2
        if scale == "weights":
            square_weight_avg = state.setdefault("square_weight_avg", np.zeros_like(w))
            square_weight_avg[...] = rho * square_weight_avg + (1 - rho) * w**2
            w -= lr * np.sqrt((square_weight_avg + eps) / (square_avg + eps)) * g
        else:
            acc_delta = state.setdefault("acc_delta", np.zeros_like(w))
            dx = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
            acc_delta[...] = rho * acc_delta + (1 - rho) * dx**2
            w -= lr * dx


class Adam(_NumpyStep, optimizers.Adam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, amsgrad, maximize,
                decoupled_weight_decay, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        if maximize:
            g = -g
        if decoupled_weight_decay:
            w *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * g**2
        if amsgrad:
            v_max = state.setdefault("max_exp_avg_sq", np.zeros_like(w))
            np.maximum(v_max, v, out=v_max)
            v = v_max
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        w -= lr / bias_correction1 * m / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)


class AdamW(Adam, optimizers.AdamW):
    pass
