"""A NumPy multilayer perceptron on scikit-learn's digits, trained with each rule.

The digits data set (8x8 images of handwritten digits, 1797 of them) ships
with scikit-learn, so nothing is downloaded. The network is 64 -> 128 (tanh)
-> 10 (softmax), written in plain NumPy; fusedopt updates its four arrays in
place, one call per mini-batch. Each rule trains three times from the same
start: with a constant step size lr, with step decay (3 lr, cut to 0.3 lr
halfway: start high, then the notes' "cut it by 10 when progress slows") and
with a cyclic step size (from lr/4 up to 2 lr and back every 4 epochs). Written into ``--out``:

    digits_loss_curves.png   training (solid) and test (dashed) loss per epoch
    digits_step_time.png     time per optimizer step: fused vs the NumPy reference
    digits_summary.json      the curves and times as numbers

    python examples/digits_mlp.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402  (scikit-learn depends on it)

import fusedopt  # noqa: E402
from fusedopt import reference  # noqa: E402
from fusedopt.lr_scheduler import CyclicLR, StepLR  # noqa: E402

HIDDEN = 128
BATCH = 64
# The matrix products here are at most 64 x 128 x 1347: a second BLAS thread
# gains nothing, and on a busy machine BLAS threads that spin waiting for a
# core made the run take 600 s instead of 7 (NumPy's BLAS, not fusedopt).
BLAS_THREADS = 1

# Each rule (a class of fusedopt, and of fusedopt.reference) with its
# arguments; lr is the constant step size that suits it on this problem.
RULES = {
    "SGD": ("SGD", {"lr": 0.1}),
    "SGD, momentum 0.9": ("SGD", {"lr": 0.05, "momentum": 0.9}),
    "heavy ball (course)": ("Momentum", {"lr": 0.05, "momentum": 0.9}),
    "AdaDelta (updates)": ("Adadelta", {"lr": 1.0}),
    "AdaDelta (weights)": ("Adadelta", {"lr": 0.01, "scale": "weights"}),
    "Adam": ("Adam", {"lr": 2e-3}),
    "AdamW": ("AdamW", {"lr": 2e-3, "weight_decay": 1e-2}),
    "RMSprop": ("RMSprop", {"lr": 1e-3}),
    "Adagrad": ("Adagrad", {"lr": 0.05}),
    "NAdam": ("NAdam", {"lr": 2e-3}),
    "RAdam": ("RAdam", {"lr": 1e-2}),  # its rectification damps the first few hundred steps
    "Adamax": ("Adamax", {"lr": 4e-3}),
    "Lion": ("Lion", {"lr": 6e-4, "weight_decay": 0.1}),  # every move is +-lr: a smaller lr, more decay
}
SCHEDULE_COLORS = {"constant": "0.45", "step decay": "tab:blue", "cyclic": "tab:orange"}


# --------------------------------------------------------------------------- data and network


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.25, stratify=digits.target, random_state=0)


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((64, HIDDEN)) / np.sqrt(64)).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        (rng.standard_normal((HIDDEN, 10)) / np.sqrt(HIDDEN)).astype(np.float32),
        np.zeros(10, np.float32),
    ]


def loss_and_grads(params, x, labels, want_grads=True):
    """Mean cross-entropy of the softmax outputs, and its gradients."""
    w1, b1, w2, b2 = params
    hidden = np.tanh(x @ w1 + b1)
    logits = hidden @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -float(log_probs[np.arange(len(labels)), labels].mean())
    if not want_grads:
        return loss, None
    d_logits = np.exp(log_probs)
    d_logits[np.arange(len(labels)), labels] -= 1
    d_logits /= np.float32(len(labels))
    d_hidden = (d_logits @ w2.T) * (1 - hidden * hidden)
    return loss, [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]


# --------------------------------------------------------------------------- training


def make_optimizer(module, rule, params, lr_factor=1.0):
    name, kwargs = RULES[rule]
    return getattr(module, name)(params, **{**kwargs, "lr": lr_factor * kwargs["lr"]})


def train(rule, schedule, data, epochs):
    """Loss curves, one point per epoch (the first before training)."""
    x_train, x_test, y_train, y_test = data
    params = init_params()
    steps_per_epoch = -(-len(x_train) // BATCH)
    if schedule == "step decay":  # stepped once per epoch
        opt = make_optimizer(fusedopt, rule, params, lr_factor=3.0)
        scheduler = StepLR(opt, step_size=max(1, epochs // 2), gamma=0.1)
    elif schedule == "cyclic":  # stepped once per mini-batch, a cycle every 4 epochs
        opt = make_optimizer(fusedopt, rule, params)
        lr = opt.param_groups[0]["lr"]
        scheduler = CyclicLR(opt, base_lr=lr / 4, max_lr=2 * lr, step_size_up=2 * steps_per_epoch,
                             cycle_momentum=False)
    else:
        opt = make_optimizer(fusedopt, rule, params)
        scheduler = None

    rng = np.random.default_rng(1)  # the same batches for every run
    curves = {"train": [loss_and_grads(params, x_train, y_train, False)[0]],
              "test": [loss_and_grads(params, x_test, y_test, False)[0]]}
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            _, grads = loss_and_grads(params, x_train[batch], y_train[batch])
            opt.step(grads)
            if schedule == "cyclic":
                scheduler.step()
        if schedule == "step decay":
            scheduler.step()
        curves["train"].append(loss_and_grads(params, x_train, y_train, False)[0])
        curves["test"].append(loss_and_grads(params, x_test, y_test, False)[0])
    return curves


def time_per_step(rule, module, repeats):
    """Seconds per step of ``module``'s optimizer (fusedopt or its NumPy
    reference) on this network's arrays: the median over 20 batches of steps,
    which a busy machine disturbs less than a mean."""
    params = init_params()
    rng = np.random.default_rng(2)
    grads = [(1e-3 * rng.standard_normal(p.shape)).astype(np.float32) for p in params]
    flipped = [-g for g in grads]  # alternating signs keep the weights bounded
    opt = make_optimizer(module, rule, params)
    for _ in range(10):
        opt.step(grads)
    per_batch = max(1, repeats // 20)
    batch_means = []
    for _ in range(20):
        began = time.perf_counter()
        for k in range(per_batch):
            opt.step(flipped if k % 2 else grads)
        batch_means.append((time.perf_counter() - began) / per_batch)
    return float(np.median(batch_means))


# --------------------------------------------------------------------------- pictures


def plot_curves(results, epochs, path):
    columns = 4
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.3 * rows), sharey=True)
    axes = axes.ravel()
    for ax, (rule, runs) in zip(axes, results.items()):
        for schedule, curves in runs.items():
            color = SCHEDULE_COLORS[schedule]
            ax.semilogy(curves["train"], color=color, label=f"{schedule}, train")
            ax.semilogy(curves["test"], "--", color=color, label=f"{schedule}, test")
        ax.set_title(rule)
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[::columns]:
        ax.set_ylabel("cross-entropy")
    for ax in axes[len(results):]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="center", title="solid: train, dashed: test")
    fig.suptitle(f"MLP 64-{HIDDEN}-10 on scikit-learn's digits, {epochs} epochs, batches of {BATCH}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_times(times, path):
    rules = list(times)
    fused = np.array([times[r]["fused"] for r in rules]) * 1e6
    numpy = np.array([times[r]["numpy"] for r in rules]) * 1e6
    y = np.arange(len(rules))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rules) + 1.5))
    ax.barh(y + 0.2, numpy, height=0.4, color="0.6", label="NumPy reference (fusedopt.reference)")
    ax.barh(y - 0.2, fused, height=0.4, color="tab:blue", label="fusedopt (one fused call)")
    for k in range(len(rules)):
        ax.annotate(f"{fused[k]:.0f} µs ({numpy[k] / fused[k]:.1f}x faster)", (fused[k], y[k] - 0.2),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, rules)
    ax.invert_yaxis()
    ax.set_xlabel("time per optimizer step (µs), 4 arrays, "
                  f"{sum(p.size for p in init_params()):,} float32 values")
    ax.set_xlim(0, 1.3 * numpy.max())
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Optimizer step only (the forward and backward passes excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output",
                        help="directory for the PNGs (default: examples/output)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    epochs = 6 if args.quick else 30
    data = load_data()
    results, times = {}, {}
    repeats = 300 if args.quick else 2000
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        for rule in RULES:
            results[rule] = {schedule: train(rule, schedule, data, epochs) for schedule in SCHEDULE_COLORS}
            times[rule] = {"fused": time_per_step(rule, fusedopt, repeats),
                           "numpy": time_per_step(rule, reference, repeats)}
            final = {s: f"{c['train'][-1]:.3f}/{c['test'][-1]:.3f}" for s, c in results[rule].items()}
            print(f"{rule:22s} train/test loss after {epochs} epochs: {final}   "
                  f"step {times[rule]['fused'] * 1e6:.1f} µs (NumPy {times[rule]['numpy'] * 1e6:.1f} µs)")
        blas_threads = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    plot_curves(results, epochs, args.out / "digits_loss_curves.png")
    plot_times(times, args.out / "digits_step_time.png")
    summary = {"epochs": epochs, "losses": results,
               "seconds_per_step": times, "blas_threads": blas_threads}
    (args.out / "digits_summary.json").write_text(json.dumps(summary, indent=1))
    print("wrote digits_loss_curves.png, digits_step_time.png to", args.out)


if __name__ == "__main__":
    main()
