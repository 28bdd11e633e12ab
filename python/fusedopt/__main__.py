"""``python -m fusedopt``: a short demonstration on a small problem."""

from __future__ import annotations

import time

import numpy as np

import fusedopt


def demo() -> None:
    """Fit a least-squares problem with each optimizer and print the configuration."""
    fusedopt.show_config()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((512, 64)).astype(np.float32)
    true_w = rng.standard_normal(64).astype(np.float32)
    targets = features @ true_w

    def loss_and_grad(w):
        residual = features @ w - targets
        return float(residual @ residual) / len(targets), (2.0 / len(targets)) * (features.T @ residual)

    print("\nleast squares, 512 x 64, float32, 200 steps:")
    for make in (
        lambda p: fusedopt.SGD(p, lr=0.05, momentum=0.9),
        lambda p: fusedopt.Momentum(p, lr=0.05, momentum=0.9),
        lambda p: fusedopt.Adadelta(p, lr=1.0),
        lambda p: fusedopt.Adam(p, lr=0.05),
        lambda p: fusedopt.AdamW(p, lr=0.05, weight_decay=1e-4),
    ):
        w = np.zeros(64, np.float32)
        opt = make([w])
        start = time.perf_counter()
        for _ in range(200):
            loss, grad = loss_and_grad(w)
            opt.step([grad.astype(np.float32)])
        elapsed = time.perf_counter() - start
        print(f"  {type(opt).__name__:9s} loss {loss_and_grad(w)[0]:.3e}   ({elapsed * 1e3:.1f} ms)")


if __name__ == "__main__":
    demo()
