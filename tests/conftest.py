import numpy as np
import pytest

import fusedopt
from fusedopt import _core

SUPPORTED_TARGETS = fusedopt.cpu_features()["supported_targets"]
BASELINE_TARGET = SUPPORTED_TARGETS[-1]


@pytest.fixture(params=SUPPORTED_TARGETS)
def target(request):
    """Run the test on each SIMD target this CPU supports, then restore the chosen one."""
    chosen = fusedopt.cpu_features()["isa"]
    _core.select_target(request.param)
    yield request.param
    _core.select_target(chosen)


@pytest.fixture
def parallel_everywhere():
    """Make even tiny steps take the multi-threaded path."""
    previous = _core.set_serial_cutoff_bytes(0)
    yield
    _core.set_serial_cutoff_bytes(previous)


@pytest.fixture(params=["split", "chunked"])
def every_team_split(request, parallel_everywhere):
    """parallel_everywhere, with the team's elements split one piece per
    thread (as steps under 16 MB are) or chunked (as larger ones are)."""
    previous = _core.set_chunked_step_bytes(0 if request.param == "chunked" else 1 << 62)
    yield request.param
    _core.set_chunked_step_bytes(previous)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
