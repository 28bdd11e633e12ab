"""The course's pictures: what each update rule does, on two small problems.

One figure per lesson, each written as a PNG into ``--out``:

1. gradient descent on an ill-conditioned quadratic: slow along the shallow
   direction, zig-zag across the steep one;
2. a step size too large: the iterates leave the valley and the loss
   overflows to inf, then NaN;
3. momentum (the heavy ball) against gradient descent with the same step size;
4. both forms of AdaDelta (the notes' squared weights, Zeiler's squared
   updates), and what rescaling the problem does to each;
5. Adam;
6. all of them on the Rosenbrock function's curved valley.

Every optimizer is fusedopt's, stepping a 2-element NumPy array in place:
``w`` is the point, ``opt.step([grad(w)])`` one iteration.

    python examples/course_pictures.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt.lr_scheduler import StepLR  # noqa: E402

# --------------------------------------------------------------------------- the problems

# f(x, y) = (x^2 + 25 y^2) / 2: curvature 1 along x, 25 along y (condition
# number 25). Gradient descent is stable for lr < 2 / 25 = 0.08.
CURVATURE = np.array([1.0, 25.0])
QUADRATIC_START = np.array([-9.0, 1.6])


def quadratic(w):
    return 0.5 * float(np.sum(CURVATURE * w * w))


def quadratic_grad(w):
    return CURVATURE * w


# Rosenbrock's valley: minimum 0 at (1, 1), at the end of a curved, flat-bottomed valley.
ROSENBROCK_START = np.array([-1.5, 2.0])


def rosenbrock(w):
    x, y = w
    return float((1 - x) ** 2 + 100 * (y - x * x) ** 2)


def rosenbrock_grad(w):
    x, y = w
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def descend(make_optimizer, grad, start, steps, dtype=np.float64, schedule=None):
    """The iterates (steps + 1 points) of an optimizer started at ``start``;
    ``schedule(opt)``, if given, makes an lr scheduler stepped every iteration."""
    w = np.array(start, dtype=dtype)
    opt = make_optimizer([w])
    scheduler = schedule(opt) if schedule else None
    path = [w.copy()]
    with np.errstate(over="ignore", invalid="ignore"):  # lesson 2 overflows on purpose
        for _ in range(steps):
            opt.step([grad(w).astype(dtype)])
            if scheduler:
                scheduler.step()
            path.append(w.copy())
    return np.array(path)


def losses(f, path):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array([f(w) for w in path])


# The rules, as the course names them. lr values are picked per problem.
def gradient_descent(lr):
    return lambda params: fusedopt.SGD(params, lr=lr)


def heavy_ball(lr, momentum=0.9):
    return lambda params: fusedopt.Momentum(params, lr=lr, momentum=momentum)


def adadelta_weights(lr, rho=0.9):
    """The notes' AdaDelta: scale by running averages of squared weights."""
    return lambda params: fusedopt.Adadelta(params, lr=lr, rho=rho, scale="weights")


def adadelta_updates(lr, rho=0.9):
    """Zeiler's AdaDelta (torch's): scale by running averages of squared updates."""
    return lambda params: fusedopt.Adadelta(params, lr=lr, rho=rho)


def adam(lr):
    return lambda params: fusedopt.Adam(params, lr=lr)


# --------------------------------------------------------------------------- drawing

COLORS = {"GD": "tab:blue", "momentum": "tab:orange", "AdaDelta (weights)": "tab:green",
          "AdaDelta (updates)": "tab:olive", "Adam": "tab:red"}


def contours(ax, f, xlim, ylim, levels):
    x = np.linspace(*xlim, 300)
    y = np.linspace(*ylim, 300)
    X, Y = np.meshgrid(x, y)
    Z = np.vectorize(lambda a, b: f(np.array([a, b])))(X, Y)
    ax.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.7)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def draw_path(ax, path, label, color, every=1):
    shown = path[::every]
    ax.plot(shown[:, 0], shown[:, 1], "-o", color=color, label=label, markersize=2.5, linewidth=1)
    ax.plot(*path[0], "ks", markersize=5)


def draw_losses(ax, runs, f, title="loss"):
    for label, (path, color) in runs.items():
        ax.semilogy(losses(f, path), color=color, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("f(w)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def quadratic_axes(ax):
    contours(ax, quadratic, (-10, 10), (-3, 3), np.geomspace(0.05, 200, 14))
    ax.plot(0, 0, "k*", markersize=10)


def save(fig, out, name, written):
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)


# --------------------------------------------------------------------------- the lessons


def quadratic_lesson(out, written, summary, key, filename, runs, title, loss_title):
    """One lesson on the quadratic: the paths of `runs` ({label: (path, color)})
    over its contours on the left, their losses on the right."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    quadratic_axes(left)
    for label, (path, color) in runs.items():
        draw_path(left, path, label, color)
    left.set_title(title)
    left.legend(loc="upper right")
    draw_losses(right, runs, quadratic, loss_title)
    right.legend()
    save(fig, out, filename, written)
    summary[key] = {k: [quadratic(p[0]), quadratic(p[-1])] for k, (p, _) in runs.items()}


def lesson_gradient_descent(out, steps, summary, written):
    runs = {f"lr = {lr}": (descend(gradient_descent(lr), quadratic_grad, QUADRATIC_START, steps), color)
            for lr, color in [(0.02, "tab:blue"), (0.075, "tab:purple")]}
    quadratic_lesson(out, written, summary, "gradient descent", "lesson1_gradient_descent.png", runs,
                     "Gradient descent, f = (x² + 25 y²) / 2", "small lr: slow in x; large lr: zig-zag in y")


def lesson_step_too_large(out, steps, summary, written):
    """lr past 2 / L: each step multiplies the y error by |1 - 25 lr| > 1."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    quadratic_axes(left)
    diverging = descend(gradient_descent(0.085), quadratic_grad, QUADRATIC_START, 12)
    draw_path(left, diverging, "lr = 0.085 (> 2/25)", "tab:red")
    left.set_title("A step size too large leaves the valley")
    left.legend(loc="upper right")
    runs = {}
    # float32, as a network's weights: it overflows to inf within ~70 steps at lr = 0.2.
    for lr, color in [(0.075, "tab:purple"), (0.085, "tab:red"), (0.2, "darkred")]:
        path = descend(gradient_descent(lr), quadratic_grad, QUADRATIC_START, max(steps, 120), np.float32)
        runs[f"lr = {lr}"] = (path, color)
    draw_losses(right, runs, quadratic, "float32 weights: inf, then NaN")
    exploded = runs["lr = 0.2"][0]
    first_inf = int(np.argmax(np.isinf(exploded).any(axis=1)))
    first_nan = int(np.argmax(np.isnan(exploded).any(axis=1)))
    right.axvline(first_inf, color="darkred", linestyle=":", linewidth=1)
    right.annotate(f"w = inf at step {first_inf},\nNaN from step {first_nan}", (first_inf, 1e30),
                   xytext=(5, 0), textcoords="offset points", color="darkred")
    right.legend(loc="upper left")
    save(fig, out, "lesson2_step_size_too_large.png", written)
    summary["step too large"] = {
        "lr = 0.085": [quadratic(diverging[0]), quadratic(diverging[-1])],
        "first inf step at lr = 0.2": first_inf,
        "first NaN step at lr = 0.2": first_nan,
    }


def lesson_momentum(out, steps, summary, written):
    runs = {
        "GD": (descend(gradient_descent(0.02), quadratic_grad, QUADRATIC_START, steps), COLORS["GD"]),
        "momentum": (descend(heavy_ball(0.02, 0.7), quadratic_grad, QUADRATIC_START, steps),
                     COLORS["momentum"]),
    }
    quadratic_lesson(out, written, summary, "momentum", "lesson3_momentum.png", runs,
                     "Heavy ball, lr = 0.02, momentum = 0.7", "momentum builds speed along the valley")


def lesson_adadelta(out, steps, summary, written):
    """Both forms on the quadratic, then the same problem in units 10 times
    larger (w' = 10 w): the notes' form takes the same steps in the new units,
    Zeiler's starts from steps of size sqrt(eps) whatever the units."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    quadratic_axes(left)
    forms = {"AdaDelta (weights)": adadelta_weights(0.1), "AdaDelta (updates)": adadelta_updates(1.0)}
    runs = {}
    steps *= 2  # Zeiler's form starts with steps of about sqrt(eps) = 1e-3
    for label, make in forms.items():
        path = descend(make, quadratic_grad, QUADRATIC_START, steps)
        draw_path(left, path, label, COLORS[label], every=4)
        runs[label] = path
    left.set_title("AdaDelta, both forms")
    left.legend(loc="upper right")

    scale = 10.0  # f'(w') = f(w' / 10): the same problem in larger units
    scaled_grad = lambda w: quadratic_grad(w / scale) / scale  # noqa: E731
    for label, make in forms.items():
        f0 = quadratic(QUADRATIC_START)
        right.semilogy(losses(quadratic, runs[label]) / f0, color=COLORS[label], linewidth=4,
                       alpha=0.4, label=f"{label}")
        scaled = descend(make, scaled_grad, scale * QUADRATIC_START, steps) / scale
        right.semilogy(losses(quadratic, scaled) / f0, "--", color=COLORS[label],
                       label=f"{label}, units × {scale:g}")
        summary.setdefault("adadelta", {})[label] = [quadratic(runs[label][0]), quadratic(runs[label][-1])]
    right.set_title("in units 10× larger, the notes' form takes the same steps")
    right.set_ylim(1e-12, 3)  # below, w² nears eps = 1e-6 and the invariance ends
    right.set_xlabel("iteration")
    right.set_ylabel("f(w) / f(w₀)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    save(fig, out, "lesson4_adadelta.png", written)


def lesson_adam(out, steps, summary, written):
    runs = {f"lr = {lr}": (descend(adam(lr), quadratic_grad, QUADRATIC_START, steps), color)
            for lr, color in [(0.1, "tab:red"), (0.5, "darkred")]}
    quadratic_lesson(out, written, summary, "adam", "lesson5_adam.png", runs,
                     "Adam: steps of about lr in each coordinate", "loss")


def lesson_rosenbrock(out, steps, summary, written):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    contours(left, rosenbrock, (-2, 2), (-1, 3), np.geomspace(0.1, 2000, 14))
    left.plot(1, 1, "k*", markersize=10)
    makers = {
        "GD": gradient_descent(1e-3),
        "momentum": heavy_ball(1e-3, 0.9),
        "AdaDelta (weights)": adadelta_weights(0.05, 0.95),
        "AdaDelta (updates)": adadelta_updates(1.0, 0.95),
        "Adam": adam(0.02),
    }
    runs = {}
    for label, make in makers.items():
        path = descend(make, rosenbrock_grad, ROSENBROCK_START, steps)
        runs[label] = (path, COLORS[label])
        draw_path(left, path, label, COLORS[label], every=max(1, steps // 150))
    # AdaDelta's steps scale with |w|, not with the gradient, so it rattles
    # across the valley floor; the notes' remedy is to cut the step size.
    label = "AdaDelta (weights), lr × 0.3 every 1/6 of the run"
    path = descend(makers["AdaDelta (weights)"], rosenbrock_grad, ROSENBROCK_START, steps,
                   schedule=lambda opt: StepLR(opt, step_size=steps // 6, gamma=0.3))
    runs[label] = (path, "darkgreen")
    left.set_title(f"Rosenbrock, {steps} iterations from (-1.5, 2)")
    left.legend(loc="lower right", fontsize=8)
    draw_losses(right, runs, rosenbrock, "loss")
    right.legend(fontsize=7)
    save(fig, out, "lesson6_rosenbrock.png", written)
    summary["rosenbrock"] = {k: [rosenbrock(p[0]), rosenbrock(p[-1])] for k, (p, _) in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output",
                        help="directory for the PNGs (default: examples/output)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (for the tests)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    steps = 40 if args.quick else 80
    rosenbrock_steps = 600 if args.quick else 3000
    summary, written = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # lesson 2's overflow, on purpose
        lesson_gradient_descent(args.out, steps, summary, written)
        lesson_step_too_large(args.out, steps, summary, written)
        lesson_momentum(args.out, steps, summary, written)
        lesson_adadelta(args.out, steps, summary, written)
        lesson_adam(args.out, steps, summary, written)
        lesson_rosenbrock(args.out, rosenbrock_steps, summary, written)

    (args.out / "course_summary.json").write_text(json.dumps(summary, indent=1))
    for lesson, runs in summary.items():
        print(lesson)
        for label, value in runs.items():
            shown = f"f {value[0]:.3g} -> {value[1]:.3g}" if isinstance(value, list) else value
            print(f"    {label:40s} {shown}")
    print("wrote", ", ".join(written), "to", args.out)


if __name__ == "__main__":
    main()
