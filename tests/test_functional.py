"""fusedopt.functional, the kernel layer: each in-place function against its
class over copies of the same params (params and every state array, bit for
bit), single arrays in place of lists, and errors that name the argument."""

import numpy as np
import pytest

import fusedopt
from fusedopt import functional
from cases import random_arrays


def run_class_and_functional(rng, name, kwargs, functional_step, steps=5):
    """Runs the class and the functional form on copies; asserts the same bits."""
    sizes = [31, 1000]
    params = random_arrays(rng, sizes, np.float32)
    copies = [p.copy() for p in params]
    opt = getattr(fusedopt, name)(params, **kwargs)
    state = [opt.rule.initial_state(opt.param_groups[0], p) for p in copies]
    for t in range(1, steps + 1):
        grads = random_arrays(rng, sizes, np.float32)
        opt.step(grads)
        functional_step(copies, grads, state, t)
    for i in range(len(sizes)):
        np.testing.assert_array_equal(copies[i], params[i])
        for key, value in opt.state[i].items():
            if key != "step":
                np.testing.assert_array_equal(state[i][key], value, err_msg=key)


def column(state, key):
    return [entry[key] for entry in state]


def test_functional_rmsprop(rng):
    kw = dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)
    run_class_and_functional(rng, "RMSprop", kw, lambda w, g, s, t: functional.rmsprop_(
        w, g, column(s, "square_avg"), column(s, "momentum_buffer"), column(s, "grad_avg"), **kw))


def test_functional_adagrad(rng):
    kw = dict(lr=0.1, lr_decay=0.01)
    run_class_and_functional(rng, "Adagrad", {**kw, "initial_accumulator_value": 0.1},
                             lambda w, g, s, t: functional.adagrad_(w, g, column(s, "sum"), step=t, **kw))


def test_functional_nadam_returns_the_new_mu_products(rng):
    kw = dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1)

    def nadam(w, g, s, t):
        products = functional.nadam_(w, g, column(s, "exp_avg"), column(s, "exp_avg_sq"), column(s, "mu_product"),
                                     step=t, **kw)
        for entry, product in zip(s, products):
            entry["mu_product"] = product

    run_class_and_functional(rng, "NAdam", kw, nadam)


def test_functional_radam(rng):
    kw = dict(lr=1e-2, betas=(0.5, 0.9))
    run_class_and_functional(rng, "RAdam", kw, lambda w, g, s, t: functional.radam_(
        w, g, column(s, "exp_avg"), column(s, "exp_avg_sq"), step=t, **kw), steps=8)


def test_functional_adamax(rng):
    kw = dict(lr=1e-2, weight_decay=0.1)
    run_class_and_functional(rng, "Adamax", kw, lambda w, g, s, t: functional.adamax_(
        w, g, column(s, "exp_avg"), column(s, "exp_inf"), step=t, **kw))


def test_functional_lion(rng):
    kw = dict(lr=1e-3, weight_decay=0.1)
    run_class_and_functional(rng, "Lion", kw, lambda w, g, s, t: functional.lion_(w, g, column(s, "exp_avg"), **kw))


def test_functional_adamw(rng):
    kw = dict(lr=1e-2)
    run_class_and_functional(rng, "AdamW", {**kw, "amsgrad": False}, lambda w, g, s, t: functional.adamw_(
        w, g, column(s, "exp_avg"), column(s, "exp_avg_sq"), step=t, **kw))


def test_functional_single_arrays(rng):
    w, g, b = rng.standard_normal(10), rng.standard_normal(10), np.zeros(10)
    functional.sgd_(w.copy(), g, b, step=1, lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(b, g)  # the first step copies the gradient
    with pytest.raises(ValueError, match="momentum_buffers is required"):
        functional.sgd_(w, g, step=1, momentum=0.9)
    with pytest.raises(ValueError, match=r"step\[0\] must be an int >= 1"):
        functional.adam_(w, g, np.zeros(10), np.zeros(10), step=0)


def test_functional_errors_name_the_argument():
    w, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="grad_avgs is required"):
        functional.rmsprop_(w, g, np.zeros(3), centered=True)
    with pytest.raises(ValueError, match="mu_products has 0 values, params has 1"):
        functional.nadam_(w, g, np.zeros(3), np.zeros(3), [], step=1)

