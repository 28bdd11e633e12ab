"""Every rule and option against the NumPy reference, on every SIMD target:
params and every state array after each step."""

import numpy as np
import pytest

import fusedopt
from cases import CASE_IDS, CASES, SIZES, assert_same_state, make_pair, random_arrays

STEPS = 10


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_sizes_around_simd_widths(target, dtype, rng, name, kwargs):
    """All the sizes around the vector widths in one optimizer, two param groups."""
    params = random_arrays(rng, SIZES, dtype)
    fused, ref = make_pair(name, kwargs, params, second_group={"lr": 0.5 * fused_default_lr(name, kwargs)})
    for step in range(1, STEPS + 1):
        grads = random_arrays(rng, SIZES, dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_million_elements(target, dtype, rng, name, kwargs):
    """One large array with non-zero gradients: the multi-threaded path."""
    params = random_arrays(rng, [1_000_003], dtype)
    fused, ref = make_pair(name, kwargs, params)
    for step in range(1, STEPS + 1):
        grads = [g + np.copysign(dtype(0.1), g) for g in random_arrays(rng, [1_000_003], dtype)]
        assert np.all(grads[0] != 0)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


def fused_default_lr(name, kwargs):
    return kwargs.get("lr", getattr(fusedopt, name)([np.zeros(1)]).defaults["lr"])


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_hyperparameters_edited_between_steps(dtype, rng, name, kwargs):
    """param_groups are live: a schedule that edits lr (and more) takes effect."""
    params = random_arrays(rng, [17, 1000], dtype)
    fused, ref = make_pair(name, kwargs, params)
    for step in range(1, 6):
        for opt in (fused, ref):
            opt.param_groups[0]["lr"] = 0.1 / step
        grads = random_arrays(rng, [17, 1000], dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


def test_none_grad_leaves_param_and_state_alone(rng):
    params = random_arrays(rng, [5, 6, 7], np.float32)
    fused, ref = make_pair("Adam", {}, params)
    before = [p.copy() for p in params]
    grads = random_arrays(rng, [5, 6, 7], np.float32)
    grads[1] = None
    fused.step(grads)
    ref.step(grads)
    np.testing.assert_array_equal(params[1], before[1])
    assert fused.state[1]["step"] == 0 and fused.state[0]["step"] == 1
    assert not fused.state[1]["exp_avg"].any()
    assert_same_state(fused, ref, np.float32, 1)


@pytest.mark.parametrize(
    "name, start, change",
    [
        ("SGD", {"momentum": 0.0}, {"momentum": 0.9}),          # buffer born mid-run: copy of g
        ("SGD", {"momentum": 0.0}, {"momentum": 0.9, "dampening": 0.5}),
        ("Adam", {}, {"amsgrad": True}),                          # max_exp_avg_sq born at zero
        ("Adadelta", {}, {"scale": "weights"}),                   # square_weight_avg born at zero
    ],
)
def test_state_created_when_a_setting_turns_it_on(dtype, rng, name, start, change):
    params = random_arrays(rng, [33, 100], dtype)
    fused, ref = make_pair(name, start, params)
    for step in range(1, 7):
        if step == 3:
            for opt in (fused, ref):
                opt.param_groups[0].update(change)
        grads = random_arrays(rng, [33, 100], dtype)
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, dtype, step)


def test_momentum_is_sgd_with_scaled_buffer(rng):
    """ALGORITHMS.md: with constant lr and no dampening, heavy ball == SGD, v = -lr * b."""
    w1 = rng.standard_normal(100)
    w2 = w1.copy()
    heavy, sgd = fusedopt.Momentum([w1], lr=0.1, momentum=0.9), fusedopt.SGD([w2], lr=0.1, momentum=0.9)
    for _ in range(5):
        g = rng.standard_normal(100)
        heavy.step([g])
        sgd.step([g])
    np.testing.assert_allclose(w1, w2, rtol=1e-12)
    np.testing.assert_allclose(heavy.state[0]["velocity"], -0.1 * sgd.state[0]["momentum_buffer"], rtol=1e-12)


def test_adam_is_the_course_adam(rng):
    """The notes' Adam with beta, gamma is torch's with betas = (1 - beta, 1 - gamma)."""
    beta, gamma, lr, eps = 0.1, 0.001, 1e-2, 1e-8
    w = rng.standard_normal(50)
    mine = w.copy()
    opt = fusedopt.Adam([mine], lr=lr, betas=(1 - beta, 1 - gamma), eps=eps)
    M, S = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 8):
        g = rng.standard_normal(50)
        opt.step([g])
        M = (1 - beta) * M + beta * g
        S = (1 - gamma) * S + gamma * g**2
        M_hat, S_hat = M / (1 - (1 - beta) ** t), S / (1 - (1 - gamma) ** t)
        w = w - lr * M_hat / (np.sqrt(S_hat) + eps)
        np.testing.assert_allclose(mine, w, rtol=1e-12)


def test_course_adadelta_is_scale_invariant(rng):
    """The notes: rescaling weights and gradients together leaves the update unchanged."""
    w = rng.standard_normal(40) + 2.0
    grads = [rng.standard_normal(40) for _ in range(5)]
    scaled_w = 8.0 * w
    opt = fusedopt.Adadelta([w], lr=0.1, eps=0.0, scale="weights")
    scaled = fusedopt.Adadelta([scaled_w], lr=0.1, eps=0.0, scale="weights")
    for g in grads:
        opt.step([g])
        scaled.step([8.0 * g])
    np.testing.assert_allclose(scaled_w, 8.0 * w, rtol=1e-12)


def test_functional_matches_the_class(rng):
    params = random_arrays(rng, [31, 1000], np.float32)
    w = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    opt = fusedopt.AdamW(params, lr=1e-2, amsgrad=False)
    for t in range(1, 6):
        grads = random_arrays(rng, [31, 1000], np.float32)
        opt.step(grads)
        fusedopt.functional.adamw_(w, grads, m, v, step=t, lr=1e-2)
    for i in range(2):
        np.testing.assert_array_equal(w[i], params[i])
        np.testing.assert_array_equal(m[i], opt.state[i]["exp_avg"])
        np.testing.assert_array_equal(v[i], opt.state[i]["exp_avg_sq"])


def test_functional_single_arrays(rng):
    w, g, b = rng.standard_normal(10), rng.standard_normal(10), np.zeros(10)
    fusedopt.functional.sgd_(w.copy(), g, b, step=1, lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(b, g)  # the first step copies the gradient
    with pytest.raises(ValueError, match="momentum_buffers is required"):
        fusedopt.functional.sgd_(w, g, step=1, momentum=0.9)
    with pytest.raises(ValueError, match=r"step\[0\] must be an int >= 1"):
        fusedopt.functional.adam_(w, g, np.zeros(10), np.zeros(10), step=0)


def test_size_zero_arrays_are_fine():
    empty = np.zeros(0, np.float32)
    opt = fusedopt.Adam([empty, np.zeros((0, 3), np.float32)])
    opt.step([np.zeros(0, np.float32), np.zeros((0, 3), np.float32)])
    assert opt.state[0]["step"] == 1


def test_multidimensional_params(rng):
    params = [rng.standard_normal((3, 4, 5)).astype(np.float32)]
    fused, ref = make_pair("Adam", {"amsgrad": True}, params)
    for step in range(1, 4):
        grads = [rng.standard_normal((3, 4, 5)).astype(np.float32)]
        fused.step(grads)
        ref.step(grads)
        assert_same_state(fused, ref, np.float32, step)
