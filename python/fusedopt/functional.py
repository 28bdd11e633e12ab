"""The kernel layer: one in-place function per rule, for libraries that keep
their own state.

Each function takes one array or a list of arrays for the params, the grads
and each state, and updates them all in place in one call into C++. ``step``
is t, the number of updates *including this one* (1 on the first step), as
an int for all params or a list with one per param. Hyperparameters and
their defaults are those of the classes in :mod:`fusedopt.optimizers`
(which build on the same rules, ``_core.adam`` and so on, not on these).

    >>> fusedopt.functional.adam_(w, g, m, v, step=1, lr=1e-3)

Also here, re-exported at the top level: gradient clipping as
``torch.nn.utils`` does it (:func:`clip_grad_norm_`, :func:`clip_grad_value_`,
:func:`get_total_norm`), each one fused pass over all the arrays.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import math

import numpy as np

from . import _core
from .rule import MAX_STEP, NonFiniteGradError, Rule

__all__ = ["momentum_", "sgd_", "adadelta_", "adam_", "adamw_", "rmsprop_", "adagrad_", "nadam_", "radam_",
           "adamax_", "lion_", "clip_grad_norm_", "clip_grad_value_", "get_total_norm"]

Arrays = Union[np.ndarray, Sequence[np.ndarray]]


def momentum_(params: Arrays, grads: Arrays, velocities: Arrays, *, lr: float, momentum: float = 0.9) -> None:
    """``v <- momentum * v - lr * g;  w <- w + v``, in place."""
    _step(_core.momentum, dict(lr=lr, momentum=momentum), params, grads,
          {"velocity": velocities}, steps=None)


def sgd_(params: Arrays, grads: Arrays, momentum_buffers: Arrays | None = None, *, step: int | Sequence[int],
         lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, maximize: bool = False) -> None:
    """torch.optim.SGD's update, in place. With momentum, ``step == 1`` starts
    the buffer as a copy of the gradient."""
    _step(_core.sgd, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize),
          params, grads, {"momentum_buffer": momentum_buffers}, steps=step)


def adadelta_(params: Arrays, grads: Arrays, square_avgs: Arrays, acc_deltas: Arrays, *, lr: float = 1.0,
              rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0, maximize: bool = False,
              scale: str = "updates") -> None:
    """Adadelta's update, in place. With ``scale="weights"`` the fourth
    argument holds the running average of squared weights instead of
    squared updates."""
    scale_key = "square_weight_avg" if scale == "weights" else "acc_delta"
    _step(_core.adadelta, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                              scale=scale),
          params, grads, {"square_avg": square_avgs, scale_key: acc_deltas}, steps=None)


def adam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          max_exp_avg_sqs: Arrays | None = None, *, step: int | Sequence[int], lr: float = 1e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
    """torch.optim.Adam's update at step t = ``step``, in place."""
    _step(_core.adam, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                          maximize=maximize, decoupled_weight_decay=decoupled_weight_decay),
          params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs, "max_exp_avg_sq": max_exp_avg_sqs},
          steps=step)


def adamw_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
           max_exp_avg_sqs: Arrays | None = None, *, step: int | Sequence[int], lr: float = 1e-3,
           betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
           amsgrad: bool = False, maximize: bool = False) -> None:
    """torch.optim.AdamW's update (decoupled weight decay), in place."""
    adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step=step, lr=lr, betas=betas, eps=eps,
          weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)


def rmsprop_(params: Arrays, grads: Arrays, square_avgs: Arrays, momentum_buffers: Arrays | None = None,
             grad_avgs: Arrays | None = None, *, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
             weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
             maximize: bool = False) -> None:
    """torch.optim.RMSprop's update, in place. ``momentum_buffers`` are needed
    with momentum > 0, ``grad_avgs`` with centered."""
    _step(_core.rmsprop, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                             centered=centered, maximize=maximize),
          params, grads, {"square_avg": square_avgs, "momentum_buffer": momentum_buffers, "grad_avg": grad_avgs},
          steps=None)


def adagrad_(params: Arrays, grads: Arrays, state_sums: Arrays, *, step: int | Sequence[int], lr: float = 1e-2,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10, maximize: bool = False) -> None:
    """torch.optim.Adagrad's update at step t = ``step``, in place (``state_sums``
    start at the initial accumulator value: that is the caller's choice here)."""
    _step(_core.adagrad, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, initial_accumulator_value=0.0,
                             eps=eps, maximize=maximize),
          params, grads, {"sum": state_sums}, steps=step)


def nadam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, mu_products: Sequence[float],
           *, step: int | Sequence[int], lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
           decoupled_weight_decay: bool = False, maximize: bool = False) -> list[float]:
    """torch.optim.NAdam's update at step t = ``step``, in place.

    ``mu_products`` holds each param's product of momentum coefficients before
    this step (1.0 before the first); floats cannot be updated in place, so
    the products after this step are returned, one per param.
    """
    state = _step(_core.nadam, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                   momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                   maximize=maximize),
                  params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}, steps=step,
                  scalars={"mu_product": mu_products})
    return [entry["mu_product"] for entry in state]


def radam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, *, step: int | Sequence[int],
           lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0, decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """torch.optim.RAdam's update at step t = ``step``, in place."""
    _step(_core.radam, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                           decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
          params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}, steps=step)


def adamax_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_infs: Arrays, *, step: int | Sequence[int],
            lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
            weight_decay: float = 0.0, maximize: bool = False) -> None:
    """torch.optim.Adamax's update at step t = ``step``, in place."""
    _step(_core.adamax, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize),
          params, grads, {"exp_avg": exp_avgs, "exp_inf": exp_infs}, steps=step)


def lion_(params: Arrays, grads: Arrays, exp_avgs: Arrays, *, lr: float = 1e-4,
          betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, maximize: bool = False) -> None:
    """Lion's update, in place."""
    _step(_core.lion, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize),
          params, grads, {"exp_avg": exp_avgs}, steps=None)


# ------------------------------------------------------------------ clipping

def get_total_norm(grads: Arrays, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> float:
    """The ``norm_type``-norm of all ``grads`` taken as one vector, as
    ``torch.nn.utils.get_total_norm`` computes it, as a Python float.

    ``norm_type`` is any p > 0 or ``inf``. One fused pass in C++ that
    accumulates in double, in fixed blocks combined in a fixed order, so the
    result is the same to the last bit for every thread count (and target).
    ``None`` entries are skipped. ``foreach`` is accepted for torch's
    signature and ignored: the pass is always fused.
    """
    grads = _as_arrays(grads, "grads")
    norm_type = _norm_type(norm_type)
    _check_flag(error_if_nonfinite, "error_if_nonfinite")
    _check_foreach(foreach)
    total = _core.grad_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        index = _core.first_nonfinite(grads)
        culprit = (f"grads[{index}] holds a NaN or an infinity" if index is not None
                   else "every gradient is finite, but the norm overflows")
        raise NonFiniteGradError(
            f"the total norm of order {norm_type} of the gradients is {total} ({culprit}), so they cannot "
            "be clipped; nothing was changed. Pass error_if_nonfinite=False to scale them by it anyway.",
            index,
        )
    return total


def clip_grad_norm_(grads: Arrays, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> float:
    """Scale ``grads`` in place so that their total norm is at most ``max_norm``,
    as ``torch.nn.utils.clip_grad_norm_`` does; returns the total norm (before
    clipping) as a Python float.

    The total norm is :func:`get_total_norm`'s; every grad is then multiplied
    by ``min(max_norm / (total_norm + 1e-6), 1)`` in a second fused pass
    (skipped when that is 1). The coefficient is computed in double and
    rounded to each array's dtype; torch computes it in the grads' dtype, so
    float32 results may differ from torch's by that rounding. A NaN norm makes
    every grad NaN and an infinite one zeroes the finite entries, as in torch,
    unless ``error_if_nonfinite`` raises :class:`NonFiniteGradError` first.
    """
    grads = _as_arrays(grads, "grads")
    max_norm = _finite_at_least_zero(max_norm, "max_norm")
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    coefficient = max_norm / (total + 1e-6)
    if not coefficient >= 1.0:  # clamp to 1; a NaN coefficient is applied, as torch does
        _core.scale_grads(grads, coefficient)
    return total


def clip_grad_value_(grads: Arrays, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every element of ``grads`` to ``[-clip_value, clip_value]`` in place,
    in one fused pass, as ``torch.nn.utils.clip_grad_value_`` does (NaN stays NaN)."""
    grads = _as_arrays(grads, "grads")
    clip_value = _finite_at_least_zero(clip_value, "clip_value")
    _check_foreach(foreach)
    _core.clamp_grads(grads, clip_value)


def _real(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _finite_at_least_zero(value: object, name: str) -> float:
    x = _real(value, name)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return x


def _norm_type(value: object) -> float:
    if isinstance(value, str) and value.lower() == "inf":
        return math.inf
    p = _real(value, "norm_type")
    if not p > 0:
        raise ValueError(f"norm_type must be a number > 0 or inf, got {p!r}")
    return p


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_foreach(foreach: object) -> None:
    if foreach is not None:
        _check_flag(foreach, "foreach")


def _as_arrays(value: Arrays, name: str) -> list:
    if isinstance(value, np.ndarray):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be an ndarray or a list of ndarrays, got {type(value).__name__}")
    return list(value)


def _step(rule: Rule, hyper: dict[str, Any], params: Arrays, grads: Arrays,
          states: dict[str, Arrays | None], steps: int | Sequence[int] | None,
          scalars: dict[str, Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Wrap the arrays as one param group and run the rule's step on it;
    returns the per-param state dicts after the step."""
    group = {"params": _as_arrays(params, "params"), **hyper}
    count = len(group["params"])
    grads = _as_arrays(grads, "grads")
    rule.check_group(group, 0)
    needed = rule.state_keys(group)
    scalar_keys = rule.state_spec(group)[1]

    if steps is None:  # rules without bias correction or first-step rule
        steps = [1] * count
    elif isinstance(steps, (list, tuple)):
        steps = list(steps)
    else:
        steps = [steps] * count
    if len(steps) != count:
        raise ValueError(f"step has {len(steps)} entries, params has {count}")
    for i, t in enumerate(steps):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= MAX_STEP:
            raise ValueError(f"step[{i}] must be an int >= 1 (t counts this update) and <= 2**53 - 1, got {t!r}")

    columns = {}
    for key in needed:
        arrays = states.get(key)
        if arrays is None:
            raise ValueError(f"{_argument_name(key)} is required with these settings")
        columns[key] = _as_arrays(arrays, _argument_name(key))
        if len(columns[key]) != count:
            raise ValueError(f"{_argument_name(key)} has {len(columns[key])} arrays, params has {count}")
    for key in scalar_keys:
        values = list((scalars or {}).get(key, ()))
        if len(values) != count:
            raise ValueError(f"{_argument_name(key)} has {len(values)} values, params has {count}")
        columns[key] = values
    state = [{"step": int(steps[i]) - 1, **{key: column[i] for key, column in columns.items()}}
             for i in range(count)]
    rule.step([group], grads, state)
    return state


def _argument_name(state_key: str) -> str:
    """The functional argument that holds a state key, e.g. exp_avg -> exp_avgs."""
    return {"square_weight_avg": "acc_deltas", "sum": "state_sums"}.get(state_key, state_key + "s")
