"""Every rule torch.optim has, against torch's for-loop implementation
(``foreach=False``) on CPU float64 tensors: params, every state array, every
step count and NAdam's mu_product, element by element, after each of 25 steps,
over several arrays in two param groups.

The cases are the table's (cases.py) that torch can run: Momentum (the
course's heavy ball), Adadelta's ``scale="weights"`` and Lion are not in
torch.optim; they are checked against the NumPy reference
(test_against_reference.py) and by hand (test_rules.py).
"""

import inspect

import numpy as np
import pytest
import torch

import fusedopt
from cases import RULE_INFO, RULES, TORCH_CASE_IDS, TORCH_CASES, default_lr

STEPS = 25
SHAPES = [(1,), (7,), (33,), (1000,), (5, 13)]


@pytest.fixture(autouse=True)
def torch_float64_scalars():
    """torch keeps "step" and NAdam's mu_product as tensors of the default
    dtype: float64 makes them plain doubles, as ours are (float32 would round
    mu_product every step)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_close(ours, theirs, label):
    """Our kernels evaluate ALGORITHMS.md's forms (m <- b1 m + (1 - b1) g, a
    product then a sum); torch evaluates equivalent but different arithmetic
    (lerp for exp_avg, addcmul as (value * t1) * t2, addcdiv, FMA in its
    vectorised CPU loops). Each step the two therefore differ by about one ulp
    of the *terms* combined, about 1e-16 of the array's scale. Where the terms
    cancel (an average of gradients of both signs, a param crossing zero) that
    ulp is large relative to the element itself, so the bound is relative to
    the array's scale as well as to the element: measured worst over 25 steps
    and every case is 7e-15 of max |theirs|; a wrong coefficient or a missed
    term is off by 1e-4 or more."""
    scale = float(np.max(np.abs(theirs[np.isfinite(theirs)]), initial=0.0))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-13 * scale, equal_nan=True, err_msg=label)


def assert_same_nonfinite(ours, theirs, label):
    """Non-finite in exactly the same elements, the finite ones as assert_close.

    Whether such an element is an infinity or a NaN may differ: torch's
    exp_avg.lerp_(g, 1 - beta1) computes m + w (g - m) (or g - (g - m)(1 - w)
    for w >= 0.5), which turns m = inf into inf - inf = NaN, where
    beta1 m + (1 - beta1) g keeps inf; anything computed from it follows."""
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=f"{label}: where the non-finite values are")
    assert_close(ours[finite], theirs[finite], label)


def make_both(name, kwargs, rng):
    """Our optimizer and torch's over equal float64 params, in two param groups
    (the second with half the first group's lr)."""
    ours = [rng.standard_normal(shape) for shape in SHAPES]
    theirs = [torch.tensor(p.copy()) for p in ours]
    lr = default_lr(name, kwargs)
    half = len(SHAPES) // 2

    def groups(params):
        return [{"params": params[:half]}, {"params": params[half:], "lr": 0.5 * lr}]

    fused = getattr(fusedopt, name)(groups(ours), **kwargs)
    reference = getattr(torch.optim, RULE_INFO[name].torch_name)(groups(theirs), foreach=False, **kwargs)
    return fused, ours, reference, theirs


def assert_same_as_torch(fused, ours, reference, theirs, step, compare=assert_close):
    for i, (mine, tensor) in enumerate(zip(ours, theirs)):
        compare(mine, tensor.numpy(), f"params[{i}] after step {step}")
        their_state = reference.state[tensor]
        my_state = fused.state[i]
        # torch's SGD keeps no step count; every other key must match exactly.
        assert my_state.keys() - {"step"} == their_state.keys() - {"step"}, f"state[{i}] keys"
        for key, value in their_state.items():
            label = f"state[{i}][{key!r}] after step {step}"
            if key == "step":
                assert my_state["step"] == int(value.item()) == step, label
            elif key == "mu_product":
                # Both multiply the same doubles in the same order: exactly equal.
                assert my_state[key] == value.item(), label
            else:
                compare(my_state[key], value.numpy(), label)


@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=TORCH_CASE_IDS)
def test_matches_torch_for_loop(name, kwargs):
    rng = np.random.default_rng(20261125)
    fused, ours, reference, theirs = make_both(name, kwargs, rng)
    for step in range(1, STEPS + 1):
        grads = [rng.standard_normal(shape) for shape in SHAPES]
        for tensor, grad in zip(theirs, grads):
            tensor.grad = torch.tensor(grad.copy())
        assert fused.step(grads) is True
        reference.step()
        assert_same_as_torch(fused, ours, reference, theirs, step)


@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=TORCH_CASE_IDS)
def test_nonfinite_grads_propagate_as_in_torch(name, kwargs):
    """The default, nonfinite="apply", checks nothing: a NaN or an infinity
    in a gradient reaches exactly the elements of the params and state that
    it reaches in torch, step after step."""
    rng = np.random.default_rng(7)
    fused, ours, reference, theirs = make_both(name, kwargs, rng)
    for step in range(1, 4):
        grads = [rng.standard_normal(shape) for shape in SHAPES]
        if step == 2:
            grads[0][0] = np.nan
            grads[3][17] = np.inf
            grads[3][-1] = -np.inf
            grads[4][2, 3] = np.nan
        for tensor, grad in zip(theirs, grads):
            tensor.grad = torch.tensor(grad.copy())
        assert fused.step(grads) is True
        reference.step()
        assert_same_as_torch(fused, ours, reference, theirs, step, compare=assert_same_nonfinite)
    assert np.isnan(ours[0][0]) and not np.isfinite(ours[3][17]) and np.isfinite(ours[3][16])


@pytest.mark.parametrize("info", RULES, ids=[info.name for info in RULES])
def test_torch_defaults(info):
    """The defaults torch.optim users expect (where torch has no class: the
    ones the table promises, Lion's from the paper)."""
    ours = inspect.signature(getattr(fusedopt, info.name)).parameters
    if info.torch_name is None:
        assert {key: ours[key].default for key in info.defaults} == info.defaults
        return
    theirs = inspect.signature(getattr(torch.optim, info.torch_name)).parameters
    for key, parameter in ours.items():
        # **options: fusedopt's keyword options (nonfinite, storage), shared by every class
        if key == "params" or parameter.kind is inspect.Parameter.VAR_KEYWORD or key in info.fused_only_options:
            continue
        assert key in theirs, key
        assert parameter.default == theirs[key].default, key
        assert parameter.kind == theirs[key].kind or key == "maximize", key
