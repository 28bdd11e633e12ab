"""The table that drives the correctness suite (PyTorch's OptimizerInfo idea):
every rule with every option that changes its arithmetic or its streams."""

from __future__ import annotations

import numpy as np

import fusedopt
from fusedopt import reference

# (class name, constructor kwargs)
CASES = [
    ("Momentum", {}),
    ("Momentum", {"lr": 0.05, "momentum": 0.5}),
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"momentum": 0.5, "maximize": True}),
    ("SGD", {"weight_decay": 0.1, "maximize": True}),
    ("Adadelta", {}),
    ("Adadelta", {"rho": 0.5, "eps": 1e-4, "weight_decay": 0.1, "maximize": True}),
    ("Adadelta", {"scale": "weights", "lr": 0.1}),
    ("Adadelta", {"scale": "weights", "rho": 0.95, "weight_decay": 0.01, "maximize": True}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"weight_decay": 0.1}),
    ("Adam", {"betas": (0.5, 0.9), "eps": 1e-3, "maximize": True, "amsgrad": True, "weight_decay": 0.05}),
    ("Adam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("AdamW", {"amsgrad": True, "weight_decay": 0.5, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.9}),
    ("RMSprop", {"centered": True}),
    ("RMSprop", {"momentum": 0.5, "centered": True, "alpha": 0.9, "weight_decay": 0.01, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr_decay": 0.1, "initial_accumulator_value": 0.3, "weight_decay": 0.01}),
    ("Adagrad", {"eps": 1e-3, "maximize": True}),
    ("NAdam", {}),
    ("NAdam", {"weight_decay": 0.1, "momentum_decay": 0.1}),
    ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True, "betas": (0.5, 0.9)}),
    ("RAdam", {}),  # beta2 = 0.999: unrectified for t <= 5, rectified after
    ("RAdam", {"betas": (0.5, 0.9), "weight_decay": 0.1, "maximize": True}),
    ("RAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1, "eps": 1e-3}),
    ("Adamax", {}),
    ("Adamax", {"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.1, "maximize": True}),
    ("Lion", {}),
    ("Lion", {"betas": (0.5, 0.9), "weight_decay": 0.1, "maximize": True}),
]

CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]

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
