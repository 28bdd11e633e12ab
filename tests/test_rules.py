"""Rule-specific math that the table-driven suites cannot see: results worked
out by hand or from the course's notes, and identities between rules (Lion's
sign(0) = 0, heavy ball == SGD, the course's Adam and AdaDelta)."""

import numpy as np

import fusedopt


# -------------------------------------------------------------------- Lion

def test_lion_sign_of_zero_is_zero(target, dtype):
    """c = beta1 m + (1 - beta1) g == 0 leaves w alone (only weight decay acts)
    but still updates m. beta1 = 0.5 and m = -g make c exactly 0."""
    lr, beta2, wd = 0.25, 0.75, 0.5
    g = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.0, 4.0, 1.0, 2.0], dtype)  # 9: a vector tail too
    w = np.linspace(-1, 1, 9).astype(dtype)
    w0 = w.copy()
    m = -g.copy()
    opt = fusedopt.Lion([w], lr=lr, betas=(0.5, beta2))
    opt.state[0]["exp_avg"][...] = m
    opt.step([g])
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], dtype(beta2) * m + dtype(1 - beta2) * g)

    decayed = w0.copy()
    opt = fusedopt.Lion([decayed], lr=lr, betas=(0.5, beta2), weight_decay=wd)
    opt.state[0]["exp_avg"][...] = m
    opt.step([g])
    np.testing.assert_array_equal(decayed, w0 * dtype(1 - lr * wd))


def test_lion_by_hand(dtype):
    """Each coordinate moves by exactly lr (times the sign), none by a fraction."""
    w = np.zeros(5, dtype)
    opt = fusedopt.Lion([w], lr=0.125, betas=(0.9, 0.99))
    opt.step([np.array([3.0, -1e-30, 0.0, -7.0, 1e-30], dtype)])
    np.testing.assert_array_equal(w, np.array([-0.125, 0.125, 0.0, 0.125, -0.125], dtype))
    np.testing.assert_array_equal(opt.state[0]["exp_avg"],
                                  dtype(1 - 0.99) * np.array([3.0, -1e-30, 0.0, -7.0, 1e-30], dtype))


def test_lion_maximize_is_lion_on_minus_g(rng):
    w1 = rng.standard_normal(40)
    w2 = w1.copy()
    up, down = fusedopt.Lion([w1], lr=0.01, maximize=True), fusedopt.Lion([w2], lr=0.01)
    for _ in range(5):
        g = rng.standard_normal(40)
        up.step([g])
        down.step([-g])
    np.testing.assert_array_equal(w1, w2)


# ------------------------------------------------------- the course's forms

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
