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
from ..rule import nonfinite_grad_error

__all__ = ["LeanStep", "optimizer_class", "tuned_numpy_class", "TUNED_NUMPY_UPDATES", "nadam_step_sizes",
           "radam_step_size"]

# update(self, w, g, state, scratch, **hyperparameters): one param, in place.
# ``scratch(name)`` is a private buffer shaped like ``w``, kept between steps.
Update = Callable[..., None]


class LeanStep(Optimizer):
    """The loop over params, with the per-group work done once per group.

    ``nonfinite="skip"`` and ``"raise"`` check every grad first, as the
    reference does; the benchmark's rules use the default, ``"apply"``.
    """

    def step(self, grads: Sequence[np.ndarray | None]) -> bool:
        if self.nonfinite != "apply":
            for index, grad in enumerate(grads):
                if grad is not None and not np.isfinite(grad).all():
                    self.skipped_steps += 1
                    if self.nonfinite == "raise":
                        raise nonfinite_grad_error(grad, index)
                    return False
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
        return True

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


# -------------------------------------------- per-step scalars, in double
# Both baselines take these from here; each is the reference's expression,
# evaluated in the same order.

def nadam_step_sizes(state, *, lr: float, beta1: float, momentum_decay: float) -> tuple[float, float]:
    """NAdam's two step sizes, lr (1 - mu_t) / (1 - P_t) for g and
    lr mu_{t+1} / (1 - P_{t+1}) for m; advances ``state["mu_product"]`` to P_t."""
    t = state["step"]
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    state["mu_product"] = mu_product = state["mu_product"] * mu
    mu_product_next = mu_product * mu_next
    return lr * (1 - mu) / (1 - mu_product), lr * mu_next / (1 - mu_product_next)


def radam_step_size(t: int, *, lr: float, beta1: float, beta2: float) -> tuple[bool, float]:
    """Whether RAdam rectifies step t, and the factor of m (of m / (sqrt(v) + eps) if so)."""
    beta2_t = beta2**t
    bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2_t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2_t / bias_correction2
    if rho_t > 5:
        rectification = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return True, lr / bias_correction1 * math.sqrt(bias_correction2) * rectification
    return False, lr / bias_correction1


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


def _decayed_gradient(w, g, scratch, *, lr, weight_decay, decoupled_weight_decay, maximize):
    """The gradient with coupled decay, or w <- (1 - lr wd) w (decoupled)."""
    if decoupled_weight_decay:
        g = _gradient(w, g, scratch, weight_decay=0.0, maximize=maximize)
        w *= 1 - lr * weight_decay                           # w <- (1 - lr wd) w
        return g
    return _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)


def _update_moments(g, m, v, tmp, beta1, beta2):
    """Adam's two moments, in place (``tmp`` is scratch)."""
    m *= beta1                                               # m <- b1 m + (1 - b1) g
    m += np.multiply(g, 1 - beta1, out=tmp)
    v *= beta2                                               # v <- b2 v + (1 - b2) g^2
    v += np.multiply(np.multiply(g, g, out=tmp), 1 - beta2, out=tmp)


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
    g = _decayed_gradient(w, g, scratch, lr=lr, weight_decay=weight_decay,
                          decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    _update_moments(g, m, v, tmp, beta1, beta2)
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


def _tuned_rmsprop(self, w, g, state, scratch, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, **_):
    tmp, avg = scratch("tmp"), scratch("tmp2")
    g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    square_avg = state["square_avg"]
    square_avg *= alpha                                      # v <- a v + (1 - a) g^2
    square_avg += np.multiply(np.multiply(g, g, out=tmp), 1 - alpha, out=tmp)
    mean_square = square_avg
    if centered:
        grad_avg = state["grad_avg"]
        grad_avg *= alpha                                    # gbar <- a gbar + (1 - a) g
        grad_avg += np.multiply(g, 1 - alpha, out=tmp)
        mean_square = np.subtract(square_avg, np.multiply(grad_avg, grad_avg, out=tmp), out=tmp)  # v - gbar^2
    np.sqrt(mean_square, out=avg)                            # avg <- sqrt(...) + eps
    avg += eps
    scaled = np.divide(g, avg, out=avg)                      # g / avg
    if momentum > 0:
        b = state["momentum_buffer"]
        b *= momentum                                        # b <- mu b + g / avg
        b += scaled
        w -= np.multiply(b, lr, out=tmp)                     # w <- w - lr b
    else:
        scaled *= lr                                         # w <- w - lr (g / avg)
        w -= scaled


def _tuned_adagrad(self, w, g, state, scratch, *, lr, lr_decay, weight_decay, eps, maximize, **_):
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    step_size = lr / (1 + (state["step"] - 1) * lr_decay)   # lr_t = lr / (1 + (t - 1) lr_decay)
    accumulator = state["sum"]
    accumulator += np.multiply(g, g, out=tmp)                # s <- s + g^2
    std = np.sqrt(accumulator, out=tmp)                      # w <- w - lr_t (g / (sqrt(s) + eps))
    std += eps
    update = np.divide(g, std, out=tmp2)
    update *= step_size
    w -= update


def _tuned_nadam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, momentum_decay,
                 decoupled_weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    grad_step, momentum_step = nadam_step_sizes(state, lr=lr, beta1=beta1, momentum_decay=momentum_decay)
    g = _decayed_gradient(w, g, scratch, lr=lr, weight_decay=weight_decay,
                          decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    _update_moments(g, m, v, tmp, beta1, beta2)
    denom = np.divide(v, 1 - beta2 ** state["step"], out=tmp)   # d <- sqrt(v / (1 - b2^t)) + eps
    np.sqrt(denom, out=denom)
    denom += eps
    term = np.divide(g, denom, out=tmp2)                     # w <- w - lr (1-mu_t)/(1-P_t) (g / d)
    term *= grad_step
    w -= term
    term = np.divide(m, denom, out=tmp2)                     #       - lr mu_t+1/(1-P_t+1) (m / d)
    term *= momentum_step
    w -= term


def _tuned_radam(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize,
                 **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    tmp = scratch("tmp")
    g = _decayed_gradient(w, g, scratch, lr=lr, weight_decay=weight_decay,
                          decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    _update_moments(g, m, v, tmp, beta1, beta2)
    rectified, step_size = radam_step_size(state["step"], lr=lr, beta1=beta1, beta2=beta2)
    if rectified:
        denominator = np.sqrt(v, out=tmp)                    # w <- w - step_size (m / (sqrt(v) + eps))
        denominator += eps
        update = np.divide(m, denominator, out=tmp)
        update *= step_size
    else:
        update = np.multiply(m, step_size, out=tmp)          # w <- w - lr / (1 - b1^t) m
    w -= update


def _tuned_adamax(self, w, g, state, scratch, *, lr, betas, eps, weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    tmp = scratch("tmp")
    g = _gradient(w, g, scratch, weight_decay=weight_decay, maximize=maximize)
    m, u = state["exp_avg"], state["exp_inf"]
    m *= beta1                                               # m <- b1 m + (1 - b1) g
    m += np.multiply(g, 1 - beta1, out=tmp)
    u *= beta2                                               # u <- max(b2 u, |g| + eps)
    bound = np.abs(g, out=tmp)
    bound += eps
    np.maximum(u, bound, out=u)
    update = np.divide(m, u, out=tmp)                        # w <- w - lr / (1 - b1^t) (m / u)
    update *= lr / (1 - beta1 ** state["step"])
    w -= update


def _tuned_lion(self, w, g, state, scratch, *, lr, betas, weight_decay, maximize, **_):
    beta1, beta2 = float(betas[0]), float(betas[1])
    tmp, tmp2 = scratch("tmp"), scratch("tmp2")
    g = _gradient(w, g, scratch, weight_decay=0.0, maximize=maximize)
    m = state["exp_avg"]
    interpolated = np.multiply(m, beta1, out=tmp)            # c <- sign(b1 m + (1 - b1) g)
    interpolated += np.multiply(g, 1 - beta1, out=tmp2)
    update = np.sign(interpolated, out=tmp2)                 # not in place: NumPy's in-place sign is ~10x slower
    update += 0.0                                            # sign(-0.0) is -0.0 in NumPy, +0 in the rule
    decay_factor = 1 - lr * weight_decay
    if decay_factor != 1:
        w *= decay_factor                                    # w <- w (1 - lr wd) - lr c
    update *= lr
    w -= update
    m *= beta2                                               # m <- b2 m + (1 - b2) g
    m += np.multiply(g, 1 - beta2, out=tmp)


TUNED_NUMPY_UPDATES: dict[str, Update] = {
    "Momentum": _tuned_momentum,
    "SGD": _tuned_sgd,
    "Adadelta": _tuned_adadelta,
    "Adam": _tuned_adam,
    "AdamW": _tuned_adam,   # decoupled_weight_decay=True in its defaults
    "RMSprop": _tuned_rmsprop,
    "Adagrad": _tuned_adagrad,
    "NAdam": _tuned_nadam,
    "RAdam": _tuned_radam,
    "Adamax": _tuned_adamax,
    "Lion": _tuned_lion,
}


def tuned_numpy_class(name: str) -> type | None:
    return optimizer_class(name, TUNED_NUMPY_UPDATES, "TunedNumpy")

