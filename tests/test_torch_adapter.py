"""fusedopt.torch against torch.optim's for-loop implementation (foreach=False).

A small network is trained on the CPU with each rule and option by
torch.optim, and its twin by fusedopt.torch on the same gradients; after
every step the params, every state tensor and every step count are compared.
Then: state_dict interchange both ways, torch's schedulers, no copies, and
the errors.

Rounding: torch's CPU kernels fuse some multiply-adds (FMA) and order a few
products differently, while fusedopt's core never contracts (it is bitwise
equal to its NumPy reference). So the two agree to rounding, not to the bit.
A step rounds each value at most about eight times (the longest chains are
Adadelta's acc_delta, two square roots, a quotient, a product and a square
feeding a running average, and centered RMSprop's momentum buffer, a
difference, a square root and a quotient feeding one), each rounding within an ulp of the magnitudes
involved, which are at most the tensor's largest. Hence the tolerance below:
ULP_PER_STEP ulp of the tensor's largest magnitude per step taken, compared
element by element. (Measured on this suite: at most 3.8, Adadelta's
acc_delta after its first step; of the rules added since, at most 2.7,
RMSprop's momentum buffer, then 1.7, NAdam's exp_avg_sq.) The float64 runs
set torch's default dtype to float64, as float64 code does: torch keeps
NAdam's mu_product in the default dtype, and in float32 it would round it
to float32 precision (see test_trains_like_torch).

Lion, Momentum and Adadelta(scale="weights") have no torch.optim
counterpart: they are compared with fusedopt's NumPy reference instead,
which the core matches to RTOL (in practice, bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import subprocess
import sys
import types
import weakref

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import fusedopt
import fusedopt.torch as ft
import cases
from cases import RTOL
from fusedopt import reference

# The table's cases (tests/cases.py), each trained on a small network. A
# rule whose default lr barely moves that network in STEPS steps trains at
# the lr below, unless its case sets one.
TRAINING_LR = {"SGD": 0.1, "Adam": 1e-2, "AdamW": 1e-2, "NAdam": 1e-2, "RAdam": 1e-2, "Momentum": 0.05}


def _training_case(name, kwargs):
    return name, ({"lr": TRAINING_LR[name], **kwargs} if name in TRAINING_LR else dict(kwargs))


# Every case of a rule torch.optim has, against torch's for-loop.
TORCH_CASES = [_training_case(name, kwargs) for name, kwargs in cases.TORCH_CASES]
# Forms torch lacks (Momentum, Lion, Adadelta's scale="weights"): against fusedopt's NumPy reference.
FUSED_ONLY_CASES = [_training_case(name, kwargs) for name, kwargs in cases.CASES
                    if (name, kwargs) not in cases.TORCH_CASES]


def case_id(name, kwargs):
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
STEPS = 24
ULP_PER_STEP = 8


# --------------------------------------------------------------------------- the network


class Net(torch.nn.Module):
    """A small MLP, plus a param that never gets a gradient (not in the
    graph) and one that gets one on odd steps only."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(20261125)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
            torch.nn.Linear(16, 3),
        ).to(dtype)
        self.unused = torch.nn.Parameter(torch.randn(4, dtype=dtype))
        self.sometimes = torch.nn.Parameter(torch.randn(3, dtype=dtype))

    def forward(self, x, step):
        out = self.body(x)
        return out + self.sometimes if step % 2 else out


def param_groups(net, lr):
    """Two groups: the first layer at the case's lr, the rest (and the
    extra params) at half of it."""
    first = list(net.body[0].parameters())
    rest = [p for p in net.parameters() if all(p is not q for q in first)]
    return [{"params": first}, {"params": rest, "lr": 0.5 * lr}]


def default_lr(name, kwargs):
    return kwargs.get("lr", inspect.signature(getattr(ft, name)).parameters["lr"].default)


def batches(dtype, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 5, generator=generator, dtype=dtype),
             torch.randn(64, 3, generator=generator, dtype=dtype)) for _ in range(count)]


def train_step(net, opt, batch, step):
    x, y = batch
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x, step), y).backward()
    opt.step()


def train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step):
    """One training step of each, both given the gradients of torch's twin,
    so the comparison sees the optimizers alone: gradients computed on nets
    that differ by rounding would let the loss surface amplify the
    difference (gradient ascent, maximize=True, does so quickly)."""
    x, y = batch
    torch_opt.zero_grad()
    fused_opt.zero_grad()
    torch.nn.functional.mse_loss(torch_net(x, step), y).backward()
    for p, q in zip(torch_net.parameters(), fused_net.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    torch_opt.step()
    fused_opt.step()


def all_params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


# --------------------------------------------------------------------------- comparisons


def assert_close_to_rounding(got, want, steps, label):
    """Element by element, within ULP_PER_STEP ulp of the tensor's largest
    magnitude per step (see the module docstring)."""
    assert got.dtype == want.dtype and got.shape == want.shape, label
    scale = want.abs().max().item() if want.numel() else 0.0
    tolerance = ULP_PER_STEP * steps * torch.finfo(want.dtype).eps * scale
    torch.testing.assert_close(got, want, rtol=0, atol=tolerance, msg=lambda m: f"{label}: {m}")


def assert_same_as_torch(fused, reference_opt, steps, when):
    """Params, the state's layout (which params have state, which keys, step
    dtypes) exactly, and every state tensor to rounding."""
    assert len(all_params(fused)) == len(all_params(reference_opt))
    for i, (p, q) in enumerate(zip(all_params(fused), all_params(reference_opt))):
        assert_close_to_rounding(p.detach(), q.detach(), steps, f"params[{i}] {when}")
        mine, theirs = fused.state.get(p, {}), reference_opt.state.get(q, {})
        assert mine.keys() == theirs.keys(), f"state keys of params[{i}] {when}"
        for key, value in theirs.items():
            label = f"state[{i}][{key!r}] {when}"
            if key == "step":
                assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, label
                assert mine[key].item() == value.item(), label
            else:
                assert_close_to_rounding(mine[key], value, steps, label)


def make_pair(name, kwargs, dtype):
    nets = Net(dtype), Net(dtype)
    lr = default_lr(name, kwargs)
    torch_opt = getattr(torch.optim, name)(param_groups(nets[0], lr), foreach=False, **kwargs)
    fused_opt = getattr(ft, name)(param_groups(nets[1], lr), **kwargs)
    return nets, torch_opt, fused_opt


# --------------------------------------------------------------------------- training


@DTYPES
@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=[case_id(*c) for c in TORCH_CASES])
def test_trains_like_torch(dtype, name, kwargs):
    """Torch's default dtype is the params' (as a float64 model sets it):
    torch keeps NAdam's mu_product in the default dtype, so with float32 it
    would round the product, and the step's coefficients with it, to float32
    precision for float64 params too; fusedopt's core keeps it in double.
    That is a difference of precision, not of rounding order, which
    fusedopt.torch's docstring states and test_scalar_state_is_kept_as_torch_keeps_it
    checks for the float32 default."""
    with default_dtype(dtype):
        (torch_net, fused_net), torch_opt, fused_opt = make_pair(name, kwargs, dtype)
        assert_same_as_torch(fused_opt, torch_opt, 0, "before the first step")  # Adagrad's is made early
        for step, batch in enumerate(batches(dtype, STEPS), start=1):
            train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step)
            assert_same_as_torch(fused_opt, torch_opt, step, f"after step {step}")
    # The skipped params: no state for the one without a gradient (Adagrad's
    # constructor makes it, as torch's does), half the steps for the one
    # with a gradient on odd steps.
    if fused_opt.row.state_at_construction:
        assert fused_opt.state[fused_net.unused]["step"].item() == 0
    else:
        assert fused_net.unused not in fused_opt.state
    if "step" in fused_opt.state.get(fused_net.body[0].weight, {}):
        assert fused_opt.state[fused_net.sometimes]["step"].item() == STEPS // 2
    # The state_dicts have the same layout: torch's group entries (fusedopt's
    # own options besides) and state entries.
    mine, theirs = fused_opt.state_dict(), torch_opt.state_dict()
    for g, (group, torch_group) in enumerate(zip(mine["param_groups"], theirs["param_groups"])):
        torch_group["foreach"] = None  # torch's was told foreach=False, to take its for-loop
        assert group == torch_group, f"param_groups[{g}]"  # torch's keys only (no fusedopt option at its default)
    assert {i: set(s) for i, s in mine["state"].items()} == {i: set(s) for i, s in theirs["state"].items()}


@DTYPES
@pytest.mark.parametrize("name, kwargs", FUSED_ONLY_CASES, ids=[case_id(*c) for c in FUSED_ONLY_CASES])
def test_forms_torch_lacks_match_the_numpy_reference(dtype, name, kwargs):
    net = Net(dtype)
    lr = default_lr(name, kwargs)
    fused_opt = getattr(ft, name)(param_groups(net, lr), **kwargs)
    arrays = [[p.detach().numpy().copy() for p in group["params"]] for group in fused_opt.param_groups]
    ref = getattr(reference, name)([{"params": arrays[0]}, {"params": arrays[1], "lr": 0.5 * lr}], **kwargs)
    params = all_params(fused_opt)
    for step, batch in enumerate(batches(dtype, STEPS), start=1):
        train_step(net, fused_opt, batch, step)
        ref.step([None if p.grad is None else p.grad.numpy().copy() for p in params])
        for i, (p, want, state) in enumerate(zip(params, [a for g in arrays for a in g], ref.state)):
            np.testing.assert_allclose(p.detach().numpy(), want, rtol=RTOL[want.dtype.type], atol=0,
                                       err_msg=f"params[{i}] after step {step}")
            mine = fused_opt.state.get(p, {})
            if state["step"] == 0:
                assert not mine, f"params[{i}] has state but no step was taken"
                continue
            assert mine.keys() == state.keys()
            assert mine["step"].item() == state["step"]
            for key in state.keys() - {"step"}:
                np.testing.assert_allclose(mine[key].numpy(), state[key], rtol=RTOL[want.dtype.type],
                                           atol=0, err_msg=f"state[{i}][{key!r}] after step {step}")


@pytest.mark.parametrize(
    "name, kwargs, make_scheduler",
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9},
         lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)),
        ("SGD", {"lr": 0.1, "momentum": 0.9},  # also cycles the momentum
         lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=STEPS)),
        ("Adam", {"lr": 1e-2},  # also cycles betas[0]
         lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)),
    ],
    ids=["StepLR-SGD", "OneCycleLR-SGD", "OneCycleLR-Adam"],
)
def test_torch_schedulers_drive_it_unchanged(name, kwargs, make_scheduler):
    (torch_net, fused_net), torch_opt, fused_opt = make_pair(name, kwargs, torch.float64)
    schedulers = make_scheduler(torch_opt), make_scheduler(fused_opt)
    for step, batch in enumerate(batches(torch.float64, STEPS), start=1):
        train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step)
        for scheduler in schedulers:
            scheduler.step()
        assert schedulers[1].get_last_lr() == schedulers[0].get_last_lr()
        for mine, theirs in zip(fused_opt.param_groups, torch_opt.param_groups):
            assert {k: v for k, v in mine.items() if k not in ("params", "foreach")} == \
                   {k: v for k, v in theirs.items() if k not in ("params", "foreach")}
        assert_same_as_torch(fused_opt, torch_opt, step, f"after step {step}")
    assert fused_opt.param_groups[0]["lr"] != kwargs["lr"]  # the schedule did change it


# --------------------------------------------------------------------------- state_dict


def checkpoint(opt):
    """A state_dict through torch.save and torch.load(weights_only=True), as a
    checkpoint file makes it."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["torch-to-fusedopt", "fusedopt-to-torch"])
@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=[case_id(*c) for c in TORCH_CASES])
def test_checkpoints_are_interchangeable(direction, name, kwargs):
    """Train 10 steps with one library, load its checkpoint into the other on
    a copy of the net, and continue both for 10 steps: the same run."""
    dtype = torch.float32
    net = Net(dtype)
    lr = default_lr(name, kwargs)
    first, second = (torch.optim, ft) if direction == "torch-to-fusedopt" else (ft, torch.optim)

    def make(module, net):
        extra = {"foreach": False} if module is torch.optim else {}
        return getattr(module, name)(param_groups(net, lr), **kwargs, **extra)

    opt = make(first, net)
    data = batches(dtype, 20)
    for step, batch in enumerate(data[:10], start=1):
        train_step(net, opt, batch, step)
    other_net = copy.deepcopy(net)
    other = make(second, other_net)
    other.load_state_dict(checkpoint(opt))
    assert_same_as_torch(other, opt, 0, "right after loading")
    if second is ft:
        torch_net, torch_opt, fused_net, fused = net, opt, other_net, other
    else:
        torch_net, torch_opt, fused_net, fused = other_net, other, net, opt
    for step, batch in enumerate(data[10:], start=11):
        train_both(torch_net, torch_opt, fused_net, fused, batch, step)
        assert_same_as_torch(fused, torch_opt, step - 10, f"{step - 10} steps after loading")


def test_loading_a_checkpoint_checks_everything_first():
    net = Net(torch.float32)
    opt = ft.Adam(net.parameters(), lr=1e-2)
    for step, batch in enumerate(batches(torch.float32, 2), start=1):
        train_step(net, opt, batch, step)
    saved = opt.state_dict()
    before = copy.deepcopy(saved)

    wrong_shape = copy.deepcopy(saved)
    wrong_shape["state"][3]["exp_avg"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\[3\] \(params\[3\] \(shape \(16,\)\)\)"
                                         r"\['exp_avg'\] has shape \(7,\), the param has \(16,\)"):
        opt.load_state_dict(wrong_shape)
    missing = copy.deepcopy(saved)
    del missing["state"][2]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"\[2\].*has no 'exp_avg_sq'"):
        opt.load_state_dict(missing)
    bad_step = copy.deepcopy(saved)
    bad_step["state"][2]["step"] = torch.tensor(1.5)
    with pytest.raises(ValueError, match=r"\['step'\] must be a non-negative whole number"):
        opt.load_state_dict(bad_step)
    bad_lr = copy.deepcopy(saved)
    bad_lr["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"lr \(param group 0\) must be >= 0"):
        opt.load_state_dict(bad_lr)

    after = opt.state_dict()  # nothing changed
    assert after["param_groups"] == before["param_groups"]
    for i, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][i][key], value)


def test_adamw_stays_decoupled_when_loading_an_adam_checkpoint():
    """As torch's AdamW: a checkpoint cannot turn its decoupled decay off."""
    net = Net(torch.float32)
    adam = torch.optim.Adam(net.parameters(), weight_decay=0.1)
    adamw = ft.AdamW(net.parameters())
    adamw.load_state_dict(adam.state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True
    assert adamw.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("default", [torch.float32, torch.float64], ids=["default-float32", "default-float64"])
@DTYPES
def test_scalar_state_is_kept_as_torch_keeps_it(default, dtype):
    """step and NAdam's mu_product are 0-d tensors of torch's default dtype,
    whatever the params' dtype, as torch makes them. After one step
    mu_product is mu_1 rounded once to that dtype by both: equal."""
    with default_dtype(default):
        p, q = (torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=dtype)) for _ in range(2))
        mine, theirs = ft.NAdam([p]), torch.optim.NAdam([q], foreach=False)
        for param, opt in ((p, mine), (q, theirs)):
            param.grad = torch.linspace(0.5, -0.3, 5, dtype=dtype)
            opt.step()
    for key in ("step", "mu_product"):
        value, torchs = mine.state[p][key], theirs.state[q][key]
        assert value.dtype == torchs.dtype == default and value.shape == torchs.shape == (), key
        assert value.item() == torchs.item(), key


def test_adagrad_makes_its_state_in_the_constructor():
    """As torch's: every param of the constructor's groups has step 0 and sum
    at initial_accumulator_value before any step (so its state_dict has
    them); a group added later gets its state at its first step, from the
    group's own initial_accumulator_value (torch takes the constructor's)."""
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = ft.Adagrad([a], lr=0.5, initial_accumulator_value=0.5)
    theirs = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(3))], lr=0.5, initial_accumulator_value=0.5)
    assert opt.state_dict()["state"].keys() == theirs.state_dict()["state"].keys() == {0}
    assert opt.state[a]["step"].item() == 0 and opt.state[a]["step"].dtype == torch.float32
    assert torch.equal(opt.state[a]["sum"], torch.full((3,), 0.5))
    opt.add_param_group({"params": [b], "initial_accumulator_value": 2.0})
    assert b not in opt.state
    b.grad = torch.ones(2)
    opt.step()
    assert opt.state[b]["step"].item() == 1
    torch.testing.assert_close(opt.state[b]["sum"], torch.full((2,), 3.0), rtol=0, atol=0)
    torch.testing.assert_close(b.detach(), torch.full((2,), -0.5 / math.sqrt(3.0)))
    assert torch.equal(a.detach(), torch.zeros(3)) and opt.state[a]["step"].item() == 0  # no gradient


def test_a_checkpoint_with_numbers_for_scalar_state_loads_as_torch_loads_it():
    """Older checkpoints kept step and mu_product as Python numbers: torch
    turns them into 0-d tensors when loading, and so does fusedopt.torch;
    both then continue alike."""
    dtype = torch.float32
    net = Net(dtype)
    opt = torch.optim.NAdam(param_groups(net, 2e-3), foreach=False)
    data = batches(dtype, 6)
    for step, batch in enumerate(data[:3], start=1):
        train_step(net, opt, batch, step)
    saved = opt.state_dict()
    for entry in saved["state"].values():
        entry["step"], entry["mu_product"] = entry["step"].item(), entry["mu_product"].item()
    torch_net, fused_net = copy.deepcopy(net), copy.deepcopy(net)
    torch_opt = torch.optim.NAdam(param_groups(torch_net, 2e-3), foreach=False)
    fused_opt = ft.NAdam(param_groups(fused_net, 2e-3))
    torch_opt.load_state_dict(copy.deepcopy(saved))
    fused_opt.load_state_dict(copy.deepcopy(saved))
    assert_same_as_torch(fused_opt, torch_opt, 0, "right after loading")
    for step, batch in enumerate(data[3:], start=4):
        train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step)
        assert_same_as_torch(fused_opt, torch_opt, step - 3, f"{step - 3} steps after loading")


def test_scalar_state_is_checked_before_anything_changes():
    net = Net(torch.float32)
    opt = ft.NAdam(net.parameters(), lr=1e-2)
    for step, batch in enumerate(batches(torch.float32, 2), start=1):
        train_step(net, opt, batch, step)
    saved = opt.state_dict()
    before = copy.deepcopy(saved), [p.detach().clone() for p in net.parameters()]
    for value in (torch.zeros(3), float("nan"), torch.tensor(float("inf")), "0.5", torch.tensor(1)):
        bad = copy.deepcopy(saved)
        bad["state"][3]["mu_product"] = value
        with pytest.raises(ValueError, match=r"state_dict\['state'\]\[3\] \(params\[3\] \(shape \(16,\)\)\)"
                                             r"\['mu_product'\] must be a finite number"):
            opt.load_state_dict(bad)
    missing = copy.deepcopy(saved)
    del missing["state"][3]["mu_product"]
    with pytest.raises(ValueError, match=r"\[3\].*has no 'mu_product'"):
        opt.load_state_dict(missing)
    # Broken in place (the state_dict shares its dicts): the step refuses it and changes nothing else.
    opt.state[net.body[0].bias]["mu_product"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"state\['mu_product'\] of params\[3\] must be a one-element"):
        opt.step()
    opt.state[net.body[0].bias]["mu_product"] = before[0]["state"][3]["mu_product"].clone()
    after = opt.state_dict()
    for i, entry in before[0]["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][i][key], value), (i, key)
    for p, was in zip(net.parameters(), before[1]):
        assert torch.equal(p.detach(), was)


# --------------------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_a_nonfinite_gradient_skips_the_step_and_changes_nothing(nonfinite):
    """nonfinite="skip" or "raise": a step whose gradients hold an infinity
    or a NaN changes no param (nor its version counter), no state, no step
    count, and makes no state; the run continues as torch's run that never
    saw that step."""
    dtype = torch.float32
    torch_net, fused_net = Net(dtype), Net(dtype)
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    torch_opt = torch.optim.NAdam(param_groups(torch_net, 1e-2), foreach=False, **kwargs)
    fused_opt = ft.NAdam(param_groups(fused_net, 1e-2), nonfinite=nonfinite, **kwargs)
    poisoned = {1: math.inf, 4: math.nan}  # the step, the value put into body.2.weight's gradient
    taken = 0
    for step, batch in enumerate(batches(dtype, 8), start=1):
        if step not in poisoned:
            train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step)
            taken += 1
            assert_same_as_torch(fused_opt, torch_opt, taken, f"after step {step}")
            continue
        fused_opt.zero_grad()
        torch.nn.functional.mse_loss(fused_net(batch[0], step), batch[1]).backward()
        fused_net.body[2].weight.grad.view(-1)[37] = poisoned[step]
        state_before = copy.deepcopy(fused_opt.state_dict())
        params_before = [(p.detach().clone(), p._version) for p in fused_net.parameters()]
        if nonfinite == "raise":
            message = (r"the gradient of params\[4\] \(shape \(16, 16\)\) holds a NaN or an infinity "
                       r"\(first at flat index 37: (inf|nan)\); the step was skipped")
            with pytest.raises(fusedopt.NonFiniteGradError, match=message) as error:
                fused_opt.step()
            assert error.value.index == 4  # body.2.weight: Net's own params come first
        else:
            assert fused_opt.step(lambda: "the loss") == "the loss"  # what the closure returns, as torch
        state_after = fused_opt.state_dict()
        assert state_after["state"].keys() == state_before["state"].keys()
        if step == 1:
            assert not fused_opt.state  # nothing made
        for i, entry in state_before["state"].items():
            assert state_after["state"][i].keys() == entry.keys()
            for key, value in entry.items():
                assert torch.equal(state_after["state"][i][key], value), (i, key)
        for p, (value, version) in zip(fused_net.parameters(), params_before):
            assert torch.equal(p.detach(), value) and p._version == version
    assert fused_opt.skipped_steps == len(poisoned)


def test_nonfinite_is_fusedopts_keyword_option():
    w = torch.nn.Parameter(torch.zeros(2))
    parameter = inspect.signature(ft.AdamW).parameters["nonfinite"]
    assert parameter.kind == inspect.Parameter.KEYWORD_ONLY and parameter.default == "apply"
    assert ft.AdamW([w]).nonfinite == "apply"
    with pytest.raises(ValueError, match=r"nonfinite must be one of 'apply', 'skip', 'raise', got 'ignore'"):
        ft.Adam([w], nonfinite="ignore")
    opt = ft.Lion([w], nonfinite="skip")
    w.grad = torch.tensor([1.0, math.nan])
    opt.step()
    assert opt.skipped_steps == 1 and not opt.state
    copied = copy.deepcopy(opt)  # torch's __getstate__ keeps only state, groups and defaults
    assert copied.nonfinite == "skip" and copied.skipped_steps == 1
    opt.load_state_dict(ft.Lion([torch.nn.Parameter(torch.zeros(2))]).state_dict())
    assert opt.nonfinite == "skip" and opt.skipped_steps == 1
    # "apply" (the default) lets the NaN through, as torch.optim does.
    opt = ft.Lion([w], lr=0.1)
    opt.step()
    assert math.isnan(w[1].item()) and w[0].item() == np.float32(-0.1) and opt.skipped_steps == 0


# --------------------------------------------------------------------------- the call


def test_one_fused_call_on_views_of_the_tensors_memory(monkeypatch):
    """The core gets NumPy views that start at each tensor's own memory (no
    copies), every param of every group in one call."""
    net = Net(torch.float32)
    opt = ft.Adam(param_groups(net, 1e-2), amsgrad=True)
    real = fusedopt.Adam.rule
    calls = []

    def spy(cache, groups, grads, states, check_finite=False, grad_scale=None):
        calls.append(1)
        assert check_finite is False  # nonfinite="apply": no extra pass over the grads
        assert grad_scale is None  # no GradScaler: nothing to divide
        params = all_params(opt)
        views = [v for group in groups for v in group["params"]]
        assert len(views) == len(grads) == len(states) == len(params)
        for p, view, grad, state in zip(params, views, grads, states):
            if p.grad is None:
                assert view is None and grad is None and state is None
                continue
            pairs = [(view, p), (grad, p.grad)]
            pairs += [(state[k], opt.state[p][k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                      if k in opt.state.get(p, {})]
            for array, tensor in pairs:
                assert array.__array_interface__["data"][0] == tensor.data_ptr()
                assert array.nbytes == tensor.numel() * tensor.element_size()
                assert np.shares_memory(array, tensor.detach().numpy())
        return real.step_cached(cache, groups, grads, states, check_finite, grad_scale)

    # The rule as the adapter uses it, with its step spied on.
    spied = types.SimpleNamespace(**{name: getattr(real, name) for name in
                                     ("name", "check_group", "state_keys", "state_spec", "initial_state")},
                                  step_cached=spy)
    monkeypatch.setattr(fusedopt.Adam, "rule", spied)
    for step, batch in enumerate(batches(torch.float32, 3), start=1):
        pointers = [p.data_ptr() for p in all_params(opt)]
        train_step(net, opt, batch, step)
        assert [p.data_ptr() for p in all_params(opt)] == pointers
    assert len(calls) == 3


def test_an_updated_param_invalidates_graphs_that_saved_it():
    """The update goes through NumPy, so the version counters are bumped by
    hand: autograd then refuses stale values, as after torch's in-place ops."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([w], lr=0.1)
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    version = w._version
    opt.step()
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_step_hooks_and_the_profiler_label_as_torchs_wrapper():
    """fusedopt.torch's step runs the hooks itself (torch's wrapper costs more
    than a small step): the global and the optimizer's own, in torch's order,
    a pre-hook's new arguments used, and under torch's profiler the step is
    labelled as torch labels it. A subclass's own step, which torch wraps,
    runs each hook once."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ft.SGD([w], lr=0.5)
    seen = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global pre")),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append("global post")),
        opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", o is opt, a, k))),
        opt.register_step_post_hook(lambda o, a, k: seen.append(("post", a[1:], k))),
    ]
    closure = lambda: seen.append("closure") or 7.0  # noqa: E731
    try:
        w.grad = torch.ones(2)
        assert opt.step(closure) == 7.0
        assert seen == ["global pre", ("pre", True, (opt, closure), {}), "closure", ("post", (closure,), {}),
                        "global post"]
        seen.clear()
        # A pre-hook may replace the arguments: here, the closure.
        handles.append(opt.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": lambda: 8.0})))
        assert opt.step(closure) == 8.0 and "closure" not in seen
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, -3.0]))  # two steps of 0.5

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        opt.step()
    assert "Optimizer.step#SGD.step" in {event.name for event in profile.events()}

    class CountingSGD(ft.SGD):
        def step(self, closure=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().step(closure)

    mine = CountingSGD([w], lr=0.5)
    counted = []
    mine.register_step_pre_hook(lambda o, a, k: counted.append("pre"))
    mine.register_step_post_hook(lambda o, a, k: counted.append("post"))
    mine.step()
    assert counted == ["pre", "post"] and mine.calls == 1
    torch.testing.assert_close(w.detach(), torch.tensor([-1.0, -4.0]))  # (it still steps)


def test_closure_zero_grad_and_hooks():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ft.SGD([w], lr=0.5)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 5.0
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, 0.0]))  # w - 0.5 * 2w
    assert seen == ["pre", "post"]
    opt.zero_grad(set_to_none=False)
    assert torch.equal(w.grad, torch.zeros(2))
    opt.zero_grad()
    assert w.grad is None


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_a_gradient_that_requires_grad_is_used_without_copying():
    """backward(create_graph=True) leaves gradients that require grad."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = ft.SGD([w], lr=0.25)
    (w * w).sum().backward(create_graph=True)
    assert w.grad.requires_grad
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_momentum_turned_on_later_starts_from_the_gradient_as_torch():
    (torch_net, fused_net), torch_opt, fused_opt = make_pair("SGD", {"lr": 0.1}, torch.float32)
    for step, batch in enumerate(batches(torch.float32, 6), start=1):
        if step == 3:
            for opt in (torch_opt, fused_opt):
                opt.param_groups[1]["momentum"] = 0.9
        train_both(torch_net, torch_opt, fused_net, fused_opt, batch, step)
        assert_same_as_torch(fused_opt, torch_opt, step, f"after step {step}")


def test_every_rule_has_a_torch_class_and_test_cases():
    """A rule added to fusedopt needs its row in fusedopt.torch, and cases here."""
    rules = [name for name in fusedopt.__all__
             if isinstance(getattr(fusedopt, name), type) and issubclass(getattr(fusedopt, name), fusedopt.Optimizer)
             and name != "Optimizer"]
    assert rules and set(rules) <= set(ft.__all__)
    for name in rules:
        if name in fusedopt.optimizers.EIGHT_BIT:  # a rule's class with state_bits=8 (tests/test_torch_8bit.py)
            base = getattr(ft, name).__mro__[1]
            assert getattr(ft, name).row is base.row and issubclass(getattr(fusedopt, name), base.row.fused)
            continue
        row = getattr(ft, name).row
        assert row.fused is getattr(fusedopt, name)
        cases = TORCH_CASES if row.torch_name else FUSED_ONLY_CASES
        assert any(case_name == name for case_name, _ in cases), f"no test case for {name}"


def torch_rules():
    """The fusedopt.torch classes that have a torch.optim counterpart (not
    the 8-bit presets, bitsandbytes' names for a rule's class)."""
    return [name for name in ft.__all__ if isinstance(getattr(ft, name), type)
            and issubclass(getattr(ft, name), ft.FusedOptimizer) and name != "FusedOptimizer"
            and getattr(ft, name).row.torch_name and name not in fusedopt.optimizers.EIGHT_BIT]


def test_constructor_is_torchs():
    """Same arguments, order, kinds and defaults as torch.optim's class, and
    fusedopt's defaults agree with torch's."""
    assert len(torch_rules()) == 9
    for name in torch_rules():
        theirs = inspect.signature(getattr(torch.optim, name)).parameters
        mine = inspect.signature(getattr(ft, name)).parameters
        assert list(mine)[: len(theirs)] == list(theirs), name
        for arg, parameter in theirs.items():
            assert mine[arg].kind == parameter.kind and mine[arg].default == parameter.default, (name, arg)
        fused_defaults = inspect.signature(getattr(fusedopt, name)).parameters
        for arg in fused_defaults.keys() & theirs.keys() - {"params"}:
            assert fused_defaults[arg].default == theirs[arg].default, (name, arg)
    w = torch.nn.Parameter(torch.zeros(2))
    assert ft.Adam([w], 0.1, (0.8, 0.9)).param_groups[0]["betas"] == (0.8, 0.9)  # positional, as torch
    assert ft.Adam([w], betas=[0.8, 0.9]).param_groups[0]["betas"] == (0.8, 0.9)
    assert ft.SGD([w], foreach=False, fused=None).param_groups[0]["foreach"] is False

    class MyAdam(ft.Adam):  # a subclass keeps its rule
        pass

    assert MyAdam([w], lr=0.5).row is ft.Adam.row


# --------------------------------------------------------------------------- errors


def test_unusable_params_are_refused_by_name():
    good = torch.nn.Parameter(torch.zeros(2))
    for param, error, message in [
        (torch.zeros(3, dtype=torch.complex64), TypeError, r"params\[1\].*complex dtype torch.complex64"),
        (torch.zeros(3, dtype=torch.float8_e4m3fn), TypeError,
         r"params\[1\].*dtype torch.float8_e4m3fn.*float32, float64, bfloat16 and float16"),
        (torch.zeros(3, dtype=torch.int32), TypeError, r"dtype torch.int32"),
        (torch.zeros(4, 6)[:, ::2], ValueError, r"params\[1\] \(shape \(4, 3\)\) is not dense.*contiguous\(\)"),
        (torch.sparse_coo_tensor([[0]], [1.0], (3,), check_invariants=True), TypeError, r"params\[1\].*torch.sparse_coo"),
    ]:
        with pytest.raises(error, match=message):
            ft.Adam([good, param])
    with pytest.raises(ValueError, match=r"params\[1\] shares memory with params\[0\]"):
        storage = torch.zeros(10)
        ft.SGD([storage[:6], storage[4:]])


def test_errors_name_the_param_by_its_name():
    net = torch.nn.Linear(3, 2).to(torch.float8_e5m2)
    with pytest.raises(TypeError, match=r"params\[0\] 'weight' \(shape \(2, 3\)\) has dtype torch.float8_e5m2"):
        ft.AdamW(net.named_parameters())


def test_a_param_broken_after_construction_fails_the_step_and_changes_nothing():
    net = Net(torch.float32)
    opt = ft.Adam(net.named_parameters(), lr=1e-2)
    batch = batches(torch.float32, 1)[0]
    train_step(net, opt, batch, 1)
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(batch[0], 1), batch[1]).backward()
    layer = net.body[2]
    broken = torch.zeros(16, 32)[:, ::2]  # same shape and values, every other element of a block
    broken.copy_(layer.weight.data)
    layer.weight.data = broken
    with pytest.raises(ValueError, match=r"params\[4\] 'body.2.weight' \(shape \(16, 16\)\) is not dense"):
        opt.step()
    after = opt.state_dict()
    for i, entry in before[0]["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][i][key], value), (i, key)
    for p, was in zip(net.parameters(), before[1]):
        assert torch.equal(p.detach(), was)


def test_channels_last_and_transposed_params_train_like_torch():
    """Dense layouts other than contiguous (torch's recommended channels_last
    for CPU convolutions, a transposed weight) are updated in place, in their
    layout, as torch.optim updates them."""
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    ours, theirs = make().to(memory_format=torch.channels_last), make().to(memory_format=torch.channels_last)
    theirs.load_state_dict(ours.state_dict())
    extra = torch.nn.Parameter(torch.randn(6, 5).t())  # a transpose: Fortran order
    extra_theirs = torch.nn.Parameter(extra.detach().clone().t().contiguous().t())
    assert not ours[0].weight.is_contiguous() and ours[0].weight.is_contiguous(memory_format=torch.channels_last)
    opt = ft.AdamW([*ours.parameters(), extra], lr=1e-2)
    reference_opt = torch.optim.AdamW([*theirs.parameters(), extra_theirs], lr=1e-2, foreach=False)
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last)
    for _ in range(4):
        for net, e, o in ((ours, extra, opt), (theirs, extra_theirs, reference_opt)):
            o.zero_grad()
            (net(x).square().mean() + (e * e).sum()).backward()
            o.step()
    pointers_kept = ours[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert pointers_kept
    for a, b in zip([*ours.parameters(), extra], [*theirs.parameters(), extra_theirs]):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_and_mistyped_gradients_are_refused_by_name():
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    opt = ft.SGD(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1, 3])).sum().backward()
    with pytest.raises(TypeError, match=r"the gradient of params\[0\] \(shape \(5, 2\)\) is torch.sparse_coo: fusedopt.torch works on dense tensors only"):
        opt.step()
    w = torch.nn.Parameter(torch.zeros(4))
    opt = ft.Adam([w])
    w.grad = torch.zeros(8)[::2]
    with pytest.raises(ValueError, match=r"the gradient of params\[0\] \(shape \(4,\)\) has strides \(2,\)"):
        opt.step()
    assert not opt.state  # no state was made by the failed step


def test_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"does not support capturable=True"):
        ft.Adam([w], capturable=True)
    with pytest.raises(ValueError, match=r"does not support differentiable=True"):
        ft.SGD([w], differentiable=True)
    with pytest.raises(TypeError, match="momentun"):
        ft.SGD([w], momentun=0.9)
    with pytest.raises(ValueError, match=r"betas\[1\].*must be in \[0.0, 1.0\)"):
        ft.Adam([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        ft.SGD([w], nesterov=True)
    opt = ft.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=r"lr \(param group 1\) must be >= 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0})
    assert len(opt.param_groups) == 1  # not added


def test_importing_without_torch_says_how_to_install_it():
    code = "import sys; sys.modules['torch'] = None\nimport fusedopt.torch"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: fusedopt.torch needs PyTorch" in result.stderr
    assert 'pip install "fusedopt[torch]"' in result.stderr


# --------------------------------------------------------------------------- state made lazily (issue 10)


@pytest.fixture
def swapping_module_params():
    """``Module.to_empty`` keeps the param objects (swapping their contents,
    so an optimizer made before it sees the real tensors) only with this
    flag; by default it makes new params, which no optimizer made earlier
    (torch's included) would update."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(previous)


def test_a_model_made_on_the_meta_device_trains_after_to_empty(swapping_module_params):
    """As with torch.optim: params on the meta device at construction (no
    memory yet), made real by ``to_empty``, then trained; the state is made
    at the first step, on the CPU."""
    def build(optimizer):
        with torch.device("meta"):
            net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = optimizer(net.parameters())
        net.to_empty(device="cpu")
        assert all_params(opt)[0] is net[0].weight
        torch.manual_seed(3)
        for p in net.parameters():
            torch.nn.init.normal_(p)
        return net, opt

    torch_net, torch_opt = build(lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False))
    fused_net, fused_opt = build(lambda ps: ft.AdamW(ps, lr=1e-2))
    assert not fused_opt.state
    for step, (x, y) in enumerate(batches(torch.float32, 4), start=1):
        torch_opt.zero_grad()
        fused_opt.zero_grad()
        torch.nn.functional.mse_loss(torch_net(x), y).backward()
        for p, q in zip(torch_net.parameters(), fused_net.parameters()):
            q.grad = p.grad.clone()
        torch_opt.step()
        fused_opt.step()
        assert_same_as_torch(fused_opt, torch_opt, step, f"after step {step}")


def test_a_meta_param_still_on_meta_at_the_step_is_refused_by_name():
    w = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = ft.Adam([w])
    w.grad = torch.zeros(3, device="meta")
    with pytest.raises(TypeError, match=r"params\[0\] \(shape \(3,\)\) is on meta: fusedopt.torch updates CPU"):
        opt.step()
    assert not opt.state


def test_adagrad_makes_its_state_in_the_constructor_on_meta_too_as_torch(swapping_module_params):
    """torch 2.13's Adagrad makes its state in the constructor, on the
    param's device: a meta model's state stays on meta after ``to_empty``,
    and torch's step then fails. fusedopt.torch does the same, and says
    which tensor is on meta."""
    with torch.device("meta"):
        net = torch.nn.Linear(3, 2)
    torch_opt, fused_opt = torch.optim.Adagrad(net.parameters()), ft.Adagrad(net.parameters())
    for opt in (torch_opt, fused_opt):
        assert {key: value.device.type for key, value in opt.state[net.weight].items()} == \
            {"step": "cpu", "sum": "meta"}
    net.to_empty(device="cpu")
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch_opt.step()
    with pytest.raises(TypeError, match=r"state\['sum'\] of params\[0\] \(shape \(2, 3\)\) is on meta"):
        fused_opt.step()


# --------------------------------------------------------------------------- torch's layout and errors (issue 10)


def test_adadelta_keeps_torchs_param_group_layout():
    """No ``scale`` key in the groups (nor in state_dict) for torch's rule;
    the course's form, which torch lacks, keeps its choice in the groups."""
    w = torch.nn.Parameter(torch.zeros(2))
    mine, theirs = ft.Adadelta([w]), torch.optim.Adadelta([torch.nn.Parameter(torch.zeros(2))])
    assert mine.param_groups[0].keys() == theirs.param_groups[0].keys()
    assert mine.state_dict()["param_groups"][0].keys() == theirs.state_dict()["param_groups"][0].keys()
    assert "scale" not in mine.defaults
    course = ft.Adadelta([w], scale="weights", lr=0.1)
    assert course.param_groups[0]["scale"] == "weights"
    w.grad = torch.ones(2)
    course.step()
    assert set(course.state[w]) == {"step", "square_avg", "square_weight_avg"}
    with pytest.raises(ValueError, match=r"scale \(param group 0\) must be one of"):
        ft.Adadelta([w], scale="biases")


def test_a_tensor_lr_with_more_than_one_element_is_a_value_error_as_in_torch():
    w = torch.nn.Parameter(torch.zeros(2))
    for name in ("Adam", "AdamW", "SGD"):
        with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
            getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor([0.1, 0.2]))
        with pytest.raises(ValueError, match=r"Tensor lr must be 1-element, got shape \(2,\)"):
            getattr(ft, name)([w], lr=torch.tensor([0.1, 0.2]))
    # A one-element tensor works, as in torch.
    q = torch.nn.Parameter(torch.zeros(2))
    mine, theirs = ft.SGD([w], lr=torch.tensor(0.5)), torch.optim.SGD([q], lr=torch.tensor(0.5))
    for p, opt in ((w, mine), (q, theirs)):
        p.grad = torch.tensor([1.0, -2.0])
        opt.step()
    assert torch.equal(w.detach(), q.detach())


@pytest.mark.parametrize("value, error, message", [
    ("3", TypeError, r"state\['step'\] of params\[1\] must be a one-element tensor \(torch keeps the count in a "
                     r"0-d float tensor\), got str '3'"),
    (3, TypeError, r"state\['step'\] of params\[1\] must be a one-element tensor .*got int 3"),
    (torch.zeros(3), ValueError, r"state\['step'\] of params\[1\] must be a one-element tensor, got one of "
                                 r"shape \(3,\)"),
    (torch.tensor(-1.0), ValueError, r"state\['step'\] of params\[1\] must be a non-negative whole number"),
    (torch.tensor(2.0**62), ValueError, r"state\['step'\] of params\[1\] must be a non-negative whole number"),
], ids=["str", "int", "3-element", "negative", "too-large"])
def test_a_live_step_of_the_wrong_kind_is_refused_by_name(value, error, message):
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    opt = ft.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    opt.state[params[1]]["step"] = value
    with pytest.raises(error, match=message):
        opt.step()
    for p, was in zip(params, before[1]):
        assert torch.equal(p.detach(), was)
    assert opt.state[params[0]]["step"].item() == 1
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[params[0]][key], before[0]["state"][0][key])


# --------------------------------------------------------------------------- what a step keeps between steps (issue 15)

# Edits a training loop (or its user) makes between steps, each applied alike
# to torch's optimizer and net and to fusedopt's: fusedopt.torch keeps the
# core's arguments between steps and must notice every one.
EDITS = [
    ("nothing", lambda opt, net: None),
    ("lr changed", lambda opt, net: opt.param_groups[0].update(lr=0.03)),
    ("betas and weight_decay changed",
     lambda opt, net: opt.param_groups[1].update(betas=(0.8, 0.99), weight_decay=0.1)),
    ("a param's .data reassigned", lambda opt, net: setattr(net.body[2].weight, "data",
                                                            net.body[2].weight.data.clone())),
    ("a gradient's .data reassigned", lambda opt, net: setattr(net.body[0].weight.grad, "data",
                                                               net.body[0].weight.grad.data.clone())),
    ("a state tensor replaced", lambda opt, net: opt.state[net.body[0].weight].update(
        exp_avg=opt.state[net.body[0].weight]["exp_avg"] * 0.5)),
    ("a state tensor edited in place", lambda opt, net: opt.state[net.body[4].weight]["exp_avg"].mul_(2)),
    ("a state tensor moved to shared memory",
     lambda opt, net: opt.state[net.body[2].bias]["exp_avg_sq"].share_memory_()),
    ("a step count edited in place", lambda opt, net: opt.state[net.body[0].bias]["step"].fill_(10)),
    ("a step count replaced", lambda opt, net: opt.state[net.body[0].bias].__setitem__("step", torch.tensor(3.0))),
    # Read and written through their NumPy views (float32 and float64 steps are read from memory directly).
    ("a step count replaced by an int64 tensor",
     lambda opt, net: opt.state[net.body[2].bias].__setitem__("step", torch.tensor(5))),
    ("a step count edited in place in an int64 tensor", lambda opt, net: opt.state[net.body[2].bias]["step"].add_(1)),
    ("a param's state deleted", lambda opt, net: opt.state.pop(net.body[4].bias)),
    ("a param's state dict replaced", lambda opt, net: opt.state.__setitem__(
        net.body[2].weight, {k: v.clone() for k, v in opt.state[net.body[2].weight].items()})),
    ("a group added", lambda opt, net: opt.add_param_group({"params": [net.extra], "lr": 0.05})),
    ("load_state_dict", lambda opt, net: opt.load_state_dict(checkpoint(opt))),
    ("every state cleared", lambda opt, net: opt.state.clear()),
]


def test_every_edit_between_steps_is_seen():
    """A step after each edit, then one more, torch against fusedopt, the
    params and every state tensor compared after each; gradients alternate
    between new tensors (``zero_grad()``) and the same tensors written in
    place (``zero_grad(set_to_none=False)``); one param gets a gradient on
    odd steps only, one never."""
    dtype = torch.float64
    with default_dtype(dtype):
        nets = Net(dtype), Net(dtype)
        for net in nets:
            net.extra = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=dtype))  # for "a group added"
        groups = [param_groups(net, 1e-2) for net in nets]
        for group, net in zip(groups, nets):
            group[1]["params"] = [p for p in group[1]["params"] if p is not net.extra]
        torch_opt = torch.optim.Adam(groups[0], lr=1e-2, foreach=False)
        fused_opt = ft.Adam(groups[1], lr=1e-2)
        data = batches(dtype, 2 * len(EDITS) + 1)
        for step, batch in enumerate(data, start=1):
            edit_name, edit = EDITS[(step - 1) // 2] if step % 2 == 0 else ("nothing", EDITS[0][1])
            torch_opt.zero_grad()
            torch.nn.functional.mse_loss(nets[0](batch[0], step), batch[1]).backward()
            nets[0].extra.grad = torch.full((7,), 0.1 * step, dtype=dtype)
            in_place = step % 4 in (0, 1)
            if not in_place:
                fused_opt.zero_grad()
            for p, q in zip(nets[0].parameters(), nets[1].parameters()):
                if p.grad is None:
                    q.grad = None
                elif in_place and q.grad is not None:
                    q.grad.copy_(p.grad)
                else:
                    q.grad = p.grad.clone()
            for opt, net in ((torch_opt, nets[0]), (fused_opt, nets[1])):
                edit(opt, net)
            torch_opt.step()
            fused_opt.step()
            assert_same_as_torch(fused_opt, torch_opt, step, f"after step {step} ({edit_name})")
    assert len(fused_opt.param_groups) == 3 and fused_opt.state[nets[1].extra]["step"].item() > 0


def test_new_memory_is_updated_and_the_old_left_alone():
    """After ``.data`` is reassigned (a param's, a gradient's) or a state
    tensor moves to shared memory, the step writes the new memory, reads the
    new gradient, and leaves the memory the tensors had before unchanged."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = ft.SGD([w], lr=0.5, momentum=0.5)
    w.grad = torch.ones(4)
    opt.step()  # w = 0.5, buffer = 1
    old_param, old_grad = w.data, w.grad.data
    w.data = torch.full((4,), 2.0)
    w.grad.data = torch.full((4,), 4.0)
    opt.state[w]["momentum_buffer"].share_memory_()  # new memory under the same tensor
    opt.step()  # buffer = 0.5 * 1 + 4 = 4.5; w = 2 - 0.5 * 4.5
    assert torch.equal(old_param, torch.full((4,), 0.5)) and torch.equal(old_grad, torch.ones(4))
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.full((4,), 4.5))
    assert torch.equal(w.detach(), torch.full((4,), 2.0 - 0.5 * 4.5))


def test_scalar_state_edited_in_place_is_read_again():
    """NAdam's mu_product and the step count are numbers for the core: an
    edit in place between steps is seen, as torch sees it (in float64, where
    torch keeps mu_product as precisely as the core)."""
    with default_dtype(torch.float64):
        p, q = (torch.nn.Parameter(torch.linspace(-1, 1, 5)) for _ in range(2))
        mine, theirs = ft.NAdam([p]), torch.optim.NAdam([q], foreach=False)
        for step in range(1, 5):
            for param, opt in ((p, mine), (q, theirs)):
                param.grad = torch.linspace(0.5, -0.3, 5) * step
                if step == 3:
                    opt.state[param]["mu_product"].mul_(0.5)
                    opt.state[param]["step"].add_(2)
                opt.step()
            assert_same_as_torch(mine, theirs, step, f"after step {step}")
        assert mine.state[p]["step"].item() == 6


def test_a_step_keeps_no_gradient_alive():
    """torch frees the gradients at ``zero_grad()`` (or ``model.zero_grad()``):
    what fusedopt.torch keeps between steps must not hold them, or a
    backward would need memory for two sets."""
    w = torch.nn.Parameter(torch.zeros(1000))
    opt = ft.Adam([w])
    for step in range(3):
        w.grad = torch.ones(1000)
        opt.step()
    gradient = weakref.ref(w.grad)
    w.grad = None  # as Module.zero_grad() does
    assert gradient() is None
    w.grad = torch.ones(1000)
    opt.step()  # a gradient again: the step takes it
    assert opt.state[w]["step"].item() == 4
    gradient = weakref.ref(w.grad)
    opt.zero_grad()
    assert gradient() is None


@pytest.mark.parametrize("edit, new_key", [
    ({"amsgrad": True}, "max_exp_avg_sq"),
    ({"master_weights": True}, "master_param"),
    ({"kahan_sum": True}, "kahan_comp"),
])
def test_a_setting_that_adds_state_between_steps_is_seen(edit, new_key):
    """The plan is kept while a group's values are the same objects; a value
    replaced (here one that asks for another state array) is looked at, and
    the step makes that array as the NumPy API's step does, in torch's state."""
    dtype = torch.bfloat16 if new_key != "max_exp_avg_sq" else torch.float32
    start = torch.linspace(-1, 1, 33).to(dtype)
    w = torch.nn.Parameter(start.clone())
    array = ft._view(start.clone())
    opt, numpy_opt = ft.Adam([w], lr=0.1), fusedopt.Adam([array], lr=0.1)
    for step in range(1, 5):
        grad = torch.linspace(-2, 3, 33).to(dtype) * step
        w.grad = grad.clone()
        if step == 3:
            opt.param_groups[0].update(edit)
            numpy_opt.param_groups[0].update(edit)
        opt.step()
        numpy_opt.step([ft._view(grad)])
        assert (new_key in opt.state[w]) == (step >= 3)
        assert ft._view(w).tobytes() == array.tobytes(), f"the param after step {step}"
        for key, value in numpy_opt.state[0].items():
            if key != "step":
                assert isinstance(opt.state[w][key], torch.Tensor), key
                assert ft._view(opt.state[w][key]).tobytes() == value.tobytes(), f"{key} after step {step}"
