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
CHUNK = 1 << 26   # elements compared at a time: no 2-GB temporaries in the check


def test_one_sgd_step_over_more_than_2_to_the_31_elements():
    """SGD, lr 0.5, weight_decay 0.25 on params of ones: every element
    becomes 1 - 0.5 * (g + 0.25), exactly 0.875 where g = 0 and 0.375 where
    g = 1 (all exact in float32): both sides of 2**31 and the last one."""
    param = np.ones(N, np.float32)
    grad = np.zeros(N, np.float32)
    marked = [0, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, N - 1]
    grad[marked] = 1.0
    opt = fusedopt.SGD([param], lr=0.5, weight_decay=0.25)
    opt.step([grad])
    assert opt.state[0]["step"] == 1
    np.testing.assert_array_equal(param[marked], np.float32(0.375))
    param[marked] = 0.875
    for start in range(0, N, CHUNK):  # every other element too, chunk by chunk
        block = param[start:start + CHUNK]
        wrong = np.flatnonzero(block != np.float32(0.875))
        assert wrong.size == 0, f"param[{start + wrong[0]}] = {block[wrong[0]]}, expected 0.875"
