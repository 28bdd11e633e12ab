"""One step over more than 2**31 float32 elements: every index past 2**31
(where a 32-bit count or offset would wrap) is reached and updated.

About 8.6 GB resident: the param is written everywhere, the grad is
np.zeros (its pages stay unallocated, all reading the zero page) with a few
elements set. Marked ``large_memory``; it runs where FUSEDOPT_LARGE_TESTS=1 or
the machine has at least 20 GiB of RAM (CI has 24 GiB), and is skipped,
saying why, elsewhere. ``-m "not large_memory"`` leaves it out anywhere.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fusedopt

LARGE_RAM_BYTES = 20 * 2**30


def total_ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


RUN_LARGE = os.environ.get("FUSEDOPT_LARGE_TESTS") == "1" or total_ram_bytes() >= LARGE_RAM_BYTES

pytestmark = [
    pytest.mark.large_memory,
    pytest.mark.skipif(not RUN_LARGE, reason="needs ~8.6 GB: set FUSEDOPT_LARGE_TESTS=1 or run on >= 20 GiB of RAM"),
]

N = 2**31 + 4099  # past 2**31 by more than one SIMD width and one chunk tail


def test_one_sgd_step_over_more_than_2_to_the_31_elements():
    """SGD (lr 0.5) on zeros: each marked element gets its own gradient, so
    an update that lands on the wrong element (an index wrapped at 2**31
    lands 2**31 lower, on another mark) shows up as a wrong value. The step
    writes every element, which makes the param resident; the grad stays
    np.zeros' unallocated pages but for the marks."""
    param = np.zeros(N, np.float32)
    grad = np.zeros(N, np.float32)
    marks = np.array([0, 1, N - 1 - 2**31, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, N - 2, N - 1])
    grad[marks] = np.arange(1, marks.size + 1, dtype=np.float32)
    opt = fusedopt.SGD([param], lr=0.5)
    opt.step([grad])
    assert opt.state[0]["step"] == 1
    np.testing.assert_array_equal(param[marks], -0.5 * grad[marks])  # exact in float32
    between = np.array([2, 2**31 - 3, 2**31 + 2, N - 3])  # unmarked neighbours stay 0
    np.testing.assert_array_equal(param[between], 0.0)
