"""Busy processes beside a measurement: ``python -m fusedopt bench --contention N``.

A machine with more runnable threads than cores (data-loader workers, a
second job, a CI box) is where a multi-threaded step may wait for a core.
``busy_processes(n, kind)`` starts ``n`` processes that keep a core busy
for as long as the ``with`` block lasts:

- ``python``: a pure-Python loop, one runnable thread each (a data loader);
- ``fusedopt``: another fusedopt job, Adam steps on 1e6 float32 elements at
  fusedopt's default thread count (an OpenMP team each, like a second
  training run).

Run as ``python -m fusedopt.bench.contention KIND``, a process prints
``ready`` once it is busy and stops when its parent closes its stdin.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from typing import Iterator

__all__ = ["KINDS", "busy_processes"]

KINDS = {
    "python": "a pure-Python busy loop per process",
    "fusedopt": "fusedopt Adam steps on 1e6 float32 elements per process, at fusedopt's default threads",
}

STEPPER_ELEMENTS = 1_000_000


def _exit_when_parent_closes_stdin() -> None:
    """A busy process must not outlive its parent, even one that was killed."""
    def watch() -> None:
        sys.stdin.read()
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _python_loop() -> None:
    print("ready", flush=True)
    count = 0
    while True:
        count += 1


def _fusedopt_steps() -> None:
    import numpy as np

    import fusedopt
    params = [np.zeros(STEPPER_ELEMENTS, np.float32)]
    grads = [np.full(STEPPER_ELEMENTS, 1e-3, np.float32)]
    optimizer = fusedopt.Adam(params, lr=1e-3)
    optimizer.step(grads)
    print("ready", flush=True)
    while True:
        optimizer.step(grads)


@contextlib.contextmanager
def busy_processes(count: int, kind: str = "python") -> Iterator[list[subprocess.Popen]]:
    """``count`` busy processes of ``kind`` (see KINDS), all running when the
    block starts, all stopped when it ends."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a whole number >= 0, got {count!r}")
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-m", "fusedopt.bench.contention", kind],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for process in processes:
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a busy {kind} process did not start (exit code {process.poll()})")
        yield processes
    finally:
        for process in processes:
            process.stdin.close()  # the process's watcher exits on end of file
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


if __name__ == "__main__":
    _exit_when_parent_closes_stdin()
    {"python": _python_loop, "fusedopt": _fusedopt_steps}[sys.argv[1]]()
