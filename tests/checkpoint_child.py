"""The process tests/test_checkpoint.py kills with SIGKILL in the middle of saves.

Run as ``python checkpoint_child.py PATH LOG PAUSE``: resume from the
checkpoint at PATH if there is one, then step and save to PATH forever,
appending each step whose save has completed to LOG (flushed and fsynced).
With PAUSE one of ``writing``, ``before_replace`` or ``after_replace``, the
second save of the run stops at that point, writes ``PATH.paused`` and
sleeps until it is killed; with ``random`` it never pauses.

The params and the state after step t depend only on t (the gradients do),
so the test can rebuild any step's state with ``replay``.
"""

import os
import sys
import time

import numpy as np

import fusedopt

SIZES = (200_000, 100_000)  # float64: 2.4 MB of params, 4.8 MB of Adam state


def gradients(step):
    """The gradients of step ``step`` (0-based): a fixed function of the step."""
    return [np.linspace(-1.0, 1.0, n) * np.cos(step + i) for i, n in enumerate(SIZES)]


def make_optimizer():
    params = [np.zeros(n) for n in SIZES]
    return params, fusedopt.Adam(params, lr=1e-3, weight_decay=0.01)


def replay(params, optimizer, until):
    """Advance a ``make_optimizer()`` pair to step ``until``."""
    while optimizer.state[0]["step"] < until:
        optimizer.step(gradients(optimizer.state[0]["step"]))


def pause_at(point, marker):
    """Make the next save stop at ``point`` and wait there to be killed."""
    def wait():
        with open(marker, "w") as file:
            file.write(point)
            file.flush()
            os.fsync(file.fileno())
        while True:
            time.sleep(1)

    if point == "writing":  # after some arrays of the temporary file, before the others
        write_array, calls = np.lib.format.write_array, [0]

        def paused_write_array(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                wait()
            return write_array(*args, **kwargs)

        np.lib.format.write_array = paused_write_array
    else:
        replace = os.replace

        def paused_replace(*args, **kwargs):
            if point == "before_replace":  # the temporary file complete and fsynced
                wait()
            replace(*args, **kwargs)
            wait()  # after_replace: the new file in place, the directory not fsynced, the log not written

        os.replace = paused_replace


def main(path, log_path, pause):
    params, optimizer = make_optimizer()
    if os.path.exists(path):
        extra = fusedopt.load(path, optimizer)
        for param, saved in zip(params, extra["params"]):
            param[...] = saved
    with open(log_path, "a") as log:
        for saves in range(1, sys.maxsize):
            if saves == 2 and pause != "random":
                pause_at(pause, path + ".paused")
            step = optimizer.state[0]["step"]
            optimizer.step(gradients(step))
            fusedopt.save(path, optimizer, extra={"params": params})
            log.write(f"{step + 1}\n")
            log.flush()
            os.fsync(log.fileno())


if __name__ == "__main__":
    main(*sys.argv[1:])
