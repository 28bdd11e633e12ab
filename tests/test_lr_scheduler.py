"""fusedopt.lr_scheduler against torch.optim.lr_scheduler, step by step.

Every entry of TORCH_CASES builds the same scheduler from either module (the
class names and arguments are torch's) and runs it for a number of steps,
recording every group's lr and momentum (or beta1) after construction and
after each step. fusedopt runs on FakeOptimizer, which is only the contract a
scheduler may rely on. The reference is torch itself, on a real torch
optimizer, when torch is installed, and always the sequences recorded from
torch in data/torch_lr_sequences.json (regenerate with
data/record_torch_lr_sequences.py).
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from fusedopt import lr_scheduler
from fusedopt.schedules import linear_schedule, warmup_cosine_decay_schedule

try:
    import torch
except ImportError:  # the recorded sequences still pin torch's behaviour
    torch = None

TORCH_FIXTURE = pathlib.Path(__file__).parent / "data" / "torch_lr_sequences.json"
REFERENCE_SOURCES = ["recorded"] + (["live-torch"] if torch is not None else [])

OPTIMIZER_DEFAULTS = {
    "sgd": {"momentum": 0.9},  # SGD-like groups: "momentum"
    "adam": {"betas": (0.9, 0.999)},  # Adam-like groups: "betas"
    "plain": {},  # nothing for cycle_momentum to move
}


class FakeOptimizer:
    """All a scheduler may use: param_groups (plain dicts) and defaults."""

    def __init__(self, kind: str, lrs: tuple[float, ...]) -> None:
        self.defaults = {"lr": lrs[0], **OPTIMIZER_DEFAULTS[kind]}
        self.param_groups = [{**self.defaults, "lr": lr} for lr in lrs]

    def step(self) -> None:
        pass


def make_torch_optimizer(kind: str, lrs: tuple[float, ...]):
    import torch  # only the live comparison and the recorder get here

    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.999))
    raise ValueError(f"no torch optimizer for kind {kind!r}")


@dataclass(frozen=True)
class Case:
    id: str
    # build(module, optimizer) -> scheduler; module is fusedopt's or torch's lr_scheduler
    build: Callable[[ModuleType, Any], Any]
    steps: int = 60
    kind: str = "sgd"
    lrs: tuple[float, ...] = (0.1, 0.05)
    metrics: tuple[float, ...] | None = None  # ReduceLROnPlateau: step(metrics[i])


def momentum_of(group: dict) -> float | None:
    return group["betas"][0] if "betas" in group else group.get("momentum")


def advance(optimizer, scheduler, case: Case, step_index: int) -> None:
    optimizer.step()  # torch warns if a scheduler steps before its optimizer
    if case.metrics is None:
        scheduler.step()
    else:
        scheduler.step(case.metrics[step_index])


def record_steps(optimizer, scheduler, case: Case, step_indices: range, into: dict) -> dict:
    """Append the groups' lrs, get_last_lr() and momenta after each of these steps."""
    for step_index in step_indices:
        advance(optimizer, scheduler, case, step_index)
        append_snapshot(optimizer, scheduler, into)
    return into


def append_snapshot(optimizer, scheduler, into: dict) -> None:
    into.setdefault("lr", []).append([group["lr"] for group in optimizer.param_groups])
    into.setdefault("last_lr", []).append(list(scheduler.get_last_lr()))
    into.setdefault("momentum", []).append([momentum_of(g) for g in optimizer.param_groups])


def run_case(module: ModuleType, optimizer, case: Case) -> dict:
    """Build the case's scheduler and record it from construction through case.steps steps."""
    scheduler = case.build(module, optimizer)
    trajectory: dict = {}
    append_snapshot(optimizer, scheduler, trajectory)
    return record_steps(optimizer, scheduler, case, range(case.steps), trajectory)


# ---------------------------------------------------------------------------
# The cases


def resumed(build: Callable[[ModuleType, Any, int], Any], at: int):
    """A scheduler rebuilt with last_epoch=at on the groups an earlier one left at step `at`."""

    def build_resumed(module, optimizer):
        earlier = build(module, optimizer, -1)
        for _ in range(at):
            optimizer.step()
            earlier.step()
        return build(module, optimizer, at)

    return build_resumed


def plateau_losses(count: int) -> tuple[float, ...]:
    """A loss that improves, stalls, improves a little more and stalls, with a wobble."""
    losses = []
    for i in range(count):
        trend = 1.0 / (1 + 0.2 * min(i, 25)) - 0.004 * max(0, min(i, 70) - 55)
        wobble = 0.003 * ((i * 37) % 5 - 2)
        losses.append(trend + wobble)
    return tuple(losses)


LOSSES = plateau_losses(120)
ACCURACIES = tuple(1.0 - loss for loss in LOSSES)


def halving_every_10_steps(module):
    """A user's own rule, written torch-style by overriding get_lr()."""

    class HalvingLR(module.LRScheduler):
        def get_lr(self):
            return [base_lr * 0.5 ** (self.last_epoch // 10) for base_lr in self.base_lrs]

    return HalvingLR


def nested_sequential(module, optimizer):
    warmup = module.LinearLR(optimizer, 0.5, total_iters=4)
    inner = module.SequentialLR(optimizer, [warmup, module.StepLR(optimizer, 3)], [4])
    # Building the outer SequentialLR steps the inner one's first scheduler once
    # more, and torch warns unless the optimizer stepped in between.
    optimizer.step()
    return module.SequentialLR(optimizer, [inner, module.ExponentialLR(optimizer, 0.8)], [15])


TORCH_CASES = [
    Case("LRScheduler-subclass", lambda m, opt: halving_every_10_steps(m)(opt), steps=45),
    Case("StepLR", lambda m, opt: m.StepLR(opt, step_size=7, gamma=0.5), steps=80),
    Case("StepLR-defaults", lambda m, opt: m.StepLR(opt, step_size=3), steps=20),
    Case(
        "StepLR-resumed",
        resumed(lambda m, opt, last: m.StepLR(opt, step_size=5, gamma=0.5, last_epoch=last), at=9),
        steps=30,
    ),
    Case(
        "MultiStepLR",
        lambda m, opt: m.MultiStepLR(opt, milestones=[40, 10, 25, 25], gamma=0.3),
        steps=60,
    ),
    Case("ExponentialLR", lambda m, opt: m.ExponentialLR(opt, gamma=0.95), steps=200),
    Case(
        "ExponentialLR-resumed",
        resumed(lambda m, opt, last: m.ExponentialLR(opt, gamma=0.9, last_epoch=last), at=10),
        steps=30,
    ),
    Case("CosineAnnealingLR", lambda m, opt: m.CosineAnnealingLR(opt, T_max=100), steps=100),
    Case(
        "CosineAnnealingLR-past-T_max",
        lambda m, opt: m.CosineAnnealingLR(opt, T_max=30, eta_min=0.001),
        steps=150,
    ),
    Case(
        "CosineAnnealingLR-resumed",
        resumed(lambda m, opt, last: m.CosineAnnealingLR(opt, T_max=40, last_epoch=last), at=15),
        steps=60,
    ),
    Case("LinearLR-defaults", lambda m, opt: m.LinearLR(opt), steps=10),
    Case("LinearLR-warmup", lambda m, opt: m.LinearLR(opt, 0.1, total_iters=20), steps=40),
    Case(
        "LinearLR-decay",
        lambda m, opt: m.LinearLR(opt, start_factor=1.0, end_factor=0.05, total_iters=50),
        steps=60,
    ),
    Case(
        "LinearLR-resumed",
        resumed(lambda m, opt, last: m.LinearLR(opt, 0.2, total_iters=12, last_epoch=last), at=4),
        steps=20,
    ),
    Case("LambdaLR", lambda m, opt: m.LambdaLR(opt, lambda step: 0.97**step), steps=80),
    Case(
        "LambdaLR-per-group",
        lambda m, opt: m.LambdaLR(
            opt, [lambda step: 1 / (1 + step // 10), lambda step: min(1.0, (step + 1) / 8)]
        ),
        steps=60,
    ),
    Case(
        "CyclicLR-triangular",
        lambda m, opt: m.CyclicLR(
            opt, base_lr=[0.01, 0.001], max_lr=[0.1, 0.02], step_size_up=10, step_size_down=6
        ),
        steps=120,
    ),
    Case(
        "CyclicLR-triangular2-adam",
        lambda m, opt: m.CyclicLR(
            opt, 0.001, 0.01, step_size_up=7, mode="triangular2",
            base_momentum=[0.8, 0.85], max_momentum=0.95,
        ),
        steps=150,
        kind="adam",
    ),
    Case(
        "CyclicLR-exp_range",
        lambda m, opt: m.CyclicLR(opt, 0.001, 0.1, step_size_up=8, mode="exp_range", gamma=0.98),
        steps=120,
    ),
    Case(
        "CyclicLR-scale_fn-cycle",
        lambda m, opt: m.CyclicLR(
            opt, 0.01, 0.1, step_size_up=5, scale_fn=lambda cycle: 1 / (1 + 0.5 * cycle),
            cycle_momentum=False,
        ),
        steps=60,
    ),
    Case(
        "CyclicLR-scale_fn-iterations",
        lambda m, opt: m.CyclicLR(
            opt, 0.01, 0.1, step_size_up=4, step_size_down=9,
            scale_fn=lambda step: 0.99**step, scale_mode="iterations",
        ),
        steps=80,
    ),
    Case(
        # The groups already hold "initial_lr" from an earlier scheduler.
        "CyclicLR-after-another-scheduler",
        lambda m, opt: [m.ExponentialLR(opt, 0.9), m.CyclicLR(opt, 0.01, 0.1, step_size_up=4)][-1],
        steps=20,
    ),
    Case(
        "CyclicLR-resumed",
        resumed(
            lambda m, opt, last: m.CyclicLR(opt, 0.01, 0.1, step_size_up=6, last_epoch=last), at=8
        ),
        steps=30,
    ),
    Case("OneCycleLR", lambda m, opt: m.OneCycleLR(opt, [0.1, 0.05], total_steps=100), steps=100),
    Case(
        "OneCycleLR-linear-three-phase-adam",
        lambda m, opt: m.OneCycleLR(
            opt, 0.2, epochs=5, steps_per_epoch=20, anneal_strategy="linear", three_phase=True
        ),
        steps=100,
        kind="adam",
    ),
    Case(
        "OneCycleLR-cos-three-phase",
        lambda m, opt: m.OneCycleLR(
            opt, 0.3, total_steps=61, pct_start=0.4, three_phase=True,
            base_momentum=0.8, max_momentum=[0.9, 0.99],
        ),
        steps=61,
    ),
    Case(
        "OneCycleLR-no-momentum",
        lambda m, opt: m.OneCycleLR(
            opt, 1.0, total_steps=57, pct_start=0.25, div_factor=10.0,
            final_div_factor=100.0, cycle_momentum=False,
        ),
        steps=57,
    ),
    Case(
        "OneCycleLR-resumed",
        resumed(lambda m, opt, last: m.OneCycleLR(opt, 0.1, 50, last_epoch=last), at=20),
        steps=29,  # construction took it to step 21; 50 is the last allowed
    ),
    Case(
        "ReduceLROnPlateau-defaults-min-rel",
        lambda m, opt: m.ReduceLROnPlateau(opt, patience=3),
        steps=len(LOSSES),
        metrics=LOSSES,
    ),
    Case(
        "ReduceLROnPlateau-max-abs-cooldown",
        lambda m, opt: m.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=2, threshold=0.001,
            threshold_mode="abs", cooldown=4, min_lr=[0.01, 0.02],
        ),
        steps=len(ACCURACIES),
        metrics=ACCURACIES,
    ),
    Case(
        "ReduceLROnPlateau-min-abs",
        lambda m, opt: m.ReduceLROnPlateau(opt, threshold=0.01, threshold_mode="abs", patience=1),
        steps=len(LOSSES),
        metrics=LOSSES,
    ),
    Case(
        "ReduceLROnPlateau-max-rel",
        lambda m, opt: m.ReduceLROnPlateau(opt, mode="max", threshold=0.01, patience=1, cooldown=2),
        steps=len(ACCURACIES),
        metrics=ACCURACIES,
    ),
    Case(
        # eps stops the cuts once they get smaller than 0.006
        "ReduceLROnPlateau-eps",
        lambda m, opt: m.ReduceLROnPlateau(opt, factor=0.9, patience=1, eps=0.006),
        steps=len(LOSSES),
        metrics=LOSSES,
    ),
    Case(
        "SequentialLR-warmup-cosine",
        lambda m, opt: m.SequentialLR(
            opt,
            [m.LinearLR(opt, 0.01, total_iters=10), m.CosineAnnealingLR(opt, T_max=90)],
            milestones=[10],
        ),
        steps=100,
    ),
    Case(
        "SequentialLR-three",
        lambda m, opt: m.SequentialLR(
            opt,
            [m.ExponentialLR(opt, 0.9), m.StepLR(opt, 5, 0.5), m.MultiStepLR(opt, [3, 8])],
            milestones=[12, 30],
        ),
        steps=60,
    ),
    Case(
        # no closed form: restarted through get_lr, momentum included
        "SequentialLR-lambda-then-cyclic",
        lambda m, opt: m.SequentialLR(
            opt,
            [m.LambdaLR(opt, lambda step: (step + 1) / 5), m.CyclicLR(opt, 0.01, 0.1, 5)],
            milestones=[5],
        ),
        steps=50,
    ),
    Case("SequentialLR-nested", nested_sequential, steps=30),
]

# Cases with no torch counterpart, still run through the state_dict checks.
SCHEDULE_LR_CASES = [
    Case(
        "ScheduleLR",
        lambda m, opt: m.ScheduleLR(
            opt, warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=80)
        ),
        steps=100,
    ),
    Case(
        "ScheduleLR-per-group-in-SequentialLR",
        lambda m, opt: m.SequentialLR(
            opt,
            [
                m.ScheduleLR(opt, [linear_schedule(0.0, 0.1, 8), linear_schedule(0.0, 0.2, 8)]),
                m.ExponentialLR(opt, 0.9),
            ],
            milestones=[8],
        ),
        steps=30,
    ),
]
ALL_CASES = TORCH_CASES + SCHEDULE_LR_CASES


def case_id(case: Case) -> str:
    return case.id


# ---------------------------------------------------------------------------
# Same sequences as torch


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(TORCH_FIXTURE.read_text())


def assert_same_sequence(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} steps, expected {len(expected)}"
    for step, (row, expected_row) in enumerate(zip(actual, expected)):
        assert row == pytest.approx(expected_row, rel=1e-12, abs=1e-18), (
            f"{what} differs at step {step}"
        )


@pytest.mark.parametrize("source", REFERENCE_SOURCES)
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_same_lrs_and_momenta_as_torch(case: Case, source: str, recorded: dict) -> None:
    ours = run_case(lr_scheduler, FakeOptimizer(case.kind, case.lrs), case)
    if source == "live-torch":
        torch_optimizer = make_torch_optimizer(case.kind, case.lrs)
        expected = run_case(torch.optim.lr_scheduler, torch_optimizer, case)
    else:
        expected = recorded["cases"][case.id]
    assert_same_sequence(ours["lr"], expected["lr"], "lr")
    assert_same_sequence(ours["momentum"], expected["momentum"], "momentum/beta1")
    assert ours["last_lr"] == ours["lr"], "get_last_lr() must report the lrs in the groups"


def test_recorded_sequences_cover_every_case(recorded: dict) -> None:
    assert sorted(recorded["cases"]) == sorted(case.id for case in TORCH_CASES), (
        "stale fixture: run tests/data/record_torch_lr_sequences.py"
    )


def first_group_lrs(build, steps: int, lr: float = 1.0) -> list[float]:
    """The lr of a one-group optimizer after construction and after each step."""
    trajectory = run_case(lr_scheduler, FakeOptimizer("sgd", (lr,)), Case("example", build, steps))
    return [lr for (lr,) in trajectory["lr"]]


def test_documented_examples() -> None:
    """Points checked by hand, from torch's docstrings and the formulas."""
    lrs = first_group_lrs(lambda m, opt: m.StepLR(opt, step_size=30, gamma=0.1), 90, lr=0.05)
    assert [lrs[t] for t in (0, 29, 30, 59, 60, 90)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005], rel=1e-12
    )

    lrs = first_group_lrs(lambda m, opt: m.MultiStepLR(opt, milestones=[30, 80]), 100, lr=0.05)
    assert [lrs[t] for t in (29, 30, 79, 80, 100)] == pytest.approx(
        [0.05, 0.005, 0.005, 0.0005, 0.0005], rel=1e-12
    )

    lrs = first_group_lrs(lambda m, opt: m.CosineAnnealingLR(opt, T_max=50, eta_min=0.2), 100)
    assert [lrs[t] for t in (0, 25, 50, 75, 100)] == pytest.approx(
        [1.0, 0.6, 0.2, 0.6, 1.0], rel=1e-12
    )

    lrs = first_group_lrs(lambda m, opt: m.LinearLR(opt, start_factor=0.25, total_iters=3), 5)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rel=1e-12)

    # up 4 steps from 0.1 to 1.0, down 6 steps, again; momentum the other way
    build = lambda m, opt: m.CyclicLR(opt, 0.1, 1.0, step_size_up=4, step_size_down=6)  # noqa: E731
    trajectory = run_case(lr_scheduler, FakeOptimizer("sgd", (1.0,)), Case("example", build, 20))
    assert [trajectory["lr"][t][0] for t in (0, 2, 4, 7, 10, 14)] == pytest.approx(
        [0.1, 0.55, 1.0, 0.55, 0.1, 1.0], rel=1e-12
    )
    assert [trajectory["momentum"][t][0] for t in (0, 4, 10)] == pytest.approx([0.9, 0.8, 0.9])

    # max_lr / 25 at the start, max_lr at step 0.3 * 100 - 1, max_lr / 25 / 1e4 at step 100 - 1
    lrs = first_group_lrs(lambda m, opt: m.OneCycleLR(opt, max_lr=2.0, total_steps=100), 99)
    assert [lrs[t] for t in (0, 29, 99)] == pytest.approx([0.08, 2.0, 8e-6], rel=1e-12)


def test_reduce_lr_on_plateau_waits_out_patience_and_cooldown() -> None:
    optimizer = FakeOptimizer("sgd", (1.0,))
    scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, patience=2, cooldown=1, factor=0.5)
    lrs = []
    for loss in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]:
        scheduler.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # The first loss sets the best; the third bad step in a row (more than
    # patience=2) halves the lr; the cooldown step after it does not count;
    # 0.5 is a new best, and the third bad step after it halves the lr again.
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]


# ---------------------------------------------------------------------------
# Checkpoints: state_dict() is plain data, and a restored scheduler goes on identically


def restore_groups(optimizer, saved_groups: list[dict]) -> None:
    """What an optimizer's load_state_dict does to the groups."""
    for group, saved in zip(optimizer.param_groups, saved_groups, strict=True):
        group.clear()
        group.update(copy.deepcopy(saved))


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_state_dict_round_trip_continues_identically(case: Case) -> None:
    for stop in sorted({1, case.steps // 3, case.steps // 2}):
        optimizer = FakeOptimizer(case.kind, case.lrs)
        scheduler = case.build(lr_scheduler, optimizer)
        record_steps(optimizer, scheduler, case, range(stop), {})
        saved_state = json.loads(json.dumps(scheduler.state_dict()))
        saved_groups = copy.deepcopy(optimizer.param_groups)

        # Restore in torch's order: build both, load the optimizer, then the scheduler.
        restored_optimizer = FakeOptimizer(case.kind, case.lrs)
        restored = case.build(lr_scheduler, restored_optimizer)
        restore_groups(restored_optimizer, saved_groups)
        restored.load_state_dict(saved_state)

        rest = range(stop, case.steps)
        expected = record_steps(optimizer, scheduler, case, rest, {})
        actual = record_steps(restored_optimizer, restored, case, rest, {})
        assert actual == expected, f"diverged after restoring at step {stop}"


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_state_dict_is_plain_json_data(case: Case) -> None:
    optimizer = FakeOptimizer(case.kind, case.lrs)
    scheduler = case.build(lr_scheduler, optimizer)
    record_steps(optimizer, scheduler, case, range(case.steps // 2), {})
    state = scheduler.state_dict()
    # JSON refuses functions and optimizers, and would turn tuples or int keys into something else
    assert json.loads(json.dumps(state)) == state
    last_epoch = scheduler.last_epoch
    state["last_epoch"] = -100  # a copy: editing it leaves the scheduler alone
    assert scheduler.last_epoch == last_epoch


def test_lambda_functions_are_not_saved() -> None:
    scheduler = lr_scheduler.LambdaLR(FakeOptimizer("sgd", (0.1,)), lambda step: 0.5**step)
    assert "lr_lambdas" not in scheduler.state_dict()


# ---------------------------------------------------------------------------
# The optimizer contract: initial_lr and last_epoch


def test_construction_records_initial_lr_once() -> None:
    optimizer = FakeOptimizer("sgd", (0.1, 0.05))
    lr_scheduler.StepLR(optimizer, step_size=2)
    optimizer.param_groups[0]["lr"] = 0.7
    scheduler = lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    assert [group["initial_lr"] for group in optimizer.param_groups] == [0.1, 0.05]
    assert scheduler.base_lrs == [0.1, 0.05]
    assert scheduler.last_epoch == 0


def test_resuming_without_initial_lr_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(FakeOptimizer("sgd", (0.1,)), step_size=3, last_epoch=5)


def test_cycle_momentum_moves_beta1_and_keeps_beta2() -> None:
    optimizer = FakeOptimizer("adam", (0.1,))
    scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
    for _ in range(3):
        scheduler.step()
    beta1, beta2 = optimizer.param_groups[0]["betas"]
    assert 0.85 < beta1 < 0.95 and beta2 == 0.999
    assert isinstance(optimizer.param_groups[0]["betas"], tuple)


def test_one_cycle_refuses_to_step_past_total_steps() -> None:
    scheduler = lr_scheduler.OneCycleLR(FakeOptimizer("sgd", (0.1,)), max_lr=1.0, total_steps=10)
    for _ in range(10):  # like torch, total_steps steps after construction are allowed
        scheduler.step()
    with pytest.raises(ValueError, match="total_steps"):
        scheduler.step()


# ---------------------------------------------------------------------------
# ScheduleLR: an optax-style schedule drives the optimizer


def test_schedule_lr_sets_the_scheduled_lr_itself() -> None:
    schedule = warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)
    optimizer = FakeOptimizer("sgd", (0.1, 0.05))  # the groups' own lrs play no part
    scheduler = lr_scheduler.ScheduleLR(optimizer, schedule)
    for step in range(150):
        assert [group["lr"] for group in optimizer.param_groups] == [schedule(step)] * 2
        assert scheduler.get_last_lr() == [schedule(step)] * 2
        scheduler.step()


def test_schedule_lr_takes_one_schedule_per_group() -> None:
    warmups = [linear_schedule(0.0, 0.1, 10), linear_schedule(0.0, 0.3, 20)]
    optimizer = FakeOptimizer("sgd", (1.0, 1.0))
    scheduler = lr_scheduler.ScheduleLR(optimizer, warmups)
    for step in range(30):
        expected = [warmups[0](step), warmups[1](step)]
        assert [group["lr"] for group in optimizer.param_groups] == expected
        scheduler.step()


# ---------------------------------------------------------------------------
# Bad arguments name themselves


def two_group_sgd() -> FakeOptimizer:
    return FakeOptimizer("sgd", (0.1, 0.05))


L = lr_scheduler
PLAIN = FakeOptimizer("plain", (0.1,))  # no "momentum" or "betas" to cycle
# (id, error, what the message must name, build from a two-group SGD-like optimizer)
BAD_ARGUMENTS = [
    ("optimizer-without-groups", TypeError, "optimizer", lambda opt: L.StepLR(object(), 3)),
    ("last_epoch-below--1", ValueError, "last_epoch", lambda opt: L.StepLR(opt, 3, last_epoch=-2)),
    ("StepLR-negative-step_size", ValueError, "step_size", lambda opt: L.StepLR(opt, -1)),
    ("StepLR-zero-step_size", ValueError, "step_size", lambda opt: L.StepLR(opt, 0)),
    ("StepLR-float-step_size", TypeError, "step_size", lambda opt: L.StepLR(opt, 2.5)),
    ("StepLR-negative-gamma", ValueError, "gamma", lambda opt: L.StepLR(opt, 3, gamma=-0.1)),
    ("MultiStepLR-float-milestone", TypeError, r"milestones\[1\]",
     lambda opt: L.MultiStepLR(opt, [10, 2.5])),
    ("ExponentialLR-text-gamma", TypeError, "gamma", lambda opt: L.ExponentialLR(opt, "0.9")),
    ("CosineAnnealingLR-zero-T_max", ValueError, "T_max",
     lambda opt: L.CosineAnnealingLR(opt, T_max=0)),
    ("LinearLR-zero-start_factor", ValueError, "start_factor",
     lambda opt: L.LinearLR(opt, start_factor=0.0)),
    ("LinearLR-big-end_factor", ValueError, "end_factor",
     lambda opt: L.LinearLR(opt, end_factor=1.5)),
    ("LinearLR-zero-total_iters", ValueError, "total_iters",
     lambda opt: L.LinearLR(opt, total_iters=0)),
    ("LambdaLR-too-many-functions", ValueError, "lr_lambda",
     lambda opt: L.LambdaLR(opt, [abs] * 3)),
    ("LambdaLR-not-callable", TypeError, "lr_lambda", lambda opt: L.LambdaLR(opt, 0.5)),
    ("CyclicLR-max_lr-count", ValueError, "max_lr",
     lambda opt: L.CyclicLR(opt, 0.01, [0.1, 0.2, 0.3])),
    ("CyclicLR-base_lr-count", ValueError, "base_lr", lambda opt: L.CyclicLR(opt, [0.01], 0.1)),
    ("CyclicLR-base_momentum-count", ValueError, "base_momentum",
     lambda opt: L.CyclicLR(opt, 0.01, 0.1, base_momentum=[0.8])),
    ("CyclicLR-mode", ValueError, "mode", lambda opt: L.CyclicLR(opt, 0.01, 0.1, mode="sawtooth")),
    ("CyclicLR-scale_mode", ValueError, "scale_mode",
     lambda opt: L.CyclicLR(opt, 0.01, 0.1, scale_fn=abs, scale_mode="epochs")),
    ("CyclicLR-zero-step_size_up", ValueError, "step_size_up",
     lambda opt: L.CyclicLR(opt, 0.01, 0.1, step_size_up=0)),
    ("CyclicLR-nothing-to-cycle", ValueError, "cycle_momentum",
     lambda opt: L.CyclicLR(PLAIN, 0.01, 0.1)),
    ("OneCycleLR-no-length", ValueError, "total_steps",
     lambda opt: L.OneCycleLR(opt, 0.1, epochs=3)),
    ("OneCycleLR-zero-total_steps", ValueError, "total_steps",
     lambda opt: L.OneCycleLR(opt, 0.1, total_steps=0)),
    ("OneCycleLR-zero-epochs", ValueError, "epochs",
     lambda opt: L.OneCycleLR(opt, 0.1, epochs=0, steps_per_epoch=5)),
    ("OneCycleLR-pct_start", ValueError, "pct_start",
     lambda opt: L.OneCycleLR(opt, 0.1, total_steps=10, pct_start=1.5)),
    ("OneCycleLR-anneal_strategy", ValueError, "anneal_strategy",
     lambda opt: L.OneCycleLR(opt, 0.1, total_steps=10, anneal_strategy="exp")),
    ("OneCycleLR-max_lr-count", ValueError, "max_lr",
     lambda opt: L.OneCycleLR(opt, [0.1], total_steps=10)),
    ("OneCycleLR-nothing-to-cycle", ValueError, "cycle_momentum",
     lambda opt: L.OneCycleLR(PLAIN, 0.1, total_steps=10)),
    ("ReduceLROnPlateau-factor-1", ValueError, "factor",
     lambda opt: L.ReduceLROnPlateau(opt, factor=1.0)),
    ("ReduceLROnPlateau-factor-2", ValueError, "factor",
     lambda opt: L.ReduceLROnPlateau(opt, factor=2.0)),
    ("ReduceLROnPlateau-mode", ValueError, "mode",
     lambda opt: L.ReduceLROnPlateau(opt, mode="low")),
    ("ReduceLROnPlateau-threshold_mode", ValueError, "threshold_mode",
     lambda opt: L.ReduceLROnPlateau(opt, threshold_mode="pct")),
    ("ReduceLROnPlateau-negative-patience", ValueError, "patience",
     lambda opt: L.ReduceLROnPlateau(opt, patience=-1)),
    ("ReduceLROnPlateau-min_lr-count", ValueError, "min_lr",
     lambda opt: L.ReduceLROnPlateau(opt, min_lr=[0.0] * 3)),
    ("SequentialLR-empty", ValueError, "schedulers", lambda opt: L.SequentialLR(opt, [], [])),
    ("SequentialLR-milestone-count", ValueError, "milestones",
     lambda opt: L.SequentialLR(opt, [L.StepLR(opt, 3)], [5])),
    ("SequentialLR-milestones-not-increasing", ValueError, "milestones",
     lambda opt: L.SequentialLR(opt, [L.StepLR(opt, n) for n in (3, 2, 1)], [8, 4])),
    ("SequentialLR-plateau", ValueError, r"schedulers\[0\]",
     lambda opt: L.SequentialLR(opt, [L.ReduceLROnPlateau(opt)], [])),
    ("SequentialLR-other-optimizer", ValueError, r"schedulers\[1\]",
     lambda opt: L.SequentialLR(opt, [L.StepLR(opt, 3), L.StepLR(two_group_sgd(), 3)], [5])),
    ("ScheduleLR-not-callable", TypeError, "schedule", lambda opt: L.ScheduleLR(opt, 0.1)),
]


@pytest.mark.parametrize(
    "error, argument, build",
    [pytest.param(error, argument, build, id=name)
     for name, error, argument, build in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_naming_the_argument(error, argument, build) -> None:
    with pytest.raises(error, match=argument):
        build(two_group_sgd())


def test_base_class_needs_a_rule() -> None:
    with pytest.raises(NotImplementedError):
        lr_scheduler.LRScheduler(two_group_sgd())

