"""fusedopt.distributed (issue 13): the sharded (ZeRO-1) step on MPI, and
fusedopt.torch inside torch.distributed.

The MPI tests launch ``mpiexec -n 1, 2, 3`` (the mpich wheel's, from the
``mpi`` extra that the ``test`` extra includes: missing, they fail, they do
not skip) on tests/distributed/zero_worker.py; every rank compares itself
bit for bit with an unsharded optimizer stepping on the averaged grads and
writes a JSON report, which these tests judge. The torch test starts two
processes of tests/distributed/torch_worker.py (gloo on 127.0.0.1). Every
launch has a timeout: a hang fails the test instead of blocking the suite.

gloo sometimes aborts at interpreter exit ("terminate called without an
active exception", about 1 run in 12 with torch alone); so do MPI runs
killed by their timeout. The tests therefore judge the reports the children
wrote, never their exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt import reference
from fusedopt.distributed import BLOCK, shard_layout
from fusedopt.precision import bfloat16

HERE = os.path.dirname(os.path.abspath(__file__))
ZERO_WORKER = os.path.join(HERE, "distributed", "zero_worker.py")
TORCH_WORKER = os.path.join(HERE, "distributed", "torch_worker.py")
TIMEOUT = 240  # seconds per launch: far above the few seconds a launch takes


def mpiexec() -> str:
    """The mpiexec beside this interpreter (the mpich wheel's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    assert found, 'no mpiexec: pip install ".[mpi]" (the test extra includes it)'
    return found


def launch(world: int, scenarios: list[str], out: str) -> dict[str, list[dict]]:
    """Runs the scenarios at ``world`` ranks; returns each one's rank reports."""
    import mpi4py  # noqa: F401 -- a missing mpi4py fails here, with its own message

    command = [mpiexec(), "-n", str(world), sys.executable, ZERO_WORKER, ",".join(scenarios), out]
    env = {**os.environ, "FUSEDOPT_NUM_THREADS": "1"}  # up to 3 ranks on 2 cores
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        output = f"timed out after {TIMEOUT} s: {expired.stdout!r} {expired.stderr!r}"
    reports = {}
    for scenario in scenarios:
        reports[scenario] = []
        for rank in range(world):
            path = os.path.join(out, f"{scenario}.rank{rank}.json")
            assert os.path.exists(path), f"rank {rank} of {world} wrote no {scenario} report:\n{output[-3000:]}"
            with open(path) as file:
                reports[scenario].append(json.load(file))
    return reports


def assert_no_failures(reports: list[dict]) -> None:
    failures = [f"rank {r['rank']}: {f}" for r in reports for f in r["failures"]]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


# ---------------------------------------------------------- in one process
def test_random_index_keys_a_piece_as_its_full_param():
    """A group's private _random_index gives shard pieces the random bits of
    the full param (the core and the reference): pieces [0, 768) and
    [768, 3000) of params[1] step bitwise as params[1] does. Without it a
    piece uses its own position and index 0 and rounds differently."""
    rng = np.random.default_rng(3)
    start = [(rng.standard_normal(n) * 1e-3).astype(bfloat16) for n in (100, 3000)]
    grads = [[(rng.standard_normal(n) + 0.5).astype(bfloat16) for n in (100, 3000)] for _ in range(3)]
    options = dict(lr=1e-3, rounding="stochastic", seed=99)
    full_params = [p.copy() for p in start]
    full = fusedopt.AdamW(full_params, **options)
    for g in grads:
        full.step(g)
    for cls in (fusedopt.AdamW, reference.AdamW):
        for keyed in (True, False):
            w = start[1].copy()
            pieces = [w[:768], w[768:]]
            group = {"params": pieces}
            if keyed:
                group["_random_index"] = [(1, 0), (1, 768)]
            opt = cls([group], **options)
            for g in grads:
                opt.step([g[1][:768], g[1][768:]])
            same = np.array_equal(w.view(np.uint16), full_params[1].view(np.uint16))
            assert same == keyed, f"{cls.__module__}.{cls.__name__}, keyed={keyed}"


@pytest.mark.parametrize("bad, message", [
    ([(1, 0)], "has 2 params but 1 _random_index pairs"),
    ([(1, 0), (1, -5)], "_random_index must be a list of"),
    ([(1, 0), (1,)], "_random_index must be a list of"),
    ("no", "_random_index must be a list of"),
])
def test_bad_random_index_is_refused_and_changes_nothing(bad, message):
    w = np.ones(600, bfloat16)
    opt = fusedopt.AdamW([{"params": [w[:256], w[256:]], "_random_index": [(0, 0), (0, 256)]}],
                         lr=1.0, rounding="stochastic")
    opt.param_groups[0]["_random_index"] = bad
    with pytest.raises(ValueError, match=message):
        opt.step([np.ones(256, bfloat16), np.ones(344, bfloat16)])
    assert np.all(w == 1) and opt.state[0]["step"] == 0


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_layout(world):
    """Contiguous shards, cut only at param ends or at multiples of BLOCK
    inside a param, each within BLOCK elements of total / world."""
    sizes = [1000, 3, 0, 2049, 513, 5 * BLOCK + 7, 64, 100_000]
    pieces = shard_layout(sizes, world)
    assert [p.rank for p in pieces] == sorted(p.rank for p in pieces)
    for i, size in enumerate(sizes):
        mine = [p for p in pieces if p.param == i]
        assert mine and mine[0].start == 0 and mine[-1].stop == size
        assert all(a.stop == b.start for a, b in zip(mine, mine[1:]))
        assert all(p.start % BLOCK == 0 for p in mine)
    for rank in range(world):
        elements = sum(p.size for p in pieces if p.rank == rank)
        assert abs(elements - sum(sizes) / world) <= BLOCK, (rank, elements)


# ------------------------------------------------------------------ MPI
@pytest.fixture(scope="module")
def mpi_reports(tmp_path_factory):
    """Every scenario at 1, 2 and 3 ranks, one mpiexec per world size, and
    the checkpoint saved at 2 ranks resumed at 3 (and 1)."""
    out = str(tmp_path_factory.mktemp("mpi"))
    reports = {}
    for world in (1, 2, 3):
        directory = os.path.join(out, str(world))
        os.makedirs(directory)
        scenarios = ["equal", "nonfinite", "mismatch", "step_error"] + (["save"] if world == 2 else [])
        reports[world] = launch(world, scenarios, directory)
    for world in (3, 1):
        resume = os.path.join(out, f"resume{world}")
        shutil.copytree(os.path.join(out, "2"), resume)
        reports[world].update(launch(world, ["resume"], resume))
    return reports


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_step_is_the_unsharded_step(mpi_reports, world):
    """Every rule (every state array), float32 and bf16 with stochastic
    rounding, 3 steps over two groups with pieces cut across ranks and
    buckets: params on every rank and the consolidated state_dict bitwise."""
    assert_no_failures(mpi_reports[world]["equal"])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_state_per_rank_is_one_nth(mpi_reports, world):
    """The shards' state adds up to the unsharded state, and each rank keeps
    its elements' share: within BLOCK elements (512 with blocks of 512) of
    1/N, and, where every element costs the same bytes, exactly their share
    of the bytes (8-bit state mixes 8-bit params with float32 ones: less
    than the whole there)."""
    reports = mpi_reports[world]["equal"]
    total = reports[0]["total_elements"]
    for case in reports[0]["memory"]:
        shards = [r["memory"][case] for r in reports]
        full = shards[0]["full"]
        assert sum(s["shard"] for s in shards) == full, case
        for s in shards:
            assert abs(s["elements"] - total / world) <= (512 if "512" in case else BLOCK), (case, s)
            if "8bit" in case:
                assert s["shard"] < full or world == 1, (case, s)
            else:
                assert s["shard"] == full * s["elements"] // total, (case, s)


@pytest.mark.parametrize("world", [1, 3])
def test_checkpoint_of_two_ranks_resumes_bitwise(mpi_reports, world):
    """Saved (fusedopt.save of the consolidated state_dict) at 2 ranks,
    loaded at 3 and at 1: 3 more steps equal an unsharded run of all 6."""
    assert_no_failures(mpi_reports[2]["save"])
    assert_no_failures(mpi_reports[world]["resume"])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_nonfinite_agrees_on_every_rank(mpi_reports, world):
    reports = mpi_reports[world]["nonfinite"]
    assert_no_failures(reports)
    for report in reports:
        results = report["results"]
        assert results["skip inf on the last rank"] == {"outcomes": [True, False, True], "skipped": 1}
        assert results["raise inf on the last rank"] == {
            "outcomes": [True, "NonFiniteGradError index=3", True], "skipped": 1}
        # Finite grads whose average overflows: skipped too (at 1 rank there is no sum).
        overflow = [True, True, True] if world == 1 else [True, False, True]
        assert results["skip overflowing sum"]["outcomes"] == overflow


@pytest.mark.parametrize("world", [2, 3])
def test_mismatched_params_raise_on_every_rank(mpi_reports, world):
    reports = mpi_reports[world]["mismatch"]
    expected = {
        "shape": "params[4] is shape (513,) float32 on rank 0 but shape (600,) float32 on rank",
        "dtype": "params[2] is shape (0,) float32 on rank 0 but shape (0,) float64 on rank",
        "order": "params[0] is shape (1000,) float32 on rank 0 but shape (3,) float32 on rank",
        "count": "rank 0 has 7 params, rank",
        "lr": "the param groups' hyperparameters differ",
    }
    for report in reports:
        for variant, fragment in expected.items():
            got = report["results"][variant]
            assert got.startswith("ValueError: the ranks were given different params") and fragment in got, got
        bad = report["results"]["bad option on one rank"]
        if report["rank"] == world - 1:
            assert bad.startswith("ValueError: lr") and "must be >= 0" in bad, bad
        else:
            assert bad.startswith(f"RuntimeError: ZeroRedundancyOptimizer: rank {world - 1} could not build"), bad


@pytest.mark.parametrize("world", [2, 3])
def test_a_bad_step_on_one_rank_raises_everywhere_and_changes_nothing(mpi_reports, world):
    reports = mpi_reports[world]["step_error"]
    assert_no_failures(reports)  # params unchanged after each, the next step the unsharded one
    own = {"wrong shape": "ValueError: grads[1] has shape (2,)", "wrong dtype": "TypeError: grads[1] has dtype",
           "too few grads": "ValueError: grads has 6 entries", "a None grad": "ValueError: grads[0] is None",
           "negative lr on one rank": "ValueError: lr (param group 0) must be >= 0.0"}
    for report in reports:
        for label, start in own.items():
            got = report["results"][label]
            if report["rank"] == world - 1:
                assert got.startswith(start), got
            else:
                assert got.startswith(f"RuntimeError: rank {world - 1} failed checking") and start in got, got
        # consolidate_state_dict with a bad or a differing `to` on the last rank only.
        missing = report["results"]["consolidate to a rank that is not there"]
        if report["rank"] == world - 1:
            assert missing == f"ValueError: to must be a rank in [0, {world}), got {world}", missing
        else:
            assert missing.startswith(f"RuntimeError: rank {world - 1} failed consolidate_state_dict"), missing
        differing = report["results"]["consolidate to another rank"]
        assert differing.startswith("ValueError: consolidate_state_dict: the ranks passed different to"), differing


# ---------------------------------------------------------------- torch
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fusedopt_torch_in_torch_zero_redundancy_optimizer(tmp_path):
    """fusedopt.torch.AdamW and SGD as optimizer_class of torch's
    ZeroRedundancyOptimizer under DDP (2 processes, gloo on 127.0.0.1) train
    as torch.optim's do: losses, params after every step and the
    consolidated state within test_against_torch.py's bound."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "GLOO_SOCKET_IFNAME": "lo", "FUSEDOPT_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, TORCH_WORKER, str(tmp_path)], env={**env, "RANK": str(r)},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = []
    for child in children:
        try:
            outputs.append(child.communicate(timeout=TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            child.kill()
            outputs.append(f"timed out after {TIMEOUT} s\n" + child.communicate()[0])
    # Exit codes are not judged (gloo's exit abort, see the module docstring): the reports are.
    for rank in range(2):
        path = tmp_path / f"torch.rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no report:\n{outputs[rank][-3000:]}"
        report = json.loads(path.read_text())
        assert "error" not in report, report["error"]
        for rule, result in report["rules"].items():
            np.testing.assert_allclose(result["losses"]["fusedopt"], result["losses"]["torch"], rtol=1e-12,
                                       atol=0, err_msg=rule)
            assert result["moved"] > 1e-3, rule  # the training did something
            assert result["param_worst_excess"] <= 1.0, (rule, result["param_worst_excess"])
            if rank == 0:
                assert result["state_keys"], rule
                assert result["state_worst_excess"] <= 1.0, (rule, result["state_worst_excess"])
