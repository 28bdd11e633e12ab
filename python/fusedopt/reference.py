"""Plain NumPy implementations of every rule, behind the same class API.

Written the way a user writes an optimizer in NumPy: one loop over the
params, one line per formula, each operation a separate NumPy expression.
They are the tests' oracle and the benchmarks' baseline. Each line
evaluates in the order the compiled kernels do, so the two agree to the
last bit on every target; the tests still allow the few ULP that
docs/algorithms.md allows.

The constructors, validation and state layout are those of the fused
classes (these subclass them); only ``step`` differs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import optimizers
from .optimizer import Optimizer
from .rule import nonfinite_grad_error

__all__ = ["Momentum", "SGD", "Adadelta", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax",
           "Lion"]


class _NumpyStep(Optimizer):
    """The loop over params; subclasses write one param's update."""

    def step(self, grads: Sequence[np.ndarray | None]) -> bool:
        grads = list(grads)
        params = [(group, p) for group in self.param_groups for p in group["params"]]
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} params")
        if self.nonfinite != "apply":
            for i, grad in enumerate(grads):
                if grad is not None and not np.isfinite(grad).all():
                    self.skipped_steps += 1
                    if self.nonfinite == "raise":
                        raise nonfinite_grad_error(grad, i)
                    return False
        for (group, param), grad, state in zip(params, grads, self.state):
            if grad is None:
                continue
            hyper = {k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
                         else v) for k, v in group.items() if k != "params"}
            state["step"] += 1
            self._update(param, grad, state, **hyper)
        return True

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


class RMSprop(_NumpyStep, optimizers.RMSprop):
    def _update(self, w, g, state, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        square_avg = state["square_avg"]
        square_avg[...] = alpha * square_avg + (1 - alpha) * (g * g)
        mean_square = square_avg
        if centered:
            grad_avg = state.setdefault("grad_avg", np.zeros_like(w))
            grad_avg[...] = alpha * grad_avg + (1 - alpha) * g
            mean_square = square_avg - grad_avg * grad_avg
        avg = np.sqrt(mean_square) + eps
        if momentum > 0:
            b = state.setdefault("momentum_buffer", np.zeros_like(w))
            b[...] = momentum * b + g / avg
            w -= lr * b
        else:
            w -= lr * (g / avg)


class Adagrad(_NumpyStep, optimizers.Adagrad):
    def _update(self, w, g, state, *, lr, lr_decay, weight_decay, eps, maximize, **_):
        t = state["step"]
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        step_size = lr / (1 + (t - 1) * lr_decay)
        accumulator = state["sum"]
        accumulator[...] = accumulator + g * g
        std = np.sqrt(accumulator) + eps
        w -= step_size * (g / std)


class NAdam(_NumpyStep, optimizers.NAdam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        state["mu_product"] = mu_product = state["mu_product"] * mu
        mu_product_next = mu_product * mu_next
        if maximize:
            g = -g
        if decoupled_weight_decay:
            w *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * (g * g)
        denom = np.sqrt(v / (1 - beta2**t)) + eps
        w[...] = (w - lr * (1 - mu) / (1 - mu_product) * (g / denom)
                  - lr * mu_next / (1 - mu_product_next) * (m / denom))


class RAdam(_NumpyStep, optimizers.RAdam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize, **_):
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
        v[...] = beta2 * v + (1 - beta2) * (g * g)
        beta2_t = beta2**t
        bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2_t / bias_correction2
        if rho_t > 5:
            rectification = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            step_size = lr / bias_correction1 * math.sqrt(bias_correction2) * rectification
            w[...] = w - step_size * (m / (np.sqrt(v) + eps))
        else:
            w[...] = w - lr / bias_correction1 * m


class Adamax(_NumpyStep, optimizers.Adamax):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        m, u = state["exp_avg"], state["exp_inf"]
        m[...] = beta1 * m + (1 - beta1) * g
        u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
        w -= lr / (1 - beta1**t) * (m / u)


class Lion(_NumpyStep, optimizers.Lion):
    def _update(self, w, g, state, *, lr, betas, weight_decay, maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        if maximize:
            g = -g
        m = state["exp_avg"]
        update = np.sign(beta1 * m + (1 - beta1) * g) + 0.0  # + 0.0: sign(-0.0) is +0, as the kernel's
        w[...] = w * (1 - lr * weight_decay) - lr * update
        m[...] = beta2 * m + (1 - beta2) * g
