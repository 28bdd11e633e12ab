"""The digits MLP of digits_mlp.py with bfloat16 params, in each storage mode.

The same network (64 -> 128 tanh -> 10 softmax on scikit-learn's digits, in
plain NumPy) trained with Adam from the same start, its params and grads
stored as bfloat16 (ml_dtypes) and the forward and backward passes computed
in float32 from them, in five modes: round to nearest (torch's fused kernels
do this), stochastic rounding, Kahan summation, float32 master weights, and
the float32 run for reference. At a small step size most of an update is
smaller than half a bfloat16 ulp of the weight it is added to, so round to
nearest throws it away and the network stalls; the three remedies keep it
and track float32 (docs/precision.md). Two more runs keep Adam's moments in
8 bits (block-wise quantized, every tensor: min_8bit_size=0), with float32
params and with bfloat16 params rounded stochastically. Each run prints the
memory its optimizer state takes. Written into ``--out``:

    precision_loss_curves.png   loss per epoch, and the share of weights each epoch moved
    precision_summary.json      the same as numbers

    python examples/precision_digits.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt.precision import bfloat16  # noqa: E402

HIDDEN = 128
BATCH = 64
LR = 3e-4  # Adam's steps are about lr: under half an ulp (2**-10) of a bfloat16 weight above 2**-3

# Each mode: the params' dtype and the storage options (fusedopt.Adam's keywords).
MODES = {
    "float32 (reference)": (np.float32, {}),
    "bfloat16, round to nearest": (bfloat16, {}),
    "bfloat16, stochastic rounding": (bfloat16, {"rounding": "stochastic", "seed": 0}),
    "bfloat16, Kahan summation": (bfloat16, {"kahan_sum": True}),
    "bfloat16, float32 master weights": (bfloat16, {"master_weights": True}),
    "float32, 8-bit state": (np.float32, {"state_bits": 8, "min_8bit_size": 0}),
    "bfloat16, 8-bit state, stochastic": (bfloat16, {"state_bits": 8, "min_8bit_size": 0,
                                                     "rounding": "stochastic", "seed": 0}),
}
COLORS = ["black", "tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.25, stratify=digits.target, random_state=0)


def init_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((64, HIDDEN)) / np.sqrt(64)).astype(dtype),
        np.zeros(HIDDEN, dtype),
        (rng.standard_normal((HIDDEN, 10)) / np.sqrt(HIDDEN)).astype(dtype),
        np.zeros(10, dtype),
    ]


def loss_and_grads(params, x, labels, want_grads=True):
    """Mean cross-entropy and its gradients, computed in float32 from the
    stored params; the gradients come back in the params' dtype."""
    w1, b1, w2, b2 = (p.astype(np.float32) for p in params)
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
    grads = [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
    return loss, [g.astype(p.dtype) for g, p in zip(grads, params)]


def train(mode, data, epochs):
    """Loss curves (one point per epoch, the first before training) and the
    share of weight elements that changed in each epoch."""
    dtype, options = MODES[mode]
    x_train, x_test, y_train, y_test = data
    params = init_params(dtype)
    opt = fusedopt.Adam(params, lr=LR, **options)
    rng = np.random.default_rng(1)  # the same batches for every mode
    curves = {"train": [loss_and_grads(params, x_train, y_train, False)[0]],
              "test": [loss_and_grads(params, x_test, y_test, False)[0]], "moved": []}
    for _ in range(epochs):
        before = [params[0].copy(), params[2].copy()]
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            opt.step(loss_and_grads(params, x_train[batch], y_train[batch])[1])
        moved = sum(int(np.count_nonzero(b != p)) for b, p in zip(before, (params[0], params[2])))
        curves["moved"].append(moved / (params[0].size + params[2].size))
        curves["train"].append(loss_and_grads(params, x_train, y_train, False)[0])
        curves["test"].append(loss_and_grads(params, x_test, y_test, False)[0])
    curves["state_bytes"] = sum(value.nbytes for entry in opt.state for value in entry.values()
                                if isinstance(value, np.ndarray))
    return curves


def plot(results, epochs, path):
    info = fusedopt.cpu_features()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for (mode, curves), color in zip(results.items(), COLORS):
        style = {"color": color, "linewidth": 2.4 if mode.startswith("float32") else 1.5}
        left.semilogy(curves["train"], label=f"{mode}, train", **style)
        left.semilogy(curves["test"], "--", label=f"{mode}, test", **{**style, "linewidth": 1.0})
        right.plot(range(1, epochs + 1), 100 * np.array(curves["moved"]), label=mode, **style)
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy (solid: train, dashed: test)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    right.set_xlabel("epoch")
    right.set_ylabel("weights changed during the epoch (%)")
    right.set_ylim(0, 105)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(f"MLP 64-{HIDDEN}-10 on scikit-learn's digits, Adam lr {LR:g}: bfloat16 params and grads "
                 f"(float32 math) against the float32 run, {epochs} epochs of batches of {BATCH}\n"
                 f"fusedopt {info['version']}, {info['cpu']}, {info['isa']} kernels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output",
                        help="directory for the PNG (default: examples/output)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for the tests)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    epochs = 8 if args.quick else 40
    data = load_data()
    results = {}
    with threadpool_limits(1, user_api="blas"):  # small matrices: BLAS threads only contend with each other
        for mode in MODES:
            results[mode] = train(mode, data, epochs)
            curves = results[mode]
            print(f"{mode:34s} train/test loss after {epochs} epochs: {curves['train'][-1]:.4f}/"
                  f"{curves['test'][-1]:.4f}, weights moved in the last epoch: {100 * curves['moved'][-1]:.1f}%, "
                  f"optimizer state {curves['state_bytes'] / 1024:.1f} KiB")

    plot(results, epochs, args.out / "precision_loss_curves.png")
    summary = {"epochs": epochs, "lr": LR, "runs": results}
    (args.out / "precision_summary.json").write_text(json.dumps(summary, indent=1))
    print("wrote precision_loss_curves.png to", args.out)


if __name__ == "__main__":
    main()
