"""The core's step entry point: Rule.step's own argument parsing (it skips
pybind11's dispatcher), the optimizer's StepLock that it holds for a step,
and the Collections it reuses from step to step (csrc/bindings.cpp,
csrc/step.cpp)."""

import threading
import time

import numpy as np
import pytest

import fusedopt
from fusedopt import _core


def adam_args():
    w = np.zeros(5, np.float32)
    g = np.full(5, 0.5, np.float32)
    opt = fusedopt.Adam([w], lr=0.1)
    return opt, w, g


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda o, g: _core.adam.step(o.param_groups, [g]), "step() missing required argument 'state'"),
        (lambda o, g: _core.adam.step(o.param_groups, [g], o.state, False, None, None, 1),
         "step() takes at most 6 arguments (7 given)"),
        (lambda o, g: _core.adam.step(o.param_groups, [g], o.state, learning_rate=1.0),
         "step() got an unexpected keyword argument 'learning_rate'"),
        (lambda o, g: _core.adam.step(o.param_groups, [g], o.state, grads=[g]),
         "step() got multiple values for argument 'grads'"),
        (lambda o, g: _core.adam.step(o.param_groups, [g], o.state, check_finite=1),
         "check_finite must be a bool, got int"),
        (lambda o, g: _core.adam.step(o.param_groups, [g], o.state, lock=object()),
         "lock must be a fusedopt._core.StepLock, got object"),
        (lambda o, g: _core.adam.step_cached(o.param_groups, [g], o.state, False),
         "cache must be a fusedopt._core.StepCache, got list"),
        (lambda o, g: _core.adam.step_cached(_core.StepCache(), o.param_groups, [g]),
         "step_cached() missing required argument 'state'"),
    ],
)
def test_bad_arguments_are_type_errors_and_change_nothing(call, message):
    opt, w, g = adam_args()
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(opt, g)
    np.testing.assert_array_equal(w, 0)
    assert opt.state[0] == {"step": 0, "exp_avg": opt.state[0]["exp_avg"], "exp_avg_sq": opt.state[0]["exp_avg_sq"]}
    assert not opt.state[0]["exp_avg"].any()


def test_keywords_and_positions_give_the_same_step():
    """Every argument by keyword, in any order, is the positional call."""
    by_position, w1, g = adam_args()
    by_keyword, w2, _ = adam_args()
    assert _core.adam.step(by_position.param_groups, [g], by_position.state, True, 2.0, by_position._lock) is None
    assert _core.adam.step(lock=by_keyword._lock, grad_scale=2.0, state=by_keyword.state, check_finite=True,
                           grads=[g], param_groups=by_keyword.param_groups) is None
    np.testing.assert_array_equal(w1, w2)
    assert w1.any()
    assert by_position.state[0]["step"] == by_keyword.state[0]["step"] == 1


def test_step_lock_is_reentrant_and_owned():
    lock = _core.StepLock()
    assert not lock.held_by_me()
    with lock:
        with lock:
            assert lock.held_by_me()
        assert lock.held_by_me()
    assert not lock.held_by_me()
    with pytest.raises(ValueError, match="does not hold it"):
        lock.__exit__(None, None, None)
    errors = []

    def release_from_another_thread():
        try:
            lock.__exit__(None, None, None)
        except ValueError as error:
            errors.append(error)

    with lock:
        thread = threading.Thread(target=release_from_another_thread)
        thread.start()
        thread.join(timeout=60)
        assert lock.held_by_me()
    assert len(errors) == 1


def test_a_hyperparameter_that_releases_the_lock_inside_a_step_is_harmless():
    """Hostile code run inside a step (an lr's __float__) that releases the
    optimizer's lock by hand: the step ends normally, the lock is free."""
    opt, w, g = adam_args()

    calls = []

    class Releasing:
        def __float__(self):
            calls.append(opt._lock.held_by_me())
            opt._lock.__exit__(None, None, None)
            return 0.1

    opt.param_groups[0]["lr"] = Releasing()
    opt.step([g])
    assert calls == [True]
    assert w.any() and not opt._lock.held_by_me()
    with opt._lock:
        assert opt._lock.held_by_me()


def test_a_step_waits_for_the_lock_without_holding_the_gil():
    """While another thread holds opt._lock, step() waits for it; the waiting
    thread releases the GIL, so the holder runs Python code meanwhile (with
    the GIL kept, this test would hang)."""
    opt, w, g = adam_args()
    order = []
    holding = threading.Event()
    stepper_started = threading.Event()

    def holder():
        with opt._lock:
            holding.set()
            stepper_started.wait(timeout=60)
            deadline = time.monotonic() + 0.3
            spins = 0
            while time.monotonic() < deadline:  # Python work while the stepper waits
                spins += 1
            order.append(("released", bool(w.any()), spins > 0))

    def stepper():
        holding.wait(timeout=60)
        stepper_started.set()
        opt.step([g])
        order.append(("stepped", bool(w.any()), True))

    threads = [threading.Thread(target=holder), threading.Thread(target=stepper)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a thread hung"
    assert order == [("released", False, True), ("stepped", True, True)]


def test_reused_collections_start_empty():
    """A step after a large step, and after a refused one, is bitwise the step
    of a fresh optimizer: nothing of the reused Collection carries over."""
    rng = np.random.default_rng(0)
    big = [rng.standard_normal(n).astype(np.float32) for n in (3, 100, 17, 64)]
    opt_big = fusedopt.Adam(big, lr=0.01)
    opt_big.step([np.ones_like(p) for p in big])

    w = rng.standard_normal(9).astype(np.float32)
    w_fresh = w.copy()
    g = rng.standard_normal(9).astype(np.float32)
    opt = fusedopt.Adam([w], lr=0.01, weight_decay=0.1)
    with pytest.raises(ValueError, match="grads has 2 entries"):
        opt.step([g, g])
    with pytest.raises(TypeError):
        opt.step([g.astype(np.float64)])
    opt.step([g])

    reference = fusedopt.reference.Adam([w_fresh], lr=0.01, weight_decay=0.1)
    reference.step([g])
    np.testing.assert_array_equal(w, w_fresh)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(opt.state[0][key], reference.state[0][key])
