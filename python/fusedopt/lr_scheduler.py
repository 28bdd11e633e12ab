"""Learning-rate schedulers that edit an optimizer's ``param_groups`` between steps.

The classes mirror ``torch.optim.lr_scheduler``: same names, constructor
arguments and defaults, and the same learning rates, float for float, because
each one follows the formula torch uses (recursive from the current lr, or
closed form from the base lr) in the same order of operations. They ask
nothing of the optimizer but ``param_groups``, a list of dicts each holding a
float ``"lr"`` (plus ``"momentum"``, or ``"betas"`` whose first entry is beta1,
when momentum is cycled), and a ``defaults`` dict; so they drive fusedopt's
optimizers and torch's alike::

    scheduler = StepLR(optimizer, step_size=30, gamma=0.1)
    for epoch in range(100):
        train_one_epoch(optimizer)   # calls optimizer.step()
        scheduler.step()

On construction a scheduler stores each group's starting lr in
``group["initial_lr"]`` (unless it is already there) and applies the lr for
step 0. ``ScheduleLR`` lets a ``fusedopt.schedules`` function drive the lr.

``state_dict()`` holds plain Python values only (numbers, strings, lists,
dicts: no functions, no optimizer), so a checkpoint can keep it as JSON or in
an ``.npz``. To restore, as in torch: build the optimizer and the scheduler,
load the optimizer's state, then ``scheduler.load_state_dict(state)``.

Differences from torch: there is no deprecated ``step(epoch)`` and no warning
about call order; functions passed in (``lr_lambda``, ``scale_fn``,
``schedule``) are never saved, not even a callable object's attributes; bad
arguments raise a ValueError or TypeError naming the argument at construction.
"""

from __future__ import annotations

import copy
import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .schedules import Schedule, _cosine_interpolate, _linear_interpolate

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "CyclicLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ScheduleLR",
]


# ---------------------------------------------------------------------------
# Argument checks, shared by every scheduler


def _check_optimizer(optimizer: Any) -> Any:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise TypeError(
            f"optimizer must have a param_groups list of dicts, got {type(optimizer).__name__}"
        )
    return optimizer


def _as_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_float(
    name: str,
    value: Any,
    requirement: str | None = None,
    is_valid: Callable[[float], bool] | None = None,
) -> float:
    """``value`` as a float; TypeError if it is not a real number, ValueError
    (saying ``name`` must be ``requirement``) if ``is_valid`` rejects it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if is_valid is not None and not is_valid(value):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return float(value)


def _one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _per_group(name: str, value: Any, optimizer: Any) -> list[float]:
    """One float per param group: a list/tuple of that length, or one number for all."""
    count = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"{name} needs one value per param group: the optimizer has "
                f"{count} groups, {name} has {len(value)} values"
            )
        return [_as_float(f"{name}[{i}]", item) for i, item in enumerate(value)]
    return [_as_float(name, value)] * count


def _per_group_functions(name: str, value: Any, optimizer: Any) -> list[Callable]:
    """One function per param group: a list/tuple of that length, or one for all."""
    count = len(optimizer.param_groups)
    functions = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(functions) != count:
        raise ValueError(
            f"{name} needs one function per param group: the optimizer has "
            f"{count} groups, {name} has {len(functions)} functions"
        )
    for function in functions:
        if not callable(function):
            raise TypeError(f"{name} must be callable or a list of callables, got {function!r}")
    return functions


# ---------------------------------------------------------------------------
# The base class: everything that is the same for every rule


class LRScheduler:
    """Base class: links an optimizer, counts steps, writes lrs into the groups.

    ``last_epoch`` is the index of the step whose lr is in the groups now (0
    right after construction). ``base_lrs`` are the groups' ``"initial_lr"``.

    A subclass states its rule once, for one group, in ``_next_lr(index, group)``:
    the lr for step ``last_epoch``, computed like torch from the group's current
    ``group["lr"]`` (recursive form) or from ``base_lrs[index]``. If the rule also
    has a closed form in the base lr alone, the subclass defines
    ``_closed_form_lr(base_lr)``; SequentialLR uses it to restart the rule at a
    milestone. A subclass written for torch that overrides ``get_lr()`` instead
    works too.

    Args:
        optimizer: has ``param_groups`` (list of dicts with ``"lr"``) and ``defaults``.
        last_epoch: -1 to start afresh; the index of the last step taken to
            resume (the groups must then hold ``"initial_lr"``).
    """

    # Attributes that are links or functions, not state: left out of state_dict().
    _unsaved_attributes: tuple[str, ...] = ("optimizer", "_in_initial_step")
    # Subclasses with a closed form define `_closed_form_lr(self, base_lr) -> float`.
    _closed_form_lr: Callable[[float], float] | None = None

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        self.optimizer = _check_optimizer(optimizer)
        last_epoch = _as_int("last_epoch", last_epoch, minimum=-1)
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            missing = [i for i, group in enumerate(groups) if "initial_lr" not in group]
            if missing:
                raise KeyError(
                    f"param_groups {missing} have no 'initial_lr': resuming with "
                    f"last_epoch={last_epoch} needs the optimizer state saved with "
                    f"the scheduler; load it before building the scheduler"
                )
        self.base_lrs: list[float] = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def step(self) -> None:
        """Move to the next step and write its lrs into the groups.

        Call it after ``optimizer.step()``.
        """
        self.last_epoch += 1
        self._write_lrs(self.get_lr())

    def get_lr(self) -> list[float]:
        """The lr of every group for step ``last_epoch``; ``step()`` calls it.

        To read the lrs in use, call ``get_last_lr()``.
        """
        groups = self.optimizer.param_groups
        return [self._next_lr(index, group) for index, group in enumerate(groups)]

    def get_last_lr(self) -> list[float]:
        """The lrs this scheduler last wrote, one per param group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as plain Python values (no optimizer, no functions)."""
        return {
            name: copy.deepcopy(value)
            for name, value in vars(self).items()
            if name not in self._unsaved_attributes
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()`` (the optimizer's state is restored separately)."""
        vars(self).update(copy.deepcopy(state_dict))

    def _next_lr(self, index: int, group: dict) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define _next_lr or get_lr")

    def _initial_step(self) -> None:
        # Some rules need to know they are being built: a scheduler resumed with
        # last_epoch >= 0 must not, say, decay the restored lr once more.
        self._in_initial_step = True
        try:
            self.step()
        finally:
            self._in_initial_step = False

    def _restart(self) -> None:
        """Jump back to step 0, by the closed form where there is one (as torch does)."""
        self.last_epoch = 0
        if self._closed_form_lr is None:
            self._write_lrs(self.get_lr())
        else:
            self._write_lrs([self._closed_form_lr(base_lr) for base_lr in self.base_lrs])

    def _rewind(self) -> None:
        """Undo the construction step's count; SequentialLR replays that step for
        the scheduler it starts with."""
        self.last_epoch -= 1

    def _write_lrs(self, lrs: Sequence[float]) -> None:
        groups = self.optimizer.param_groups
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]


# ---------------------------------------------------------------------------
# Rules of the step count alone


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(step).

    Args:
        lr_lambda: function of the step index giving a factor, or a list of
            such functions, one per param group. Not saved in ``state_dict()``.
    """

    _unsaved_attributes = LRScheduler._unsaved_attributes + ("lr_lambdas",)

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.lr_lambdas = _per_group_functions("lr_lambda", lr_lambda, _check_optimizer(optimizer))
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        return self.base_lrs[index] * self.lr_lambdas[index](self.last_epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (step // step_size): decay by gamma every step_size steps."""

    def __init__(
        self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = _as_int("step_size", step_size, minimum=1)
        self.gamma = _as_float("gamma", gamma, ">= 0", lambda g: g >= 0)
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        if self.last_epoch > 0 and self.last_epoch % self.step_size == 0:
            return group["lr"] * self.gamma
        return group["lr"]

    def _closed_form_lr(self, base_lr: float) -> float:
        return base_lr * self.gamma ** (self.last_epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= step).

    A milestone listed twice decays twice, as in torch.
    """

    def __init__(
        self,
        optimizer: Any,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = sorted(
            _as_int(f"milestones[{i}]", milestone, minimum=0)
            for i, milestone in enumerate(milestones)
        )
        self.gamma = _as_float("gamma", gamma, ">= 0", lambda g: g >= 0)
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        hits = self.milestones.count(self.last_epoch)
        return group["lr"] * self.gamma**hits if hits else group["lr"]

    def _closed_form_lr(self, base_lr: float) -> float:
        return base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** step."""

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _as_float("gamma", gamma, ">= 0", lambda g: g >= 0)
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        if self._in_initial_step:
            return group["lr"]
        return group["lr"] * self.gamma

    def _closed_form_lr(self, base_lr: float) -> float:
        return base_lr * self.gamma**self.last_epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2.

    Computed recursively, as torch does: each step multiplies ``lr - eta_min``
    by the ratio of consecutive cosine terms. Past T_max the lr climbs back,
    a cosine of period 2 * T_max (no warm restarts).
    """

    def __init__(
        self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = _as_int("T_max", T_max, minimum=1)
        self.eta_min = _as_float("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        if self._in_initial_step:
            return group["lr"]
        step, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        if (step - 1 - period) % (2 * period) == 0:
            # Leaving the trough, the ratio below would divide by zero: step up by
            # the closed form's first increment instead.
            first_increment = (1 - math.cos(math.pi / period)) / 2
            return group["lr"] + (self.base_lrs[index] - eta_min) * first_increment
        cosine_now = 1 + math.cos(math.pi * step / period)
        cosine_before = 1 + math.cos(math.pi * (step - 1) / period)
        return cosine_now / cosine_before * (group["lr"] - eta_min) + eta_min

    def _closed_form_lr(self, base_lr: float) -> float:
        cosine = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * cosine / 2


class LinearLR(LRScheduler):
    """lr = base_lr * factor, factor going linearly from start_factor to end_factor.

        factor(step) = start_factor
                       + (end_factor - start_factor) * min(step, total_iters) / total_iters

    applied recursively as torch does: each step multiplies the lr by
    factor(step) / factor(step - 1).
    """

    def __init__(
        self,
        optimizer: Any,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self.start_factor = _as_float(
            "start_factor", start_factor, "in (0, 1]", lambda f: 0 < f <= 1
        )
        self.end_factor = _as_float("end_factor", end_factor, "in [0, 1]", lambda f: 0 <= f <= 1)
        self.total_iters = _as_int("total_iters", total_iters, minimum=1)
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        if self.last_epoch == 0:
            return group["lr"] * self.start_factor
        if self._in_initial_step or self.last_epoch > self.total_iters:
            return group["lr"]
        change = self.end_factor - self.start_factor
        # total_iters * factor(step - 1), so the ratio below is factor(step) / factor(step - 1)
        previous = self.total_iters * self.start_factor + (self.last_epoch - 1) * change
        return group["lr"] * (1.0 + change / previous)

    def _closed_form_lr(self, base_lr: float) -> float:
        progress = min(self.total_iters, self.last_epoch) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


# ---------------------------------------------------------------------------
# Cyclical rules, which may also move momentum opposite to the lr


class _MomentumCyclingScheduler(LRScheduler):
    """Shared by CyclicLR and OneCycleLR: with ``cycle_momentum``, every time the
    lrs are written, each group's momentum (``"momentum"``, or beta1, the first
    of ``"betas"``) is set to ``_next_momentum(index, group)``."""

    def _setup_momentum_cycling(
        self,
        optimizer: Any,
        cycle_momentum: bool,
        base_momentum: float | Sequence[float],
        max_momentum: float | Sequence[float],
        last_epoch: int,
    ) -> tuple[list[float], list[float]]:
        """Check the optimizer has a momentum to cycle and return the per-group
        (base, max) momentum. On a fresh start, put max_momentum in the groups and
        keep both bounds there as "base_momentum" and "max_momentum", as torch does."""
        self.cycle_momentum = bool(cycle_momentum)
        if not self.cycle_momentum:
            return [], []
        if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
            raise ValueError(
                "cycle_momentum=True needs an optimizer with 'momentum' or 'betas' "
                "in its defaults; pass cycle_momentum=False"
            )
        self.use_beta1 = "betas" in optimizer.defaults
        base_momentums = _per_group("base_momentum", base_momentum, optimizer)
        max_momentums = _per_group("max_momentum", max_momentum, optimizer)
        if last_epoch == -1:
            for group, low, high in zip(optimizer.param_groups, base_momentums, max_momentums):
                self._set_momentum(group, high)
                group["max_momentum"] = high
                group["base_momentum"] = low
        return base_momentums, max_momentums

    def _next_momentum(self, index: int, group: dict) -> float:
        raise NotImplementedError

    def _set_momentum(self, group: dict, momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _write_lrs(self, lrs: Sequence[float]) -> None:
        if self.cycle_momentum:
            for index, group in enumerate(self.optimizer.param_groups):
                self._set_momentum(group, self._next_momentum(index, group))
        super()._write_lrs(lrs)


# For each built-in CyclicLR mode, what its amplitude scale is a function of.
_CYCLIC_MODES = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


class CyclicLR(_MomentumCyclingScheduler):
    """Cyclical learning rate (Smith 2017): lr goes from base_lr up to max_lr and back.

    A cycle is step_size_up steps up then step_size_down steps down. With
    ``height`` the position in the cycle (0 at base_lr, 1 at the top):

        lr       = base_lr + (max_lr - base_lr) * height * scale
        momentum = max_momentum - (max_momentum - base_momentum) * height * scale

    where ``scale`` is 1 ("triangular"), 1 / 2 ** (cycle - 1) ("triangular2"),
    gamma ** step ("exp_range"), or ``scale_fn`` of the cycle number (from 1)
    or of the step, as ``scale_mode`` says.
    """

    _unsaved_attributes = _MomentumCyclingScheduler._unsaved_attributes + ("_custom_scale_fn",)

    def __init__(
        self,
        optimizer: Any,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        base_lrs = _per_group("base_lr", base_lr, optimizer)
        self.max_lrs = _per_group("max_lr", max_lr, optimizer)
        steps_up = _as_float("step_size_up", step_size_up, "> 0", lambda s: s > 0)
        steps_down = steps_up if step_size_down is None else _as_float(
            "step_size_down", step_size_down, "> 0", lambda s: s > 0
        )
        self.total_size = steps_up + steps_down
        self.step_ratio = steps_up / self.total_size

        if scale_fn is None:
            self.mode = _one_of("mode", mode, _CYCLIC_MODES)
            self.scale_mode = _CYCLIC_MODES[mode]  # torch ignores scale_mode here too
        else:
            if not callable(scale_fn):
                raise TypeError(f"scale_fn must be callable, got {scale_fn!r}")
            self.mode = mode
            self.scale_mode = _one_of("scale_mode", scale_mode, ("cycle", "iterations"))
        self.gamma = _as_float("gamma", gamma, "> 0", lambda g: g > 0)
        self._custom_scale_fn = scale_fn

        self.base_momentums, self.max_momentums = self._setup_momentum_cycling(
            optimizer, cycle_momentum, base_momentum, max_momentum, last_epoch
        )
        if last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr
        super().__init__(optimizer, last_epoch)
        # Set only now, as torch does: the construction step used the groups'
        # "initial_lr", which differs from base_lr if another scheduler set it.
        self.base_lrs = base_lrs

    def _next_lr(self, index: int, group: dict) -> float:
        height, scale = self._position()
        base_lr = self.base_lrs[index]
        return base_lr + (self.max_lrs[index] - base_lr) * height * scale

    def _next_momentum(self, index: int, group: dict) -> float:
        height, scale = self._position()
        top = self.max_momentums[index]
        return top - (top - self.base_momentums[index]) * height * scale

    def _position(self) -> tuple[float, float]:
        """(height in the cycle, 0 at the bottom and 1 at the top; amplitude scale)."""
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        fraction = 1.0 + self.last_epoch / self.total_size - cycle
        if fraction <= self.step_ratio:
            height = fraction / self.step_ratio
        else:
            height = (fraction - 1) / (self.step_ratio - 1)
        scale_argument = cycle if self.scale_mode == "cycle" else self.last_epoch
        return height, self._scale(scale_argument)

    def _scale(self, x: float) -> float:
        if self._custom_scale_fn is not None:
            return self._custom_scale_fn(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x  # exp_range


class OneCycleLR(_MomentumCyclingScheduler):
    """The 1cycle policy (Smith & Topin 2017), as in fastai and torch.

    Over total_steps, the lr anneals from initial_lr = max_lr / div_factor up
    to max_lr (the first pct_start of the steps), then down to
    min_lr = initial_lr / final_div_factor. With ``three_phase`` it comes back
    to initial_lr symmetrically first, and only the third phase goes to min_lr.
    Momentum moves the other way between max_momentum and base_momentum.
    Within a phase running from step a to step b:

        pct = (step - a) / (b - a)
        cos:    value = end + (start - end) / 2 * (1 + cos(pi * pct))
        linear: value = start + (end - start) * pct

    The phase bounds, like torch's, are a = previous b and b = pct_start *
    total_steps - 1, (2 * pct_start * total_steps - 2), total_steps - 1. As in
    torch, step() may be called total_steps times (the last one runs a little
    past the end of the final phase); once more raises ValueError.
    """

    def __init__(
        self,
        optimizer: Any,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = _as_int("total_steps", total_steps, minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _as_int("epochs", epochs, minimum=1) * _as_int(
                "steps_per_epoch", steps_per_epoch, minimum=1
            )
        else:
            raise ValueError("OneCycleLR needs total_steps, or both epochs and steps_per_epoch")
        pct_start = _as_float("pct_start", pct_start, "in [0, 1]", lambda p: 0 <= p <= 1)
        self.anneal_strategy = _one_of("anneal_strategy", anneal_strategy, ("cos", "linear"))
        div_factor = _as_float("div_factor", div_factor, "> 0", lambda d: d > 0)
        final_div_factor = _as_float("final_div_factor", final_div_factor, "> 0", lambda d: d > 0)

        # Each phase names the group keys it anneals between.
        up = {"start_lr": "initial_lr", "end_lr": "max_lr",
              "start_momentum": "max_momentum", "end_momentum": "base_momentum"}
        if three_phase:
            self.phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, **up},
                {"end_step": float(2 * pct_start * self.total_steps) - 2,
                 "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": self.total_steps - 1,
                 "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self.phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, **up},
                {"end_step": self.total_steps - 1,
                 "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]

        max_lrs = _per_group("max_lr", max_lr, optimizer)
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
        # The momentum bounds live in the groups, like the lr bounds.
        self._setup_momentum_cycling(
            optimizer, cycle_momentum, base_momentum, max_momentum, last_epoch
        )
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        phase, pct = self._phase()
        return self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)

    def _next_momentum(self, index: int, group: dict) -> float:
        phase, pct = self._phase()
        return self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)

    def _phase(self) -> tuple[dict, float]:
        """The phase the current step is in, and how far through it (0 to 1)."""
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped {step} times, more than total_steps={self.total_steps}"
            )
        start_step = 0.0
        for phase in self.phases:
            if step <= phase["end_step"] or phase is self.phases[-1]:
                return phase, (step - start_step) / (phase["end_step"] - start_step)
            start_step = phase["end_step"]
        raise AssertionError("unreachable: the last phase always matches")

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return _cosine_interpolate(start, end, pct)
        return _linear_interpolate(start, end, pct)


# ---------------------------------------------------------------------------
# Rules driven from outside: a metric, other schedulers, a schedule function


class ReduceLROnPlateau(LRScheduler):
    """Cut the lr by ``factor`` once a metric has stopped improving for ``patience`` steps.

    ``step(metric)`` counts a "bad" step when the metric fails to beat the
    best so far by the threshold: in mode "min" with threshold_mode "rel" it
    must be below best * (1 - threshold); "abs": below best - threshold; mode
    "max" mirrors this (above best * (1 + threshold), above best + threshold).
    After more than ``patience`` bad steps in a row, each group's lr becomes
    max(lr * factor, min_lr), unless that changes it by eps or less; then
    ``cooldown`` steps pass before bad steps count again. Unlike the other
    schedulers it sets no ``"initial_lr"`` and has no construction step.
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        self.optimizer = _check_optimizer(optimizer)
        self.mode = _one_of("mode", mode, ("min", "max"))
        self.factor = _as_float("factor", factor, "in [0, 1)", lambda f: 0 <= f < 1)
        self.patience = _as_int("patience", patience, minimum=0)
        self.threshold = _as_float("threshold", threshold, ">= 0", lambda t: t >= 0)
        self.threshold_mode = _one_of("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = _as_int("cooldown", cooldown, minimum=0)
        self.min_lrs = _per_group("min_lr", min_lr, optimizer)
        self.eps = _as_float("eps", eps, ">= 0", lambda e: e >= 0)
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Record this step's metric (e.g. the validation loss); cut the lr on a plateau."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad steps during cooldown do not count
        plateau = self.num_bad_epochs > self.patience
        if plateau:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        # Without a plateau, write back the groups' own lrs: get_last_lr() then
        # follows changes made outside, as in torch.
        groups = self.optimizer.param_groups
        self._write_lrs(self.get_lr() if plateau else [group["lr"] for group in groups])

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _next_lr(self, index: int, group: dict) -> float:
        old_lr = group["lr"]
        new_lr = max(old_lr * self.factor, self.min_lrs[index])
        return new_lr if old_lr - new_lr > self.eps else old_lr

    def _is_better(self, metric: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return metric < self.best * (1.0 - self.threshold)
            return metric < self.best - self.threshold
        if self.threshold_mode == "rel":
            return metric > self.best * (self.threshold + 1.0)
        return metric > self.best + self.threshold


class SequentialLR(LRScheduler):
    """Hand over from one scheduler to the next at each milestone.

    Before ``milestones[0]`` steps ``schedulers[0]`` runs, then ``schedulers[1]``
    (restarted at its own step 0), and so on. On construction the groups' lrs
    go back to ``"initial_lr"`` and the first scheduler's step 0 is applied
    again, undoing whatever the other schedulers did when they were built.
    """

    _unsaved_attributes = LRScheduler._unsaved_attributes + ("schedulers",)

    def __init__(
        self,
        optimizer: Any,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = _check_optimizer(optimizer)
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError("schedulers must hold at least one scheduler")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"schedulers[{i}] must be an LRScheduler, got {scheduler!r}")
            if isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(
                    f"schedulers[{i}] is a ReduceLROnPlateau, which needs a metric "
                    "at each step and cannot run inside SequentialLR"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] drives another optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"milestones must have one entry fewer than schedulers, got "
                f"{len(milestones)} milestones for {len(schedulers)} schedulers"
            )
        milestones = [_as_int(f"milestones[{i}]", m, minimum=0) for i, m in enumerate(milestones)]
        if any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be increasing, got {milestones}")

        self.schedulers = schedulers
        self.milestones = milestones
        self.last_epoch = _as_int("last_epoch", last_epoch, minimum=-1) + 1
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for scheduler in schedulers:
            scheduler._rewind()
        first = schedulers[bisect_right(milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self) -> None:
        """Step the scheduler in charge now, restarting it if it takes over at this step."""
        self.last_epoch += 1
        index = bisect_right(self.milestones, self.last_epoch)
        scheduler = self.schedulers[index]
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _rewind(self) -> None:
        for scheduler in self.schedulers:
            scheduler._rewind()

    def state_dict(self) -> dict[str, Any]:
        """Own state plus every wrapped scheduler's, under "schedulers"."""
        state = super().state_dict()
        state["schedulers"] = [scheduler.state_dict() for scheduler in self.schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own_state = {key: value for key, value in state_dict.items() if key != "schedulers"}
        super().load_state_dict(own_state)
        saved_states = state_dict["schedulers"]
        for scheduler, saved_state in zip(self.schedulers, saved_states, strict=True):
            scheduler.load_state_dict(saved_state)


class ScheduleLR(LRScheduler):
    """lr = schedule(step): drive the optimizer with a ``fusedopt.schedules`` function.

    The bridge from optax-style schedules to this module. Unlike LambdaLR,
    whose function gives a factor of the base lr, ``schedule`` gives the lr
    itself; the groups' own ``"lr"`` values are replaced::

        schedule = warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=100, decay_steps=1000)
        scheduler = ScheduleLR(optimizer, schedule)   # every group's lr = schedule(0)
        for batch in batches:
            ...; optimizer.step(); scheduler.step()   # lr = schedule(1), schedule(2), ...

    Args:
        schedule: function of the step index giving the lr, or a list of such
            functions, one per param group. Not saved in ``state_dict()``.
    """

    _unsaved_attributes = LRScheduler._unsaved_attributes + ("schedules",)

    def __init__(
        self, optimizer: Any, schedule: Schedule | Sequence[Schedule], last_epoch: int = -1
    ) -> None:
        self.schedules = _per_group_functions("schedule", schedule, _check_optimizer(optimizer))
        super().__init__(optimizer, last_epoch)

    def _next_lr(self, index: int, group: dict) -> float:
        return float(self.schedules[index](self.last_epoch))
