"""The table that drives the suite (PyTorch's OptimizerInfo idea): one entry
per rule, with every option that changes its arithmetic or its streams, its
torch.optim counterpart, its bad hyperparameters and the options that create
every state array it can keep. Every list of rules in the suite is derived
from RULES below; adding a rule means adding its entry here."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

import fusedopt
from fusedopt import _core, reference
from fusedopt.precision import bfloat16


@dataclass(frozen=True)
class Case:
    """One set of constructor options of a rule."""

    kwargs: dict
    # Checked against the NumPy reference, resumed, checkpointed, threaded, on
    # every target (CASES). False for the few option sets that only the torch
    # comparison has used.
    reference: bool = True
    # Also compared with torch.optim, where the rule has a torch name. False for
    # the forms torch lacks (Adadelta's scale="weights").
    torch: bool = True


@dataclass(frozen=True)
class BadHyperparameter:
    """Constructor options that must be rejected, and how."""

    kwargs: dict
    error: type
    message: str  # a regex naming the argument


@dataclass(frozen=True)
class RuleInfo:
    name: str                   # the class in fusedopt and in fusedopt.reference
    torch_name: str | None      # the same rule in torch.optim; None where torch has none
    default_lr: float
    state_keys: tuple           # every per-param state value the rule can keep, "step" aside
    full_state: tuple           # option sets that between them create every one of state_keys
    cases: tuple
    bad_hyperparameters: tuple
    fused_only_options: tuple = ()  # constructor arguments torch's class lacks
    defaults: dict | None = None    # where torch has no class: the defaults users are promised


RULES = (
    RuleInfo(
        "Momentum", torch_name=None, default_lr=1e-3,
        state_keys=("velocity",),
        full_state=({},),
        defaults={"lr": 1e-3, "momentum": 0.9},
        cases=(
            Case({}),
            Case({"lr": 0.05, "momentum": 0.5}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"momentum": 1.0}, ValueError, r"momentum .* \[0.0, 1.0\)"),
        ),
    ),
    RuleInfo(
        "SGD", torch_name="SGD", default_lr=1e-3,
        state_keys=("momentum_buffer",),
        full_state=({"momentum": 0.9, "weight_decay": 0.01},),
        cases=(
            Case({}),
            Case({"momentum": 0.9}),
            Case({"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
            Case({"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
            Case({"momentum": 0.5, "maximize": True}),
            Case({"weight_decay": 0.1, "maximize": True}),
            Case({"lr": 0.1}, reference=False),
            Case({"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}, reference=False),
            Case({"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
                 reference=False),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"lr": -0.1}, ValueError, "lr"),
            BadHyperparameter({"momentum": -0.5}, ValueError, "momentum"),
            BadHyperparameter({"weight_decay": -1.0}, ValueError, "weight_decay"),
            BadHyperparameter({"nesterov": True}, ValueError, "nesterov needs momentum > 0"),
            BadHyperparameter({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "dampening == 0"),
            BadHyperparameter({"dampening": float("inf")}, ValueError, "dampening .* finite"),
        ),
    ),
    RuleInfo(
        "Adadelta", torch_name="Adadelta", default_lr=1.0,
        state_keys=("square_avg", "acc_delta", "square_weight_avg"),
        full_state=({}, {"scale": "weights"}),  # the two scales keep different arrays
        fused_only_options=("scale",),
        cases=(
            Case({}),
            Case({"rho": 0.5, "eps": 1e-4, "weight_decay": 0.1, "maximize": True}),
            Case({"scale": "weights", "lr": 0.1}, torch=False),
            Case({"scale": "weights", "rho": 0.95, "weight_decay": 0.01, "maximize": True}, torch=False),
            Case({"lr": 0.5, "rho": 0.5, "eps": 1e-4, "weight_decay": 0.1, "maximize": True}, reference=False),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"rho": 1.5}, ValueError, r"rho .* \[0.0, 1.0\]"),
            BadHyperparameter({"rho": -0.1}, ValueError, "rho"),
            BadHyperparameter({"eps": -1.0}, ValueError, "eps"),
            BadHyperparameter({"scale": "squares"}, ValueError, "scale .* 'updates', 'weights'"),
        ),
    ),
    RuleInfo(
        "Adam", torch_name="Adam", default_lr=1e-3,
        state_keys=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        full_state=({"amsgrad": True},),
        cases=(
            Case({}),
            Case({"amsgrad": True}),
            Case({"weight_decay": 0.1}),
            Case({"betas": (0.5, 0.9), "eps": 1e-3, "maximize": True, "amsgrad": True, "weight_decay": 0.05}),
            Case({"decoupled_weight_decay": True, "weight_decay": 0.1}),
            Case({"amsgrad": True, "weight_decay": 0.1}, reference=False),
            Case({"betas": (0.5, 0.9), "eps": 1e-3, "maximize": True, "decoupled_weight_decay": True,
                  "weight_decay": 0.1}, reference=False),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]"),
            BadHyperparameter({"betas": (0.9,)}, TypeError, "betas .* pair"),
            BadHyperparameter({"lr": float("inf")}, ValueError, "lr"),
            BadHyperparameter({"maximize": "yes"}, TypeError, "maximize"),
        ),
    ),
    RuleInfo(
        "AdamW", torch_name="AdamW", default_lr=1e-3,
        state_keys=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        full_state=({"amsgrad": True},),
        cases=(
            Case({}),
            Case({"amsgrad": True, "weight_decay": 0.5, "maximize": True}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"weight_decay": -0.01}, ValueError, "weight_decay"),
        ),
    ),
    RuleInfo(
        "RMSprop", torch_name="RMSprop", default_lr=1e-2,
        state_keys=("square_avg", "momentum_buffer", "grad_avg"),
        full_state=({"momentum": 0.9, "centered": True},),
        cases=(
            Case({}),
            Case({"momentum": 0.9}),
            Case({"centered": True}),
            Case({"momentum": 0.5, "centered": True, "alpha": 0.9, "weight_decay": 0.01, "maximize": True}),
            Case({"momentum": 0.9, "weight_decay": 0.01}, reference=False),
            Case({"centered": True, "alpha": 0.9}, reference=False),
            Case({"momentum": 0.5, "centered": True, "eps": 1e-4, "maximize": True}, reference=False),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"alpha": 1.5}, ValueError, r"alpha \(param group 0\) must be in \[0.0, 1.0\], got 1.5"),
            BadHyperparameter({"momentum": -0.1}, ValueError, r"momentum \(param group 0\) must be >= 0.0"),
            BadHyperparameter({"centered": 1}, TypeError, r"centered \(param group 0\) must be a bool"),
        ),
    ),
    RuleInfo(
        "Adagrad", torch_name="Adagrad", default_lr=1e-2,
        state_keys=("sum",),
        full_state=({"initial_accumulator_value": 0.1},),
        cases=(
            Case({}),
            Case({"lr_decay": 0.1, "initial_accumulator_value": 0.3, "weight_decay": 0.01}),
            Case({"eps": 1e-3, "maximize": True}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"lr_decay": -1.0}, ValueError, r"lr_decay \(param group 0\) must be >= 0.0"),
            BadHyperparameter({"initial_accumulator_value": -0.1}, ValueError,
                              r"initial_accumulator_value \(param group 0\)"),
            BadHyperparameter({"eps": math.nan}, ValueError, r"eps \(param group 0\) must be finite"),
        ),
    ),
    RuleInfo(
        "NAdam", torch_name="NAdam", default_lr=2e-3,
        state_keys=("exp_avg", "exp_avg_sq", "mu_product"),
        full_state=({},),
        cases=(
            Case({}),
            Case({"weight_decay": 0.1, "momentum_decay": 0.1}),
            Case({"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True, "betas": (0.5, 0.9)}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"momentum_decay": -1e-3}, ValueError,
                              r"momentum_decay \(param group 0\) must be >= 0.0"),
            BadHyperparameter({"betas": (0.9, 1.0)}, ValueError,
                              r"betas\[1\] \(param group 0\) must be in \[0.0, 1.0\)"),
        ),
    ),
    RuleInfo(
        "RAdam", torch_name="RAdam", default_lr=1e-3,
        state_keys=("exp_avg", "exp_avg_sq"),
        full_state=({},),
        cases=(
            Case({}),  # beta2 = 0.999: unrectified for t <= 5, rectified after
            Case({"betas": (0.5, 0.9), "weight_decay": 0.1, "maximize": True}),  # rectified from t = 6
            Case({"decoupled_weight_decay": True, "weight_decay": 0.1, "eps": 1e-3}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"betas": (-0.1, 0.9)}, ValueError,
                              r"betas\[0\] \(param group 0\) must be in \[0.0, 1.0\)"),
            BadHyperparameter({"decoupled_weight_decay": "yes"}, TypeError,
                              r"decoupled_weight_decay \(param group 0\) must be a bool"),
        ),
    ),
    RuleInfo(
        "Adamax", torch_name="Adamax", default_lr=2e-3,
        state_keys=("exp_avg", "exp_inf"),
        full_state=({},),
        cases=(
            Case({}),
            Case({"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.1, "maximize": True}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"weight_decay": -1.0}, ValueError, r"weight_decay \(param group 0\) must be >= 0.0"),
        ),
    ),
    RuleInfo(
        "Lion", torch_name=None, default_lr=1e-4,
        state_keys=("exp_avg",),
        full_state=({},),
        defaults={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},  # the paper's
        cases=(
            Case({}),
            Case({"betas": (0.5, 0.9), "weight_decay": 0.1, "maximize": True}),
        ),
        bad_hyperparameters=(
            BadHyperparameter({"lr": -1e-4}, ValueError, r"lr \(param group 0\) must be >= 0.0"),
            BadHyperparameter({"betas": 0.9}, TypeError, r"betas \(param group 0\) must be a pair of numbers"),
        ),
    ),
)


# ------------------------------------------------------------ the precisions

@dataclass(frozen=True)
class Precision:
    """One storage mode: the dtype of the params and grads, the storage
    options every rule takes (docs/precision.md), and a loss scale."""

    name: str
    dtype: np.dtype
    options: dict = field(default_factory=dict)
    grad_scale: float | None = None  # the grads are multiplied by it, and step() divides
    # A per-key state_dtype: the rule's first state key gets the first dtype,
    # its second the second, any other keeps the param's dtype.
    per_key_state_dtypes: tuple = ()

    def kwargs(self, name):
        """The storage options for rule ``name`` (the per-key dict names its keys)."""
        if not self.per_key_state_dtypes:
            return dict(self.options)
        keys = RULE_INFO[name].state_keys
        return {**self.options, "state_dtype": dict(zip(keys, self.per_key_state_dtypes))}

    def params(self, rng, sizes):
        """Params of about 1e-3: below 2**-8, where a bfloat16 ulp (<= 2**-15)
        is far smaller than any rule's first step, so every element must move."""
        return [(rng.standard_normal(n) * 1e-3).astype(self.dtype) for n in sizes]

    def grads(self, rng, sizes):
        """Gradients at least 0.1 in magnitude (never zero), times the loss scale."""
        out = []
        for n in sizes:
            g = rng.standard_normal(n)
            out.append(((g + np.copysign(0.1, g)) * (self.grad_scale or 1.0)).astype(self.dtype))
        return out


FLOAT16, FLOAT32 = np.dtype(np.float16), np.dtype(np.float32)

PRECISIONS = (
    Precision("bfloat16", bfloat16),                                   # torch's fused kernels: state in the param dtype
    Precision("float16", FLOAT16),
    Precision("bfloat16-state-float32", bfloat16, {"state_dtype": np.float32}),  # DeepSpeed's fp32 optimizer states
    Precision("float16-state-float32", FLOAT16, {"state_dtype": np.float32}),
    Precision("float32-state-bfloat16", FLOAT32, {"state_dtype": bfloat16}),
    Precision("float32-state-float16", FLOAT32, {"state_dtype": np.float16}),
    Precision("bfloat16-master-weights", bfloat16, {"master_weights": True}),
    Precision("bfloat16-kahan", bfloat16, {"kahan_sum": True}),
    Precision("float16-kahan", FLOAT16, {"kahan_sum": True}),
    Precision("bfloat16-stochastic", bfloat16, {"rounding": "stochastic", "seed": 1234}),
    Precision("float16-stochastic", FLOAT16, {"rounding": "stochastic", "seed": 2**63 + 5}),  # the key's high half
    Precision("bfloat16-state-per-key", bfloat16, per_key_state_dtypes=(np.float32, np.float16)),
    Precision("float32-grad-scale", FLOAT32, grad_scale=1000.0),      # not a power of two: the division rounds
    Precision("bfloat16-grad-scale", bfloat16, grad_scale=256.0),
)
PRECISION_IDS = [p.name for p in PRECISIONS]

# 8-bit block-quantized state (docs/precision.md) in every param mode; the
# tests set min_8bit_size low enough that small arrays are quantized too.
EIGHT_BIT = {"state_bits": 8}
QUANTIZED_PRECISIONS = (
    Precision("float32-8bit", FLOAT32, EIGHT_BIT),
    Precision("bfloat16-8bit", bfloat16, EIGHT_BIT),
    Precision("float16-8bit", FLOAT16, EIGHT_BIT),
    Precision("bfloat16-8bit-master-weights", bfloat16, {**EIGHT_BIT, "master_weights": True}),
    Precision("bfloat16-8bit-kahan", bfloat16, {**EIGHT_BIT, "kahan_sum": True}),
    Precision("float16-8bit-stochastic", FLOAT16, {**EIGHT_BIT, "rounding": "stochastic", "seed": 7}),
    Precision("float32-8bit-blocks-64", FLOAT32, {**EIGHT_BIT, "block_size": 64}),
    Precision("float32-8bit-blocks-192", FLOAT32, {**EIGHT_BIT, "block_size": 192}),  # not a divisor of a tile
    Precision("bfloat16-8bit-blocks-1024", bfloat16, {**EIGHT_BIT, "block_size": 1024}),  # a block over tiles
    Precision("bfloat16-8bit-kahan-blocks-4096", bfloat16, {**EIGHT_BIT, "kahan_sum": True, "block_size": 4096}),
    Precision("float16-8bit-stochastic-blocks-1024", FLOAT16,
              {**EIGHT_BIT, "rounding": "stochastic", "seed": 9, "block_size": 1024}),
    Precision("float32-8bit-grad-scale", FLOAT32, EIGHT_BIT, grad_scale=1000.0),
    Precision("bfloat16-8bit-grad-scale", bfloat16, EIGHT_BIT, grad_scale=1000.0),  # the one pass unscales
)
QUANTIZED_PRECISION_IDS = [p.name for p in QUANTIZED_PRECISIONS]


# ------------------------------------------------------ lists derived from RULES

def case_id(name, kwargs):
    """A readable, stable test id: the class name and the options as given."""
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _ids(rows):
    return [case_id(row[0], row[1]) for row in rows]


RULE_INFO = {info.name: info for info in RULES}
RULE_NAMES = [info.name for info in RULES]

# (class name, kwargs): against the reference, resumed, checkpointed, threaded.
CASES = [(info.name, case.kwargs) for info in RULES for case in info.cases if case.reference]
CASE_IDS = _ids(CASES)

# (fusedopt class name, kwargs) with a torch.optim counterpart (RULE_INFO[name].torch_name).
TORCH_CASES = [(info.name, case.kwargs) for info in RULES if info.torch_name for case in info.cases if case.torch]
TORCH_CASE_IDS = _ids(TORCH_CASES)

# (class name, kwargs): one per class (two for Adadelta's two scales), every state array created.
FULL_STATE_CASES = [(info.name, kwargs) for info in RULES for kwargs in info.full_state]
FULL_STATE_CASE_IDS = _ids(FULL_STATE_CASES)

# (class name, kwargs, error type, message regex)
BAD_HYPERPARAMETERS = [(info.name, bad.kwargs, bad.error, bad.message)
                       for info in RULES for bad in info.bad_hyperparameters]
BAD_HYPERPARAMETER_IDS = _ids(BAD_HYPERPARAMETERS)


def default_lr(name, kwargs):
    """The lr a case runs with: its own, or the class's default."""
    return kwargs.get("lr", RULE_INFO[name].default_lr)


# ------------------------------------------------------------ shared helpers

SIZES = [0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 65, 1000, 100003]

# "A few ULP per step" (ALGORITHMS.md): the fused kernels and the reference
# evaluate in the same order, so in practice they agree exactly.
RTOL = {np.float32: 1e-6, np.float64: 1e-13}


def make_pair(name, kwargs, params, second_group=None):
    """The fused optimizer and the NumPy reference over copies of the same params.

    With ``second_group`` (a dict of overrides), the params are split into two
    param groups: the first half with the defaults, the rest with the overrides.
    """
    copies = [p.copy() for p in params]
    if second_group is None:
        fused_params, reference_params = params, copies
    else:
        half = len(params) // 2
        fused_params = [{"params": params[:half]}, {"params": params[half:], **second_group}]
        reference_params = [{"params": copies[:half]}, {"params": copies[half:], **second_group}]
    return getattr(fusedopt, name)(fused_params, **kwargs), getattr(reference, name)(reference_params, **kwargs)


@contextlib.contextmanager
def on_target(name):
    """Run the block on SIMD target ``name``, then restore the chosen one
    (the ``target`` fixture, for a test that visits every target itself)."""
    chosen = fusedopt.cpu_features()["isa"]
    _core.select_target(name)
    try:
        yield
    finally:
        _core.select_target(chosen)


def bits(array):
    """The raw bits of a float array: NaNs, signed zeros and every 16-bit
    format compare exactly."""
    return array.view(f"u{array.itemsize}")


def assert_same_bits(got, want, where):
    """Params, every state array and every step count of two optimizers, bit for bit."""
    got, want = all_arrays(got), all_arrays(want)
    assert got.keys() == want.keys(), f"{where}: state keys differ"
    for label, value in want.items():
        if not isinstance(value, np.ndarray):
            assert got[label] == value, f"{label}, {where}"
            continue
        assert got[label].dtype == value.dtype, f"{label}, {where}: dtype {got[label].dtype}, want {value.dtype}"
        differ = np.flatnonzero(bits(got[label]) != bits(value))
        assert differ.size == 0, (
            f"{label}, {where}: {differ.size} of {value.size} elements differ, the first at {differ[0]}: "
            f"{got[label].reshape(-1)[differ[0]]!r}, want {value.reshape(-1)[differ[0]]!r}")


def random_arrays(rng, sizes, dtype, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]


def all_arrays(opt):
    """Every array an optimizer updates, labelled: params then each state array."""
    out = {}
    index = 0
    for group in opt.param_groups:
        for p in group["params"]:
            out[f"params[{index}]"] = p
            index += 1
    for i, entry in enumerate(opt.state):
        for key, value in entry.items():
            out[f"state[{i}][{key!r}]"] = value
    return out


def assert_same_state(fused, ref, dtype, step):
    """Params, every state array and every step count, element by element."""
    got, want = all_arrays(fused), all_arrays(ref)
    assert got.keys() == want.keys(), f"after step {step}: state keys differ"
    for label, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[label].dtype == value.dtype, label
            if np.array_equal(got[label], value):  # the usual case, and fast
                continue
            np.testing.assert_allclose(got[label], value, rtol=RTOL[dtype], atol=0,
                                       err_msg=f"{label} after step {step}")
        else:
            assert got[label] == value, f"{label} after step {step}"


def two_groups(params):
    """The first param alone with the defaults, the rest with lr 0.05."""
    return [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}]


def resume_and_uninterrupted(name, kwargs, start, grads, stop, carry_over, grad_scale=None):
    """Runs ``name`` over copies of ``start`` in two_groups twice: once through
    every grad list, once stopped after ``stop`` of them, carried over by
    ``carry_over(stopped, fresh)`` into a fresh optimizer over copies of the
    stopped params, then continued. Every step gets ``grad_scale``. Returns
    (resumed, uninterrupted)."""
    cls = getattr(fusedopt, name)
    uninterrupted = cls(two_groups([p.copy() for p in start]), **kwargs)
    for g in grads:
        uninterrupted.step(g, grad_scale=grad_scale)

    first_params = [p.copy() for p in start]
    first = cls(two_groups(first_params), **kwargs)
    for g in grads[:stop]:
        first.step(g, grad_scale=grad_scale)
    resumed = cls(two_groups([p.copy() for p in first_params]), **kwargs)
    carry_over(first, resumed)
    for g in grads[stop:]:
        resumed.step(g, grad_scale=grad_scale)
    return resumed, uninterrupted


def core_bytes_per_element(name, kwargs, dtype, options):
    """The core's count of the bytes a step moves per element, read back
    through the serial cutoff: a step of n elements runs on one thread
    exactly when the cutoff exceeds n * bytes."""
    n = 4096

    def serial(count):
        opt = getattr(fusedopt, name)([np.ones(n, dtype)], **kwargs, **options)
        previous = _core.set_serial_cutoff_bytes(n * count + 1)
        try:
            with fusedopt.threads(2):
                opt.step([np.ones(n, dtype)])
        finally:
            _core.set_serial_cutoff_bytes(previous)
        return _core.last_team_size() == 1

    low, high = 0, 128  # serial(high), not serial(low): bisect to the first serial count
    assert serial(high) and not serial(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if serial(middle) else (middle, high)
    return high
