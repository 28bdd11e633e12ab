"""What a step costs through ``fusedopt.torch`` against the same step through
fusedopt's NumPy API, torch's fused AdamW and DeepSpeed's CPU Adam.

AdamW (lr 1e-3, weight decay 1e-2), float32, tensors of ``--size`` elements
(1000: the step is almost all overhead), at each count of tensors. Every
implementation steps the same params with the same gradients (set once, as
after a backward), each with its own state; the NumPy API steps NumPy views
of the same tensors, so it is the floor the adapter adds its Python to.
``opt.step()`` goes through torch's ``Optimizer.step`` wrapper (profiler
label, hooks), as a training loop's does.

The implementations are timed in turns, ``--rounds`` times (the order
rotating), so that a busy spell of the machine falls on all of them; each
turn is a median over ``--seconds`` of steps. The table gives the median of
the rounds and, in brackets, their range; the ratios are taken within each
round, then their median. DeepSpeed's CPU Adam runs when it is importable
(``pip install "fusedopt[peers]"``; DS_ACCELERATOR=cpu is set here; its
kernel is compiled on first use, which takes a minute once).

    python benchmarks/torch_overhead.py [--counts 1,10,100,400] [--size 1000] [--threads 2] [--new-grads]

With ``--new-grads`` every step is given new gradient tensors, as a
training loop's ``zero_grad()`` (set_to_none, torch's default) and backward
give it (two sets taken in turn, assigned to ``param.grad`` before each step,
the assignments timed for every implementation); the NumPy API steps NumPy
views of them, made at each step as a torch loop would make them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
from typing import Callable

import numpy as np
import torch

import fusedopt
import fusedopt.torch
from fusedopt.bench.implementations import deepspeed_adam
from fusedopt.bench.report import format_time
from fusedopt.bench.timing import measure

LR, WEIGHT_DECAY = 1e-3, 1e-2
SIZE = 1000  # elements per tensor: the step is almost all overhead

IMPLEMENTATIONS = ["fusedopt.torch", "torch fused", "DeepSpeed CPU Adam", "NumPy API"]
FLOOR = "NumPy API"


def make_params(count: int, size: int, seed: int = 0) -> list[torch.nn.Parameter]:
    """``count`` params of ``size`` float32 elements, each with its gradient."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(count):
        param = torch.nn.Parameter(torch.randn(size, generator=generator))
        param.grad = 1e-3 * torch.randn(size, generator=generator)
        params.append(param)
    return params


def deepspeed_unavailable() -> str | None:
    """Why DeepSpeed's CPU Adam cannot run here, or None (imported as the
    bench imports it: its own kernel directory, a stale build lock named)."""
    try:
        deepspeed_adam()
    except Exception as error:  # not installed, or its import fails on this machine
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def stepper(name: str, params: list[torch.nn.Parameter], new_grads: bool = False) -> Callable[[], object]:
    """One step of implementation ``name`` over ``params`` (each optimizer
    keeps its own state; all of them update the same params); with
    ``new_grads``, each step first gives every param a new gradient tensor."""
    if name == FLOOR:
        views = [p.detach().numpy() for p in params]
        opt = fusedopt.AdamW(views, lr=LR, weight_decay=WEIGHT_DECAY)
        if not new_grads:
            grads = [p.grad.numpy() for p in params]
            return lambda: opt.step(grads)
        step = lambda: opt.step([p.grad.numpy() for p in params])  # noqa: E731
    elif name == "fusedopt.torch":
        step = fusedopt.torch.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY).step
    elif name == "torch fused":
        step = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True).step
    elif name == "DeepSpeed CPU Adam":
        step = deepspeed_adam()(params, lr=LR, weight_decay=WEIGHT_DECAY, adamw_mode=True).step
    else:
        raise ValueError(f"unknown implementation {name!r}; choose from {IMPLEMENTATIONS}")
    if not new_grads:
        return step
    grad_sets = [[p.grad.clone() for p in params] for _ in range(2)]
    turn = itertools.cycle(grad_sets)

    def step_with_new_grads() -> object:
        for param, grad in zip(params, next(turn)):
            param.grad = grad
        return step()
    return step_with_new_grads


def set_threads(count: int) -> int:
    """Every implementation's thread count (fusedopt's and torch's; DeepSpeed's
    OpenMP loop takes OMP_NUM_THREADS); returns the previous one."""
    previous = fusedopt.set_num_threads(count)
    torch.set_num_threads(count)
    return previous


def compare(names: list[str], count: int, size: int, rounds: int, seconds: float,
            new_grads: bool = False) -> dict[str, list[float]]:
    """Seconds per step of each implementation, one median per round."""
    params = make_params(count, size)
    steps = {name: stepper(name, params, new_grads) for name in names}
    for step in steps.values():  # lazy state made, DeepSpeed's kernel loaded
        step()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            medians[name].append(measure(steps[name], seconds=seconds).median)
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,100,400", help="numbers of tensors (default: %(default)s)")
    parser.add_argument("--size", type=int, default=SIZE, help="elements per tensor (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every implementation (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="turns of each implementation (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=0.1, help="length of one turn (default: %(default)s)")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="default: %(default)s")
    parser.add_argument("--new-grads", action="store_true",
                        help="new gradient tensors before every step, as after zero_grad() and a backward")
    args = parser.parse_args(argv)

    names = args.impls.split(",")
    unknown = set(names) - set(IMPLEMENTATIONS)
    if unknown:
        parser.error(f"unknown --impls {sorted(unknown)}; choose from {IMPLEMENTATIONS}")
    notes = []
    if "DeepSpeed CPU Adam" in names and (why := deepspeed_unavailable()) is not None:
        names.remove("DeepSpeed CPU Adam")
        notes.append(f"DeepSpeed CPU Adam skipped ({why})")
    set_threads(args.threads)

    features = fusedopt.cpu_features()
    grads = "new gradient tensors at every step" if args.new_grads else "the same gradients at every step"
    print(f"AdamW float32, {args.size:,} elements per tensor, {args.threads} threads, {grads}; "
          f"fusedopt {features['version']} ({features['isa']}), torch {torch.__version__}, "
          f"Python {platform.python_version()}, {platform.machine()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"median of {args.rounds} rounds of {args.seconds} s each [range of the rounds]; "
          f"x = median ratio to the {FLOOR} within a round\n")
    header = "| tensors | " + " | ".join(names) + " |"
    print(header)
    print("|---:|" + "---:|" * len(names))
    for count in map(int, args.counts.split(",")):
        medians = compare(names, count, args.size, args.rounds, args.seconds, args.new_grads)
        cells = []
        for name in names:
            times = np.asarray(medians[name])
            cell = f"{format_time(np.median(times))} [{format_time(times.min())}-{format_time(times.max())}]"
            if FLOOR in medians and name != FLOOR:
                cell += f" {np.median(times / np.asarray(medians[FLOOR])):.2f}x"
            cells.append(cell)
        print(f"| {count} | " + " | ".join(cells) + " |", flush=True)
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
