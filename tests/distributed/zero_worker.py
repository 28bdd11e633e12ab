"""One rank of a fusedopt.distributed test, run under ``mpiexec -n N``.

    mpiexec -n 3 python tests/distributed/zero_worker.py SCENARIO[,SCENARIO...] OUT_DIR

Every rank makes every rank's grads from seeds (rank, step, param), so each
can also run the unsharded optimizer on the averaged grads and compare
itself with it, bit for bit. Each rank writes ``OUT_DIR/SCENARIO.rankR.json``:
``{"failures": [...], ...}``; tests/test_distributed.py judges those files.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fusedopt  # noqa: E402
from fusedopt.distributed import BLOCK, ZeroRedundancyOptimizer  # noqa: E402
from fusedopt.precision import bfloat16  # noqa: E402
from mpi4py import MPI  # noqa: E402

from cases import FULL_STATE_CASES, case_id  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, WORLD = COMM.Get_rank(), COMM.Get_size()

# Sizes around the block (256) and the SIMD widths, an empty param, one
# larger than a bucket; two groups (the second with its own lr).
SIZES = [1000, 3, 0, 2049, 513, 5 * BLOCK + 7, 64]
HALF = 3
STEPS = 3
# Small buckets: several Alltoallv/Allgatherv rounds, pieces cut across them.
ZeroRedundancyOptimizer.bucket_elements = 700

PRECISIONS = {
    "float32": (np.float32, {}),
    "bfloat16-stochastic": (bfloat16, {"rounding": "stochastic", "seed": 1234}),
    # 8-bit state: the 2049- and 1287-element params keep it and are cut between ranks into pieces
    # smaller than min_8bit_size; the 1000-element one keeps float32 state. Blocks of 512 move the cuts.
    "float32-8bit": (np.float32, {"state_bits": 8, "min_8bit_size": 1024}),
    "bfloat16-8bit-stochastic": (bfloat16, {"state_bits": 8, "min_8bit_size": 1024, "rounding": "stochastic",
                                            "seed": 1234}),
    "float32-8bit-blocks-of-512": (np.float32, {"state_bits": 8, "min_8bit_size": 1024, "block_size": 512}),
    "bfloat16-master-weights": (bfloat16, {"master_weights": True, "state_dtype": np.float32}),
    "float16-kahan": (np.float16, {"kahan_sum": True}),
}


def start_params(dtype, sizes=SIZES):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]


def rank_grads(dtype, step, rank, sizes=SIZES, scale=1.0):
    """Rank ``rank``'s grads at ``step``: at least 0.1 in magnitude."""
    out = []
    for i, n in enumerate(sizes):
        g = np.random.default_rng((step, rank, i)).standard_normal(n)
        out.append(((g + np.copysign(0.1, g)) * scale).astype(dtype))
    return out


def averaged(per_rank):
    """The defined average, written independently of fusedopt.distributed:
    rank 0 + rank 1 + ..., then / N, in float32 for 16-bit grads."""
    out = []
    for i in range(len(per_rank[0])):
        dtype = per_rank[0][i].dtype
        compute = np.dtype(np.float32) if dtype.itemsize == 2 else dtype
        total = functools.reduce(lambda a, b: a + b, [g[i].astype(compute) for g in per_rank])
        out.append((total / compute.type(len(per_rank))).astype(dtype))
    return out


def groups(params, lr):
    return [{"params": params[:HALF]}, {"params": params[HALF:], "lr": 0.5 * lr}]


def bits(a):
    return a.view(f"u{a.itemsize}")


def compare(label, got, want, failures):
    """Params lists or state_dicts, bit for bit (and every other value equal)."""
    if isinstance(want, np.ndarray):
        if not isinstance(got, np.ndarray) or got.dtype != want.dtype or got.shape != want.shape:
            failures.append(f"{label}: got {type(got).__name__} {getattr(got, 'dtype', '')} "
                            f"{getattr(got, 'shape', '')}, want {want.dtype} {want.shape}")
        elif not np.array_equal(bits(got), bits(want)):
            first = int(np.flatnonzero(bits(got).reshape(-1) != bits(want).reshape(-1))[0])
            failures.append(f"{label}: differs first at element {first}: {got.reshape(-1)[first]!r}, "
                            f"want {want.reshape(-1)[first]!r}")
    elif isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            failures.append(f"{label}: keys {sorted(map(str, got)) if isinstance(got, dict) else got}, "
                            f"want {sorted(map(str, want))}")
            return
        for key in want:
            compare(f"{label}[{key!r}]", got[key], want[key], failures)
    elif isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            failures.append(f"{label}: {got!r}, want {want!r}")
            return
        for k, (a, b) in enumerate(zip(got, want)):
            compare(f"{label}[{k}]", a, b, failures)
    elif got != want and not (isinstance(want, float) and np.isnan(want) and np.isnan(got)):
        failures.append(f"{label}: {got!r}, want {want!r}")


def state_bytes(optimizer):
    return sum(v.nbytes for entry in optimizer.state for v in entry.values() if isinstance(v, np.ndarray))


def step_side_by_side(sharded, sharded_params, full, full_params, dtype, steps, where, failures):
    """The sharded optimizer on this rank's grads, the unsharded one on the
    average, step by step: params compared after each step, the consolidated
    state on rank 0 at the end."""
    for step in steps:
        per_rank = [rank_grads(dtype, step, r) for r in range(WORLD)]
        sharded.step(per_rank[RANK])
        full.step(averaged(per_rank))
        compare(f"{where} step {step} params", sharded_params, full_params, failures)
    sharded.consolidate_state_dict(to=0)
    if RANK == 0:
        compare(f"{where} state_dict", sharded.state_dict(), full.state_dict(), failures)


# ----------------------------------------------------------------- scenarios
def scenario_equal(out):
    """Every rule (every state array created), float32 and bf16 with
    stochastic rounding: sharded == unsharded after every step, params on
    every rank, the consolidated state on rank 0."""
    failures, memory = [], {}
    for precision, (dtype, options) in PRECISIONS.items():
        for name, kwargs in FULL_STATE_CASES:
            where = f"{case_id(name, kwargs)} {precision}"
            cls = getattr(fusedopt, name)
            lr = kwargs.get("lr", 1e-2)
            kwargs = {**{k: v for k, v in kwargs.items() if k != "lr"}, **options}
            sharded_params, full_params = start_params(dtype), start_params(dtype)
            sharded = ZeroRedundancyOptimizer(groups(sharded_params, lr), cls, lr=lr, **kwargs)
            full = cls(groups(full_params, lr), lr=lr, **kwargs)
            step_side_by_side(sharded, sharded_params, full, full_params, dtype, range(1, STEPS + 1), where,
                              failures)
            memory[where] = {"shard": sharded.state_bytes(), "full": state_bytes(full),
                             "elements": sum(p.size for k in sharded._my_pieces for p in [sharded.layout[k]])}
    return {"failures": failures, "memory": memory, "total_elements": sum(SIZES)}


RESUME_CASES = [("AdamW", "bfloat16-stochastic"), ("NAdam", "float32"), ("Adagrad", "float32"),
                ("Adam", "float32-8bit-blocks-of-512")]


def scenario_save(out):
    """Phase 1 of the resharded resume: STEPS steps, then a checkpoint."""
    failures = []
    for name, precision in RESUME_CASES:
        dtype, options = PRECISIONS[precision]
        params = start_params(dtype)
        opt = ZeroRedundancyOptimizer(groups(params, 1e-2), getattr(fusedopt, name), lr=1e-2, **options)
        for step in range(1, STEPS + 1):
            opt.step(rank_grads(dtype, step, RANK))  # the grads of a world of WORLD ranks
        opt.consolidate_state_dict(to=0)
        if RANK == 0:
            fusedopt.save(os.path.join(out, f"{name}.npz"), opt, extra={"params": params, "world": WORLD})
    return {"failures": failures}


def scenario_resume(out):
    """Phase 2: load at this world size, STEPS more steps; compared with an
    unsharded run of all 2 * STEPS steps (the first STEPS on the saving
    world's grads)."""
    failures = []
    for name, precision in RESUME_CASES:
        dtype, options = PRECISIONS[precision]
        cls = getattr(fusedopt, name)
        params = start_params(dtype)
        opt = ZeroRedundancyOptimizer(groups(params, 1e-2), cls, lr=1e-2, **options)
        extra = fusedopt.load(os.path.join(out, f"{name}.npz"), opt)
        for p, saved in zip(params, extra["params"]):
            p[...] = saved
        full_params = start_params(dtype)
        full = cls(groups(full_params, 1e-2), lr=1e-2, **options)
        saved_world = extra["world"]
        for step in range(1, STEPS + 1):
            full.step(averaged([rank_grads(dtype, step, r) for r in range(saved_world)]))
        step_side_by_side(opt, params, full, full_params, dtype, range(STEPS + 1, 2 * STEPS + 1),
                          f"{name} {precision} resumed", failures)
    return {"failures": failures}


def scenario_nonfinite(out):
    """One rank's inf skips (or raises on) every rank's step; so does an
    average that overflows although every rank's grads are finite."""
    failures, results = [], {}
    dtype = np.float32
    for policy in ("skip", "raise"):
        for kind in ("inf on the last rank", "overflowing sum"):
            params, full_params = start_params(dtype), start_params(dtype)
            opt = ZeroRedundancyOptimizer(params, fusedopt.Adam, lr=1e-2, nonfinite=policy)
            full = fusedopt.Adam(full_params, lr=1e-2)
            outcomes = []
            for step in range(1, 4):
                per_rank = [rank_grads(dtype, step, r) for r in range(WORLD)]
                if step == 2:
                    if kind == "inf on the last rank":
                        per_rank[-1][3][5] = np.inf
                    else:
                        for g in per_rank:
                            g[4][7] = np.float32(3e38)
                try:
                    applied = opt.step(per_rank[RANK])
                    outcomes.append(applied)
                except fusedopt.NonFiniteGradError as error:
                    outcomes.append(f"NonFiniteGradError index={error.index}")
                if step != 2 or (WORLD == 1 and kind == "overflowing sum"):
                    full.step(averaged(per_rank))
                compare(f"{policy} {kind} step {step} params", params, full_params, failures)
            results[f"{policy} {kind}"] = {"outcomes": outcomes, "skipped": opt.skipped_steps}
    return {"failures": failures, "results": results}


def scenario_mismatch(out):
    """Ranks that disagree about the params: every rank raises, none hangs."""
    results = {}
    variants = {
        "shape": lambda ps: ps[:4] + [np.zeros(600, np.float32)] + ps[5:],
        "dtype": lambda ps: ps[:2] + [ps[2].astype(np.float64)] + ps[3:],
        "order": lambda ps: [ps[1], ps[0]] + ps[2:],
        "count": lambda ps: ps[:-1],
    }
    for variant, change in variants.items():
        params = start_params(np.float32)
        if RANK == WORLD - 1:
            params = change(params)
        try:
            ZeroRedundancyOptimizer(params, fusedopt.Adam, lr=1e-2)
            results[variant] = "built"
        except Exception as error:  # noqa: BLE001
            results[variant] = f"{type(error).__name__}: {error}"
    try:
        lr = 0.5 if RANK == WORLD - 1 else 1e-2
        ZeroRedundancyOptimizer(start_params(np.float32), fusedopt.Adam, lr=lr)
        results["lr"] = "built"
    except Exception as error:  # noqa: BLE001
        results["lr"] = f"{type(error).__name__}: {error}"
    try:  # a bad option on one rank: that rank's own error, RuntimeError on the others
        lr = -1.0 if RANK == WORLD - 1 else 1e-2
        ZeroRedundancyOptimizer(start_params(np.float32), fusedopt.SGD, lr=lr)
        results["bad option on one rank"] = "built"
    except Exception as error:  # noqa: BLE001
        results["bad option on one rank"] = f"{type(error).__name__}: {error}"
    return {"failures": [], "results": results}


def scenario_step_error(out):
    """A rank whose step input is bad: every rank raises, nothing changes,
    and the next (good) step is the unsharded one."""
    failures, results = [], {}
    dtype = np.float32
    params, full_params = start_params(dtype), start_params(dtype)
    opt = ZeroRedundancyOptimizer(params, fusedopt.Adam, lr=1e-2)
    full = fusedopt.Adam(full_params, lr=1e-2)
    bad = {
        "wrong shape": lambda gs: gs[:1] + [gs[1][:2]] + gs[2:],
        "wrong dtype": lambda gs: gs[:1] + [gs[1].astype(np.float64)] + gs[2:],
        "too few grads": lambda gs: gs[:-1],
        "a None grad": lambda gs: [None] + gs[1:],
    }
    for label, change in bad.items():
        grads = rank_grads(dtype, 1, RANK)
        if RANK == WORLD - 1:
            grads = change(grads)
        try:
            opt.step(grads)
            results[label] = "stepped"
        except Exception as error:  # noqa: BLE001
            results[label] = f"{type(error).__name__}: {error}"
        compare(f"after {label}: params", params, start_params(dtype), failures)
    # An lr made bad on one rank only (a schedule gone wrong there).
    opt.param_groups[0]["lr"] = -1.0 if RANK == WORLD - 1 else 1e-2
    try:
        opt.step(rank_grads(dtype, 1, RANK))
        results["negative lr on one rank"] = "stepped"
    except Exception as error:  # noqa: BLE001
        results["negative lr on one rank"] = f"{type(error).__name__}: {error}"
    opt.param_groups[0]["lr"] = 1e-2
    compare("after a bad lr: params", params, start_params(dtype), failures)
    per_rank = [rank_grads(dtype, 1, r) for r in range(WORLD)]
    opt.step(per_rank[RANK])
    full.step(averaged(per_rank))
    compare("the good step after the errors", params, full_params, failures)
    for label, to in (("consolidate to a rank that is not there", WORLD), ("consolidate to another rank", 0)):
        try:  # on the last rank only: every rank raises, none waits in the gather
            opt.consolidate_state_dict(to=to if RANK == WORLD - 1 else WORLD - 1)
            results[label] = "consolidated"
        except Exception as error:  # noqa: BLE001
            results[label] = f"{type(error).__name__}: {error}"
    opt.consolidate_state_dict(to=0)
    if RANK == 0:
        compare("state_dict after the errors", opt.state_dict(), full.state_dict(), failures)
    return {"failures": failures, "results": results}


def main():
    scenarios, out = sys.argv[1].split(","), sys.argv[2]
    for scenario in scenarios:
        try:
            report = globals()[f"scenario_{scenario}"](out)
        except Exception:  # noqa: BLE001 -- the test reads it
            report = {"failures": [f"rank {RANK} raised:\n{traceback.format_exc()}"]}
        report["rank"], report["world"] = RANK, WORLD
        path = os.path.join(out, f"{scenario}.rank{RANK}.json")
        with open(path + ".tmp", "w") as file:
            json.dump(report, file, indent=1)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
