"""``python -m fusedopt``: the command line.

    python -m fusedopt bench [--quick] [...]   how fast is fusedopt here, against NumPy, PyTorch,
                                              a plain compiled loop and the memory roof
    python -m fusedopt demo                    fit a small problem with each optimizer
    python -m fusedopt                         the configuration and this help
"""

from __future__ import annotations

import argparse
import sys
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


def parser() -> argparse.ArgumentParser:
    from .bench import cli  # the bench's imports stay out of `import fusedopt`

    top = argparse.ArgumentParser(prog="python -m fusedopt", description="fusedopt's command line.")
    top.add_argument("--version", action="version", version=f"fusedopt {fusedopt.__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench", help="benchmark fusedopt against NumPy, PyTorch, a plain compiled loop and the memory roof")
    cli.add_arguments(bench)
    commands.add_parser("demo", help="fit a small least-squares problem with each optimizer")
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.command == "bench":
        import shlex

        from .bench import cli
        words = sys.argv[1:] if argv is None else argv
        return cli.main(args, command="python -m fusedopt " + " ".join(shlex.quote(w) for w in words))
    if args.command == "demo":
        demo()
        return 0
    fusedopt.show_config()
    print()
    top.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
