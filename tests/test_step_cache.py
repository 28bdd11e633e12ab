"""Rule.step_cached (csrc/step.hpp), the step fusedopt.torch gives its own
views at every step: bit for bit the plain step whatever is edited between
steps, with the checks of the first step reused only while the step is
given the same objects, the same state keys and storage options."""

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from fusedopt.precision import bfloat16
from cases import CASE_IDS, CASES, assert_same_bits, default_lr, on_target
from conftest import SUPPORTED_TARGETS


def twins(name, kwargs, dtype=np.float32, size=77, count=3):
    """Two optimizers of the same params, and one list of grads for both."""
    rng = np.random.default_rng(7)
    values = [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    make = getattr(fusedopt, name)
    kwargs = {"lr": default_lr(name, kwargs), **kwargs}
    plain = make([v.copy() for v in values], **kwargs)
    cached = make([v.copy() for v in values], **kwargs)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    return plain, cached, grads


class Stepper:
    """Steps one optimizer through step_cached, as fusedopt.torch does."""

    def __init__(self, opt):
        self.opt, self.cache = opt, _core.StepCache()

    def __call__(self, grads, check_finite=False, grad_scale=None):
        opt = self.opt
        return opt.rule.step_cached(self.cache, opt.param_groups, grads, opt.state, check_finite, grad_scale)


def new_values(grads, seed):
    """New gradient values in the same arrays, as a training loop's backward writes them."""
    rng = np.random.default_rng(seed)
    for g in grads:
        g[...] = rng.standard_normal(g.shape).astype(g.dtype)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_cached_steps_are_the_plain_steps_bitwise(name, kwargs):
    plain, cached, grads = twins(name, kwargs)
    step = Stepper(cached)
    for k in range(5):
        if k == 3:  # a scheduler's new lr: read again at the next step
            for opt in (plain, cached):
                opt.param_groups[0]["lr"] *= 0.5
        new_values(grads, k)
        plain.step(grads)
        assert step(grads) is None
        assert_same_bits(cached, plain, f"step {k + 1}")
    assert step.cache.hits == 4  # every step after the first used the cache


def edit_state_array(opt, grads):
    opt.state[1]["exp_avg"] = opt.state[1]["exp_avg"] * 0.5  # a new array, not the cached one


def edit_grads(opt, grads):
    grads[2] = grads[2] * 2.0  # a new array: checked alone


def lose_a_grad(opt, grads):
    grads[1] = None  # a param without a gradient: other steps


def edit_params_list(opt, grads):
    opt.param_groups[0]["params"] = list(opt.param_groups[0]["params"])  # the same arrays in a new list


def turn_on_amsgrad(opt, grads):
    opt.param_groups[0]["amsgrad"] = True  # a new state array: made by the next step, which is a full one


def edit_step_count(opt, grads):
    opt.state[0]["step"] = 100  # a value, read again at every step


EDITS = [(edit_state_array, False), (edit_grads, True), (edit_params_list, True), (turn_on_amsgrad, False),
         (edit_step_count, True),
         (lose_a_grad, False)]


@pytest.mark.parametrize("edit, still_cached", EDITS, ids=[e.__name__ for e, _ in EDITS])
def test_an_edit_between_steps_is_seen(edit, still_cached):
    plain, cached, grads = twins("Adam", {})
    cached_grads = [g.copy() for g in grads]
    step = Stepper(cached)
    for k in range(2):
        plain.step(grads)
        step(cached_grads)
    edit(plain, grads)
    edit(cached, cached_grads)
    hits = step.cache.hits
    plain.step(grads)
    step(cached_grads)
    assert_same_bits(cached, plain, "after the edit")
    assert step.cache.hits == hits + still_cached
    plain.step(grads)
    step(cached_grads)
    assert_same_bits(cached, plain, "a step later")


NEW_BAD_GRADS = [
    (lambda opt: opt.param_groups[0]["params"][0], ValueError, r"grads\[1\] shares memory with params\[0\]"),
    (lambda opt: np.zeros(77, np.float64), TypeError, r"grads\[1\]"),
    (lambda opt: np.zeros(78, np.float32), ValueError, r"grads\[1\]"),
]


@pytest.mark.parametrize("make_grad, error, pattern", NEW_BAD_GRADS, ids=["overlaps a param", "dtype", "shape"])
def test_a_bad_new_grad_in_a_cached_step_is_refused_and_changes_nothing(make_grad, error, pattern):
    plain, cached, grads = twins("Adam", {})
    step = Stepper(cached)
    plain.step(grads)
    step(grads)
    bad = list(grads)
    bad[1] = make_grad(cached)
    with pytest.raises(error, match=pattern):
        step(bad)
    assert_same_bits(cached, plain, "after the refused step")
    plain.step(grads)
    step(grads)  # a full step: the cache held the refused grads' checks half done
    assert_same_bits(cached, plain, "a step later")
    assert step.cache.hits == 0


def test_a_storage_option_changed_between_steps_is_seen():
    plain, cached, grads = twins("Adam", {}, dtype=bfloat16)
    step = Stepper(cached)
    for k in range(4):
        if k == 2:
            for opt in (plain, cached):
                opt.param_groups[0].update(rounding="stochastic", seed=5)
        new_values(grads, k)
        plain.step(grads)
        step(grads)
        assert_same_bits(cached, plain, f"step {k + 1}")
    assert step.cache.hits == 2  # steps 2 and 4: step 3 read new storage options


@pytest.mark.skipif(len(SUPPORTED_TARGETS) < 2, reason="one SIMD target on this CPU: nothing to switch to")
def test_another_simd_target_takes_a_full_step():
    plain, cached, grads = twins("Adam", {})
    step = Stepper(cached)
    plain.step(grads)
    step(grads)  # cached on the chosen target
    chosen = fusedopt.cpu_features()["isa"]
    for target in [t for t in SUPPORTED_TARGETS if t != chosen] + [chosen]:  # each another than the last
        with on_target(target):
            hits = step.cache.hits
            plain.step(grads)
            step(grads)
            assert_same_bits(cached, plain, target)
            plain.step(grads)
            step(grads)
            assert step.cache.hits == hits + 1  # the second step on this target only


def test_a_nonfinite_grad_in_a_cached_step_changes_nothing():
    plain, cached, grads = twins("Adam", {})
    step = Stepper(cached)
    step(grads)
    step(grads)
    before = {key: value.copy() if isinstance(value, np.ndarray) else value
              for entry in cached.state for key, value in entry.items()}
    params = [p.copy() for p in cached.param_groups[0]["params"]]
    grads[1][3] = np.nan
    assert step(grads, check_finite=True) == 1
    assert step.cache.hits == 2
    for got, want in zip(cached.param_groups[0]["params"], params):
        np.testing.assert_array_equal(got, want)
    after = {key: value for entry in cached.state for key, value in entry.items()}
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


def test_a_bad_hyperparameter_in_a_cached_step_is_refused():
    _, cached, grads = twins("Adam", {})
    step = Stepper(cached)
    step(grads)
    cached.param_groups[0]["lr"] = -1.0
    before = [p.copy() for p in cached.param_groups[0]["params"]]
    with pytest.raises(ValueError, match=r"lr"):
        step(grads)
    for got, want in zip(cached.param_groups[0]["params"], before):
        np.testing.assert_array_equal(got, want)
    assert [entry["step"] for entry in cached.state] == [1, 1, 1]
    cached.param_groups[0]["lr"] = 1e-3
    step(grads)  # a full step: a refused step drops the cache
    step(grads)
    assert step.cache.hits == 1
