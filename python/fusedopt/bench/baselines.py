"""The benchmark's own baselines behind fusedopt's optimizer API: a tuned
NumPy variant (in-place ``out=`` operations, no temporaries) and the plain
compiled loop (see :mod:`fusedopt.bench.cython_loop`).

Both keep fusedopt's constructors, validation and state layout (they
subclass the optimizer classes) and a lean ``step``: hyperparameters are read
once per group, then one update call per param. Each update evaluates every
line in the order :mod:`fusedopt.reference` does, so the results agree with
the reference element by element (tests/test_bench.py checks it).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .. import optimizers
from ..optimizer import Optimizer

__all__ = ["LeanStep", "optimizer_class", "tuned_numpy_class", "TUNED_NUMPY_UPDATES"]

# update(self, w, g, state, scratch, **hyperparameters): one param, in place.
# ``scratch(name)`` is a private buffer shaped like ``w``, kept between steps.
Update = Callable[..., None]


class LeanStep(Optimizer):
    """The loop over params, with the per-group work done once per group."""

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        index = 0
        for group in self.param_groups:
            hyper = {k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
                     for k, v in group.items() if k != "params"}
            for param in group["params"]:
                grad, state = grads[index], self.state[index]
                if grad is not None:
                    state["step"] += 1
                    self._update(param, grad, state, self._scratch_for(index, param), **hyper)
                index += 1

    def _scratch_for(self, index: int, param: np.ndarray) -> Callable[[str], np.ndarray]:
        buffers = getattr(self, "_scratch_buffers", None)
        if buffers is None:
            buffers = self._scratch_buffers = {}
        mine = buffers.setdefault(index, {})

        def scratch(name: str) -> np.ndarray:
            if name not in mine:
                mine[name] = np.empty_like(param)
            return mine[name]

        return scratch

    def _update(self, w, g, state, scratch, **hyper) -> None:
        raise NotImplementedError


def optimizer_class(name: str, updates: dict[str, Update], prefix: str) -> type | None:
    """``fusedopt.<name>``'s API with ``updates[name]`` as its step, or None
    if no update is written for that rule."""
    update = updates.get(name)
    if update is None:
        return None
    base = getattr(optimizers, name)
    return type(f"{prefix}{name}", (LeanStep, base), {"_update": update, "__module__": __name__})


# ----------------------------------------------------------- tuned NumPy
# What a careful NumPy user writes: every operation in place into the state
# or into a scratch buffer kept between steps, so no array is allocated
# during a step. Still one pass over memory per operation.

def _gradient(w, g, scratch, *, weight_decay, maximize):
    """g, or -g, or g + wd * w (after the sign), in a scratch buffer when changed."""
    if maximize:
        g = np.negative(g, out=scratch("grad"))
    if weight_decay != 0:
        decay = np.multiply(w, weight_decay, out=scratch("tmp"))
        g = np.add(g, decay, out=scratch("grad"))
    return g


def _tuned_momentum(self, w, g, state, scratch, *, lr, momentum, **_):
    v, tmp = state["velocity"], scratch("tmp")
    v *= momentum                         # v <- momentum * v - lr * g
    v -= np.multiply(g, lr, out=tmp)
    w += v                                # w <- w + v


def _tuned_sgd(self, w, g, state, scratch, *, lr, momentum, dampening, weight_decay, nesterov, maximize, **_):
    tmp = scratch("tmp")
    g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    if momentum != 0:
        b = state.get("momentum_buffer")
        if b is None:
            b = state["momentum_buffer"] = np.zeros_like(w)
        if state["step"] == 1:
            np.copyto(b, g)                                  # b <- g on the first step
        else:
            b *= momentum                                    # b <- mu b + (1 - d) g
            b += np.multiply(g, 1 - dampening, out=tmp)
        if nesterov:
            g = np.add(g, np.multiply(b, momentum, out=tmp), out=scratch("grad"))  # g <- g + mu b
        else:
            g = b
    w -= np.multiply(g, lr, out=tmp)                          # w <- w - lr g


def _tuned_adadelta(self, w, g, state, scratch, *, lr, rho, eps, weight_decay, maximize, scale, **_):
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    square_avg = state["square_avg"]
    square_avg *= rho                                        # Eg <- rho Eg + (1 - rho) g^2
    square_avg += np.multiply(np.multiply(g, g, out=tmp), 1 - rho, out=tmp)
    if scale == "weights":
        weight_avg = state["square_weight_avg"]
        weight_avg *= rho                                    # Sw <- rho Sw + (1 - rho) w^2
        weight_avg += np.multiply(np.multiply(w, w, out=tmp), 1 - rho, out=tmp)
        np.add(weight_avg, eps, out=tmp)                     # w <- w - lr sqrt((Sw + eps) / (Sg + eps)) g
        tmp /= np.add(square_avg, eps, out=tmp2)
        np.sqrt(tmp, out=tmp)
        tmp *= lr
        tmp *= g
        w -= tmp
    else:
        acc_delta = state["acc_delta"]
        dx = np.sqrt(np.add(acc_delta, eps, out=tmp), out=tmp)   # dx <- sqrt(Edx + eps) / sqrt(Eg + eps) g
        dx /= np.sqrt(np.add(square_avg, eps, out=tmp2), out=tmp2)
        dx *= g
        acc_delta *= rho                                     # Edx <- rho Edx + (1 - rho) dx^2
        acc_delta += np.multiply(np.multiply(dx, dx, out=tmp2), 1 - rho, out=tmp2)
        dx *= lr                                             # w <- w - lr dx
        w -= dx


def _tuned_adam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, amsgrad, maximize,
                decoupled_weight_decay, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    t = state["step"]
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    if decoupled_weight_decay:
        g = _gradient(w, g, scratch, weight_decay=0.0, maximize=maximize)
        w *= 1 - lr * weight_decay                           # w <- (1 - lr wd) w
    else:
        g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m *= beta1                                               # m <- b1 m + (1 - b1) g
    m += np.multiply(g, 1 - beta1, out=tmp)
    v *= beta2                                               # v <- b2 v + (1 - b2) g^2
    v += np.multiply(np.multiply(g, g, out=tmp), 1 - beta2, out=tmp)
    if amsgrad:
        v_max = state["max_exp_avg_sq"]
        np.maximum(v_max, v, out=v_max)                      # vmax <- max(vmax, v)
        v = v_max
    denominator = np.sqrt(v, out=tmp)                        # sqrt(v) / sqrt(1 - b2^t) + eps
    denominator /= math.sqrt(1 - beta2**t)
    denominator += eps
    update = np.multiply(m, lr / (1 - beta1**t), out=tmp2)   # lr / (1 - b1^t) m / denominator
    update /= denominator
    w -= update


TUNED_NUMPY_UPDATES: dict[str, Update] = {
    "Momentum": _tuned_momentum,
    "SGD": _tuned_sgd,
    "Adadelta": _tuned_adadelta,
    "Adam": _tuned_adam,
    "AdamW": _tuned_adam,   # decoupled_weight_decay=True in its defaults
}


def tuned_numpy_class(name: str) -> type | None:
    return optimizer_class(name, TUNED_NUMPY_UPDATES, "TunedNumpy")

