"""Runtime configuration: SIMD target choice, FUSEDOPT_ISA, thread control,
threadpoolctl, and fork safety."""

import io
import json
import multiprocessing
import os
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
import threadpoolctl

import fusedopt
from fusedopt import _core
from conftest import SUPPORTED_TARGETS

BIG = 1_000_000  # 28 MB of Adam traffic in float32: well above the serial cutoff


def python(code, **env):
    """Run code in a fresh interpreter with extra environment variables."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FUSEDOPT_ISA", "FUSEDOPT_NUM_THREADS", "OMP_NUM_THREADS")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


# A small correctness check that a forced target really computes.
CHECK = """
import json, numpy as np, fusedopt
rng = np.random.default_rng(0)
w = rng.standard_normal(1001).astype(np.float32); r = w.copy()
fused, ref = fusedopt.Adam([w], amsgrad=True), fusedopt.reference.Adam([r], amsgrad=True)
for _ in range(5):
    g = rng.standard_normal(1001).astype(np.float32); fused.step([g]); ref.step([g])
print(json.dumps({"isa": fusedopt.cpu_features()["isa"], "equal": bool(np.array_equal(w, r)),
                  "threads": fusedopt.get_num_threads()}))
"""


def test_the_widest_supported_target_is_chosen():
    info = fusedopt.cpu_features()
    assert info["isa"] == info["supported_targets"][0]
    assert set(info["supported_targets"]) <= set(info["compiled_targets"])


@pytest.mark.parametrize("isa", SUPPORTED_TARGETS)
def test_fusedopt_isa_forces_a_target(isa):
    result = python(CHECK, FUSEDOPT_ISA=isa)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["isa"] == isa and out["equal"]


@pytest.mark.parametrize("isa", ["neon", "avx1024", "AVX2x"])
def test_unavailable_target_fails_at_import_naming_the_available_ones(isa):
    result = python("import fusedopt", FUSEDOPT_ISA=isa)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert f"FUSEDOPT_ISA={isa}" in result.stderr
    assert "available here: " + ", ".join(SUPPORTED_TARGETS) in result.stderr


def test_select_target_rejects_unknown_names():
    with pytest.raises(RuntimeError, match="no such target"):
        _core.select_target("sse9")
    assert fusedopt.cpu_features()["isa"] == SUPPORTED_TARGETS[0]


def test_show_config_reports_everything():
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        fusedopt.show_config()
    text = buffer.getvalue()
    info = fusedopt.cpu_features()
    for needle in [info["version"], info["compiler"], "OpenMP", ", ".join(info["compiled_targets"]),
                   "chosen target: " + info["isa"], "threads: " + str(info["num_threads"])]:
        assert needle in text
    assert "libgomp" in info["openmp"] or "libomp" in info["openmp"]


@pytest.mark.parametrize(
    "env, threads",
    [
        ({"FUSEDOPT_NUM_THREADS": "1"}, 1),
        ({"OMP_NUM_THREADS": "1"}, 1),
        ({"OMP_NUM_THREADS": "1", "FUSEDOPT_NUM_THREADS": "2"}, 2),  # ours wins
        ({}, os.cpu_count()),
    ],
)
def test_thread_count_from_the_environment(env, threads):
    result = python(CHECK, **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == threads


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_fusedopt_num_threads_fails_at_import(value):
    result = python("import fusedopt", FUSEDOPT_NUM_THREADS=value)
    assert result.returncode != 0 and "FUSEDOPT_NUM_THREADS" in result.stderr


def adam_step(n=BIG):
    w = np.ones(n, np.float32)
    opt = fusedopt.Adam([w])
    opt.step([np.ones(n, np.float32)])
    return _core.last_team_size()


def test_set_num_threads_and_the_context_manager():
    automatic = fusedopt.get_num_threads()
    previous = fusedopt.set_num_threads(1)
    try:
        assert previous == automatic
        assert fusedopt.get_num_threads() == 1 and adam_step() == 1
        with fusedopt.threads(2):
            assert fusedopt.get_num_threads() == 2 and adam_step() == 2
        assert fusedopt.get_num_threads() == 1
    finally:
        _core.set_thread_override(0)
    assert fusedopt.get_num_threads() == automatic
    with pytest.raises(ValueError, match="n must be >= 1"):
        fusedopt.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fusedopt.threads(2.0).__enter__()


def test_small_steps_run_on_one_thread():
    assert adam_step(1000) == 1
    assert adam_step() == fusedopt.get_num_threads()


def test_threadpoolctl_sees_and_limits_the_pool():
    runtime = os.path.realpath(fusedopt.cpu_features()["openmp"].split(" (")[0])
    pools = [os.path.realpath(info["filepath"]) for info in threadpoolctl.threadpool_info()
             if info["user_api"] == "openmp"]
    assert runtime in pools
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fusedopt.get_num_threads() == 1
        assert adam_step() == 1
        with fusedopt.threads(2):  # a count the user fixed wins
            assert adam_step() == 2
    assert fusedopt.get_num_threads() == os.cpu_count()


def _child_steps(queue):
    """In a forked child: steps must complete (serially) and be correct."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(BIG).astype(np.float32)
    r = w.copy()
    fused, ref = fusedopt.Adam([w]), fusedopt.reference.Adam([r])
    for _ in range(3):
        g = rng.standard_normal(BIG).astype(np.float32)
        fused.step([g])
        ref.step([g])
    queue.put((bool(np.array_equal(w, r)), _core.last_team_size(), fusedopt.cpu_features()["forked_child"]))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # Python >= 3.12
def test_a_forked_child_completes_its_steps():
    """libgomp's pool does not survive fork: a child entering a parallel region
    hangs. fusedopt runs a forked child's steps on one thread instead."""
    assert adam_step() == 2 or os.cpu_count() == 1  # the parent's pool is up
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_steps, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    equal, team, forked = queue.get(timeout=5)
    assert equal and team == 1 and forked
    assert adam_step() == fusedopt.get_num_threads()  # the parent is unaffected
