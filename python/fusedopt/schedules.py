"""Schedules as pure functions of the step count, in the style of optax.

Each factory here returns ``schedule(count) -> float``: no state, no optimizer,
just the value for step ``count`` (0 on the first step). Names, argument names
and values follow ``optax.schedules``, so an optax recipe carries over as is;
the difference is that these work on Python numbers, not JAX arrays.

Small pieces compose: ``join_schedules`` runs one schedule after another, and
``warmup_cosine_decay_schedule`` is a ``linear_schedule`` joined to a
``cosine_decay_schedule``. To drive an optimizer with a schedule, wrap it in
``fusedopt.lr_scheduler.ScheduleLR(optimizer, schedule)``, which sets every
param group's ``"lr"`` to ``schedule(step)`` after each ``step()``.

Where optax quietly falls back instead of failing, so do these: a non-positive
``transition_steps`` gives a constant ``init_value``, and a negative
``transition_begin`` counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "Schedule",
    "constant_schedule",
    "piecewise_constant_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "linear_schedule",
    "cosine_onecycle_schedule",
    "join_schedules",
]

Schedule = Callable[[int], float]
"""A function from the step count (0, 1, 2, ...) to a value such as a learning rate."""


def constant_schedule(value: float) -> Schedule:
    """``value`` at every step."""
    value = float(value)
    return lambda count: value


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """``init_value`` times every scale whose boundary has been reached.

    value(t) = init_value * prod(scale for boundary, scale in boundaries_and_scales.items()
                                 if t >= boundary)
    """
    steps = sorted((boundaries_and_scales or {}).items())
    if any(scale < 0 for _, scale in steps):
        raise ValueError(f"boundaries_and_scales must have non-negative scales, got {dict(steps)}")

    def schedule(count: int) -> float:
        value = float(init_value)
        for boundary, scale in steps:
            if count < boundary:  # boundaries are sorted: no later one applies either
                break
            value = scale * value
        return value

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Exponential decay that starts after ``transition_begin`` steps.

    value(t) = init_value * decay_rate ** ((t - transition_begin) / transition_steps)
    for t > transition_begin, else init_value. With ``staircase`` the exponent
    is floored, so the value drops once every ``transition_steps``. ``end_value``
    bounds the decay: a floor when decay_rate < 1, a ceiling when it is > 1.
    A non-positive ``transition_steps`` or a zero ``decay_rate`` gives a
    constant ``init_value``, as in optax.
    """
    if decay_rate < 0:
        raise ValueError(f"decay_rate must be >= 0, got {decay_rate!r}")
    if transition_steps <= 0 or decay_rate == 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)
    clip_to_end = max if decay_rate < 1.0 else min

    def schedule(count: int) -> float:
        steps_decayed = count - transition_begin
        if steps_decayed <= 0:
            value = float(init_value)
        else:
            exponent = steps_decayed / transition_steps
            if staircase:
                exponent = math.floor(exponent)
            value = init_value * decay_rate**exponent
        return value if end_value is None else float(clip_to_end(value, end_value))

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    value(t) = init_value * ((1 - alpha) * c ** exponent + alpha),
    c = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2
    """
    if not decay_steps > 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps!r}")

    def schedule(count: int) -> float:
        count = min(count, decay_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * count / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    value(t) = linear_schedule(init_value, peak_value, warmup_steps)(t)  for t < warmup_steps
             = cosine_decay_schedule(peak_value, decay_steps - warmup_steps,
                                     alpha=end_value / peak_value, exponent)(t - warmup_steps)
    ``decay_steps`` counts the whole schedule, warmup included.
    """
    if not decay_steps > warmup_steps:
        raise ValueError(
            f"decay_steps (the whole schedule, warmup included) must exceed "
            f"warmup_steps, got decay_steps={decay_steps!r}, warmup_steps={warmup_steps!r}"
        )
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    warmup = linear_schedule(init_value, peak_value, warmup_steps)
    decay = cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)
    return join_schedules([warmup, decay], [warmup_steps])


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Straight line from ``init_value`` to ``end_value`` over ``transition_steps``.

    value(t) = (init_value - end_value) * (1 - s / transition_steps) + end_value,
    s = clip(t - transition_begin, 0, transition_steps)
    A non-positive ``transition_steps`` gives a constant ``init_value``, as in optax.
    """
    if transition_steps <= 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)

    def schedule(count: int) -> float:
        steps_done = min(max(count - transition_begin, 0), transition_steps)
        fraction_left = 1 - steps_done / transition_steps
        return float((init_value - end_value) * fraction_left + end_value)

    return schedule


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The 1cycle policy: cosine up to ``peak_value``, then cosine down to almost zero.

    Starts at peak_value / div_factor, reaches peak_value at step
    int(pct_start * transition_steps), and ends at
    peak_value / (div_factor * final_div_factor) at step transition_steps,
    each leg following (1 + cos(pi * fraction)) / 2 between its two ends.
    """
    if transition_steps <= 0:
        raise ValueError(f"transition_steps must be positive, got {transition_steps!r}")
    return _piecewise_interpolate_schedule(
        _cosine_interpolate,
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(transition_steps): 1.0 / (div_factor * final_div_factor),
        },
    )


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules`` one after another, switching at each boundary.

    value(t) = schedules[i](t - boundaries[i - 1]) for the last i with
    t >= boundaries[i - 1] (schedules[0](t) before the first boundary): each
    schedule counts its own steps from 0.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must have one entry fewer than schedules, got "
            f"{len(boundaries)} boundaries for {len(schedules)} schedules"
        )

    def schedule(count: int) -> float:
        chosen, start = schedules[0], 0
        for boundary, following in zip(boundaries, schedules[1:]):
            if count >= boundary:
                chosen, start = following, boundary
        return float(chosen(count - start))

    return schedule


# Interpolation between two values as `fraction` goes from 0 to 1. OneCycleLR in
# lr_scheduler uses the same two formulas (torch and optax write them alike).


def _linear_interpolate(start: float, end: float, fraction: float) -> float:
    return (end - start) * fraction + start


def _cosine_interpolate(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)


def _piecewise_interpolate_schedule(
    interpolate: Callable[[float, float, float], float],
    init_value: float,
    boundaries_and_scales: Mapping[int, float],
) -> Schedule:
    """optax's piecewise_interpolate_schedule: at each boundary the value has been
    multiplied by that boundary's scale; in between, ``interpolate`` joins the values."""
    boundaries = [0]
    values = [init_value]
    for boundary, scale in sorted(boundaries_and_scales.items()):
        boundaries.append(boundary)
        values.append(values[-1] * scale)

    def schedule(count: int) -> float:
        if count >= boundaries[-1]:
            return float(values[-1])
        for i in range(len(boundaries) - 1):
            start, end = boundaries[i], boundaries[i + 1]
            if start <= count < end:
                fraction = (count - start) / max(end - start, 1)
                return float(interpolate(values[i], values[i + 1], fraction))
        return 0.0  # before step 0, like optax

    return schedule
