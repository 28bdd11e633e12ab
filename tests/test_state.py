"""Per-param state: every array the rule keeps is created at construction,
from the rule's initial value; an array that a setting turns on later is born
in the step that first uses it, as the reference's; scalar state (NAdam's
mu_product) is a float advanced once per step."""

import math

import numpy as np
import pytest

import fusedopt
from cases import RULES, assert_same_state, case_id, make_pair, random_arrays


@pytest.mark.parametrize("info", RULES, ids=[info.name for info in RULES])
def test_the_full_state_cases_create_every_state_array_at_construction(info):
    """Between them, the table's full-state cases keep every state key of the
    rule, before any step, in the fused class and in the reference alike."""
    for module in (fusedopt, fusedopt.reference):
        keys = set()
        for kwargs in info.full_state:
            opt = getattr(module, info.name)([np.zeros(3)], **kwargs)
            assert opt.state[0]["step"] == 0
            keys |= opt.state[0].keys() - {"step"}
        assert keys == set(info.state_keys), module.__name__


# (class name, options at the start, options turned on before step 3)
SETTINGS_TURNED_ON = [
    ("SGD", {"momentum": 0.0}, {"momentum": 0.9}),          # buffer born mid-run: copy of g
    ("SGD", {"momentum": 0.0}, {"momentum": 0.9, "dampening": 0.5}),
    ("Adam", {}, {"amsgrad": True}),                          # max_exp_avg_sq born at zero
    ("Adadelta", {}, {"scale": "weights"}),                   # square_weight_avg born at zero
    ("RMSprop", {}, {"momentum": 0.9}),
    ("RMSprop", {}, {"centered": True}),
    ("RMSprop", {"momentum": 0.5}, {"centered": True, "momentum": 0.8}),
]


@pytest.mark.parametrize("name, start, change", SETTINGS_TURNED_ON,
                         ids=[case_id(name, start) + case_id("-then", change) for name, start, change in
                              SETTINGS_TURNED_ON])
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


def test_adagrad_sum_starts_at_the_initial_value_per_group():
    a, b = np.zeros(3, np.float32), np.zeros(4, np.float32)
    opt = fusedopt.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 2.5}],
                           initial_accumulator_value=0.5)
    np.testing.assert_array_equal(opt.state[0]["sum"], np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(opt.state[1]["sum"], np.full(4, 2.5, np.float32))
    assert opt.state[0]["sum"].dtype == np.float32


def test_state_array_born_mid_run_starts_at_its_initial_value():
    """A missing state array is created by the step (the generic path that a
    setting turned on later takes) from the rule's initial value, not 0."""
    w = np.zeros(3)
    opt = fusedopt.Adagrad([w], lr=1.0, initial_accumulator_value=3.0)
    opt.state[0]["sum"] = None
    g = np.array([1.0, 2.0, -1.0])
    opt.step([g])
    np.testing.assert_array_equal(opt.state[0]["sum"], 3.0 + g * g)
    np.testing.assert_array_equal(w, -(g / (np.sqrt(3.0 + g * g) + 1e-10)))


def nadam_mu(t, beta1=0.9, momentum_decay=4e-3):
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def test_nadam_mu_product_is_a_float_advanced_once_per_step(rng):
    params = random_arrays(rng, [5, 6], np.float32)
    opt = fusedopt.NAdam(params)
    assert opt.state[0]["mu_product"] == 1.0 and opt.state[1]["mu_product"] == 1.0
    product = 1.0
    for t in range(1, 6):
        grads = random_arrays(rng, [5, 6], np.float32)
        grads[1] = None if t == 3 else grads[1]  # a param without a gradient is not advanced
        opt.step(grads)
        product *= nadam_mu(t)
        assert type(opt.state[0]["mu_product"]) is float
        assert opt.state[0]["mu_product"] == product
    assert opt.state[1]["step"] == 4
    assert opt.state[1]["mu_product"] == math.prod(nadam_mu(t) for t in range(1, 5))


def test_missing_scalar_state_starts_at_its_initial_value(rng):
    params = random_arrays(rng, [4], np.float32)
    opt = fusedopt.NAdam(params)
    del opt.state[0]["mu_product"]
    opt.step(random_arrays(rng, [4], np.float32))
    assert opt.state[0]["mu_product"] == nadam_mu(1)


def test_state_spec_lists_initial_values():
    group = {"params": [], **fusedopt.NAdam([np.zeros(1)]).defaults}
    assert fusedopt.NAdam.rule.state_spec(group) == ({"exp_avg": 0.0, "exp_avg_sq": 0.0}, {"mu_product": 1.0})
    group = {"params": [], **fusedopt.Adagrad([np.zeros(1)], initial_accumulator_value=0.25).defaults}
    assert fusedopt.Adagrad.rule.state_spec(group) == ({"sum": 0.25}, {})


