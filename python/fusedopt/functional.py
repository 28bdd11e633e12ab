"""The kernel layer: one in-place function per rule, for libraries that keep
their own state.

Each function takes one array or a list of arrays for the params, the grads
and each state, and updates them all in place in one call into C++. ``step``
is t, the number of updates *including this one* (1 on the first step), as
an int for all params or a list with one per param. Hyperparameters and
their defaults are those of the classes in :mod:`fusedopt.optimizers`.

    >>> fusedopt.functional.adam_(w, g, m, v, step=1, lr=1e-3)
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from .optimizer import Rule
from .optimizers import SGD, Adadelta, Adam, Momentum

__all__ = ["momentum_", "sgd_", "adadelta_", "adam_", "adamw_"]

Arrays = Union[np.ndarray, Sequence[np.ndarray]]


def momentum_(params: Arrays, grads: Arrays, velocities: Arrays, *, lr: float, momentum: float = 0.9) -> None:
    """``v <- momentum * v - lr * g;  w <- w + v``, in place."""
    _step(Momentum.rule, dict(lr=lr, momentum=momentum), params, grads,
          {"velocity": velocities}, steps=None)


def sgd_(params: Arrays, grads: Arrays, momentum_buffers: Arrays | None = None, *, step: int | Sequence[int],
         lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, maximize: bool = False) -> None:
    """torch.optim.SGD's update, in place. With momentum, ``step == 1`` starts
    the buffer as a copy of the gradient."""
    _step(SGD.rule, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize),
          params, grads, {"momentum_buffer": momentum_buffers}, steps=step)


def adadelta_(params: Arrays, grads: Arrays, square_avgs: Arrays, acc_deltas: Arrays, *, lr: float = 1.0,
              rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0, maximize: bool = False,
              scale: str = "updates") -> None:
    """Adadelta's update, in place. With ``scale="weights"`` the fourth
    argument holds the running average of squared weights instead of
    squared updates."""
    scale_key = "square_weight_avg" if scale == "weights" else "acc_delta"
    _step(Adadelta.rule, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                              scale=scale),
          params, grads, {"square_avg": square_avgs, scale_key: acc_deltas}, steps=None)


def adam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays,
          max_exp_avg_sqs: Arrays | None = None, *, step: int | Sequence[int], lr: float = 1e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
    """torch.optim.Adam's update at step t = ``step``, in place."""
    _step(Adam.rule, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
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


def _as_arrays(value: Arrays, name: str) -> list:
    if isinstance(value, np.ndarray):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be an ndarray or a list of ndarrays, got {type(value).__name__}")
    return list(value)


def _step(rule: Rule, hyper: dict[str, Any], params: Arrays, grads: Arrays,
          states: dict[str, Arrays | None], steps: int | Sequence[int] | None) -> None:
    """Wrap the arrays as one param group and run the rule's step on it."""
    group = {"params": _as_arrays(params, "params"), **hyper}
    count = len(group["params"])
    grads = _as_arrays(grads, "grads")
    rule.check_group(group, 0)
    needed = rule.state_keys(group)

    if steps is None:  # rules without bias correction or first-step rule
        steps = [1] * count
    elif isinstance(steps, (list, tuple)):
        steps = list(steps)
    else:
        steps = [steps] * count
    if len(steps) != count:
        raise ValueError(f"step has {len(steps)} entries, params has {count}")
    for i, t in enumerate(steps):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
            raise ValueError(f"step[{i}] must be an int >= 1 (t counts this update), got {t!r}")

    columns = {}
    for key in needed:
        arrays = states.get(key)
        if arrays is None:
            raise ValueError(f"{_argument_name(key)} is required with these settings")
        columns[key] = _as_arrays(arrays, _argument_name(key))
        if len(columns[key]) != count:
            raise ValueError(f"{_argument_name(key)} has {len(columns[key])} arrays, params has {count}")
    state = [{"step": int(steps[i]) - 1, **{key: columns[key][i] for key in needed}} for i in range(count)]
    rule.step([group], grads, state)


def _argument_name(state_key: str) -> str:
    """The functional argument that holds a state key, e.g. exp_avg -> exp_avgs."""
    return {"square_weight_avg": "acc_deltas"}.get(state_key, state_key + "s")
