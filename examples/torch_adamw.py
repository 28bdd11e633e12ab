"""A torch model trained on the CPU with fusedopt.torch.AdamW and with torch.optim.AdamW.

The swap is one line: ``fusedopt.torch.AdamW(model.parameters(), ...)`` in
place of ``torch.optim.AdamW(...)``. The model is an MLP (64 -> 512 -> 512 ->
10, 300k float32 params) on scikit-learn's digits (bundled, no download). It
trains from the same start on the same batches with:

    fusedopt.torch.AdamW                     one fused call per step
    torch.optim.AdamW                        torch's default on the CPU (a for-loop over params)
    torch.optim.AdamW(foreach=True)          torch's multi-tensor implementation
    torch.optim.AdamW(fused=True)            torch's fused CPU kernel

and the losses agree to float rounding. Only ``optimizer.step()`` is timed
(the median over the run, which shrugs off a busy machine). Written into
``--out``:

    torch_adamw_losses.png     training loss per step, and how far apart the runs are
    torch_adamw_step_time.png  optimizer time per step of each
    torch_summary.json         the numbers

    python examples/torch_adamw.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fusedopt.torch  # noqa: E402

BATCH = 64
HYPERPARAMETERS = dict(lr=1e-3, weight_decay=1e-2)

OPTIMIZERS = {
    "fusedopt.torch.AdamW": lambda params: fusedopt.torch.AdamW(params, **HYPERPARAMETERS),
    "torch.optim.AdamW": lambda params: torch.optim.AdamW(params, **HYPERPARAMETERS),
    "torch.optim.AdamW(foreach=True)":
        lambda params: torch.optim.AdamW(params, foreach=True, **HYPERPARAMETERS),
    "torch.optim.AdamW(fused=True)":
        lambda params: torch.optim.AdamW(params, fused=True, **HYPERPARAMETERS),
}
COLORS = dict(zip(OPTIMIZERS, ["tab:blue", "tab:red", "tab:orange", "tab:purple"]))


def load_data():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    return train_test_split(x, y, test_size=0.25, stratify=digits.target, random_state=0)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )


def train(model, opt, data, epochs):
    """Training loss per step, test loss per epoch, and seconds per optimizer step."""
    x_train, x_test, y_train, y_test = data
    generator = torch.Generator().manual_seed(1)  # the same batches for every run
    losses, test_losses, step_seconds = [], [], []
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            began = time.perf_counter()
            opt.step()
            step_seconds.append(time.perf_counter() - began)
            losses.append(loss.item())
        with torch.no_grad():
            test_losses.append(torch.nn.functional.cross_entropy(model(x_test), y_test).item())
    return losses, test_losses, step_seconds


def plot_losses(runs, path):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    reference = np.array(runs["torch.optim.AdamW"]["losses"])
    for name, run in runs.items():
        losses = np.array(run["losses"])
        style = dict(linewidth=3, alpha=0.5) if name == "torch.optim.AdamW" else dict(linewidth=1)
        left.semilogy(losses, color=COLORS[name], label=name, **style)
        if name != "torch.optim.AdamW":
            gap = np.abs(losses - reference) / reference
            steps = np.nonzero(gap)[0]  # a log scale cannot show the steps with no gap
            same = len(gap) - len(steps)
            right.semilogy(steps, gap[steps], ".", color=COLORS[name],
                           label=f"{name} (equal at {same} of {len(gap)} steps)")
    left.set_xlabel("step")
    left.set_ylabel("training loss (mini-batch)")
    left.set_title("the same losses")
    left.legend(fontsize=8)
    right.set_xlabel("step")
    right.set_ylabel("|loss - loss of torch.optim.AdamW| / loss")
    right.set_title("relative gap to torch.optim.AdamW (float32 rounding)")
    right.set_ylim(1e-9, 1)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_times(runs, params, path):
    names = list(runs)
    median = np.array([runs[n]["median_step_seconds"] for n in names]) * 1e6
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(y, median, color=[COLORS[n] for n in names])
    for k in range(len(names)):
        ax.annotate(f"{median[k]:.0f} µs", (median[k], y[k]), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2 * median.max())
    ax.set_xlabel(f"optimizer.step(), median µs ({params:,} float32 params, {torch.get_num_threads()} threads)")
    ax.set_title("AdamW step on the CPU")
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

    epochs = 1 if args.quick else 10
    data = load_data()
    start = make_model()
    params = sum(p.numel() for p in start.parameters())
    if not args.quick:  # a warm-up run, untimed: torch's first steps pay one-time setup costs
        warm = copy.deepcopy(start)
        train(warm, torch.optim.AdamW(warm.parameters()), data, 1)
    runs = {}
    for name, make in OPTIMIZERS.items():
        model = copy.deepcopy(start)
        losses, test_losses, seconds = train(model, make(model.parameters()), data, epochs)
        runs[name] = {"losses": losses, "test_losses": test_losses,
                      "median_step_seconds": float(np.median(seconds))}
        print(f"{name:34s} loss {losses[0]:.4f} -> {losses[-1]:.4f}, test {test_losses[-1]:.4f}, "
              f"step {np.median(seconds) * 1e6:.0f} µs (median of {len(seconds)})")
    gap = max(abs(a - b) / b for a, b in zip(runs["fusedopt.torch.AdamW"]["losses"],
                                             runs["torch.optim.AdamW"]["losses"]))
    print(f"largest relative loss gap, fusedopt.torch vs torch.optim: {gap:.2e}")

    plot_losses(runs, args.out / "torch_adamw_losses.png")
    plot_times(runs, params, args.out / "torch_adamw_step_time.png")
    summary = {"epochs": epochs, "params": params, "threads": torch.get_num_threads(),
               "largest_relative_loss_gap": gap, "runs": runs}
    (args.out / "torch_summary.json").write_text(json.dumps(summary, indent=1))
    print("wrote torch_adamw_losses.png, torch_adamw_step_time.png to", args.out)


if __name__ == "__main__":
    main()
