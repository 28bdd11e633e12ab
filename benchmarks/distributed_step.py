"""The sharded (ZeRO-1) step of fusedopt.distributed at 1, 2 and 3 ranks on
this machine, for the gpt2-small shapes (148 tensors, 124.4M params).

    python benchmarks/distributed_step.py [--ranks 1,2,3] [--steps 7] [--rule adamw] [--dtype float32]
        [--json out.json]

launches itself under ``mpiexec -n N`` (the mpich wheel's, ``pip install
".[mpi]"``) for each N and prints, per N: the time per step (median and
interquartile range over the steps after a warm-up), split into the
reduce-scatter (pack, Alltoallv, ordered sum), the shard's own step and the
all-gather, and the same messages sent by MPI alone (no pack, sum or
unpack); the bytes each rank sent per step; and each rank's optimizer
state bytes (the largest rank, and the sum). Every rank runs one fusedopt
thread (FUSEDOPT_NUM_THREADS=1): N ranks share this machine's cores, so the
times at N > cores measure a contended machine, not scale-out;
docs/distributed.md turns the per-element costs into a model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def worker(args) -> None:
    from mpi4py import MPI

    import fusedopt
    from fusedopt.bench.workloads import gpt2_small
    from fusedopt.distributed import ZeroRedundancyOptimizer
    from fusedopt.precision import DTYPES

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    dtype = DTYPES[args.dtype]
    rng = np.random.default_rng(rank)
    params = [np.zeros(shape, dtype) for shape in gpt2_small().shapes]
    grads = [(rng.standard_normal(shape, dtype=np.float32) * 1e-2).astype(dtype) for shape in gpt2_small().shapes]
    cls = {name.lower(): getattr(fusedopt, name) for name in fusedopt.optimizers.__all__}[args.rule]
    opt = ZeroRedundancyOptimizer(params, cls, lr=1e-4)

    # Time the three phases by wrapping them (the benchmark only).
    phases = {"reduce_scatter": [], "shard_step": [], "all_gather": []}

    def timed(name, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                phases[name].append(time.perf_counter() - start)
        return wrapper

    opt._reduce_scatter = timed("reduce_scatter", opt._reduce_scatter)
    opt._all_gather = timed("all_gather", opt._all_gather)
    opt.optim.step = timed("shard_step", opt.optim.step)
    totals = []
    for _ in range(args.steps + 1):
        comm.Barrier()
        start = time.perf_counter()
        opt.step(grads)
        totals.append(time.perf_counter() - start)
    totals = totals[1:]  # the first step touches every page of the state and buffers
    for name in phases:
        phases[name] = phases[name][1:]

    # The same messages with nothing around them (no pack, no sum, no
    # unpack): what MPI alone takes for this volume here.
    raw = []
    if world > 1:
        whole, part = opt._buffers()
        for _ in range(args.steps):
            comm.Barrier()
            start = time.perf_counter()
            for bucket in opt._buckets:
                counts = [0] * world
                for s in bucket:
                    counts[s.rank] += s.nbytes
                block = counts[rank]
                comm.Alltoallv([whole[:sum(counts)], (counts, np.cumsum([0] + counts[:-1]).tolist()), MPI.BYTE],
                               [part[:block * world], ([block] * world, [block * r for r in range(world)]),
                                MPI.BYTE])
                comm.Allgatherv(part[:block], [whole[:sum(counts)], (counts, np.cumsum([0] + counts[:-1]).tolist()),
                                               MPI.BYTE])
            raw.append(time.perf_counter() - start)
    else:
        raw = [0.0]

    # The local costs the model needs, per byte and per element, on one
    # rank: packing the grads into a bucket buffer (as the reduce-scatter
    # does; unpacking is the same copy) and the ordered mean of two copies.
    local = {}
    if world == 1:
        from fusedopt.distributed import _bytes, _ordered_mean
        buffer = np.empty(opt.bucket_elements * np.dtype(dtype).itemsize, np.uint8)
        flat = [g.reshape(-1) for g in grads]
        copies, sums = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            offset = 0
            for g in flat:
                for begin in range(0, g.size, opt.bucket_elements):
                    chunk = _bytes(g, begin, min(g.size, begin + opt.bucket_elements))
                    if offset + chunk.size > buffer.size:
                        offset = 0
                    buffer[offset:offset + chunk.size] = chunk
                    offset += chunk.size
            copies.append((time.perf_counter() - start) / (sum(g.nbytes for g in flat)))
            parts = [flat[0][:flat[0].size // 2], flat[0][flat[0].size // 2:2 * (flat[0].size // 2)]]
            out = np.empty_like(parts[0])
            start = time.perf_counter()
            _ordered_mean(parts, out)
            sums.append((time.perf_counter() - start) / out.size)
        local = {"copy_ns_per_byte": statistics.median(copies) * 1e9,
                 "ordered_mean_of_two_ns_per_element": statistics.median(sums) * 1e9}

    def summary(samples):
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        return {"median": statistics.median(samples), "iqr": q[2] - q[0]}

    report = {
        "rank": rank,
        "step": summary(totals),
        **{name: summary(samples) for name, samples in phases.items()},
        "raw_mpi": summary(raw),
        **local,
        "bytes_sent": opt.bytes_sent,
        "state_bytes": opt.state_bytes(),
        "shard_elements": sum(opt.layout[k].size for k in opt._my_pieces),
    }
    reports = comm.gather(report, root=0)
    if rank == 0:
        elements = sum(p.size for p in params)
        with open(args.out, "w") as file:
            json.dump({"world": world, "elements": elements, "itemsize": np.dtype(dtype).itemsize,
                       "ranks": reports}, file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,3")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--rule", default="adamw")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write every rank's numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = beside if os.path.exists(beside) else "mpiexec"
    results = []
    print(f"gpt2-small, {args.rule}, {args.dtype}, {args.steps} timed steps; one fusedopt thread per rank; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'ranks':>5} | {'step (median ± IQR)':>20} | {'reduce-scatter':>14} | {'shard step':>10} | "
          f"{'all-gather':>10} | {'MPI alone':>10} | {'MB sent/rank':>12} | {'state MB/rank (max)':>19} | "
          f"{'state MB (sum)':>14}")
    for world in map(int, args.ranks.split(",")):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [mpiexec, "-n", str(world), sys.executable, os.path.abspath(__file__), "--worker",
                       "--out", out.name, "--steps", str(args.steps), "--rule", args.rule, "--dtype", args.dtype]
            subprocess.run(command, check=True, env={**os.environ, "FUSEDOPT_NUM_THREADS": "1"})
            result = json.load(open(out.name))
        results.append(result)
        ranks = result["ranks"]

        def ms(key):
            return f"{max(r[key]['median'] for r in ranks) * 1e3:.1f} ms"

        step = ranks[0]["step"]
        print(f"{world:>5} | {step['median'] * 1e3:>10.1f} ± {step['iqr'] * 1e3:5.1f} ms | {ms('reduce_scatter'):>14} | "
              f"{ms('shard_step'):>10} | {ms('all_gather'):>10} | {ms('raw_mpi'):>10} | "
              f"{max(r['bytes_sent'] for r in ranks) / 1e6:>12.1f} | "
              f"{max(r['state_bytes'] for r in ranks) / 1e6:>19.1f} | "
              f"{sum(r['state_bytes'] for r in ranks) / 1e6:>14.1f}")
        if "copy_ns_per_byte" in ranks[0]:
            print(f"      local costs at 1 rank: copy {ranks[0]['copy_ns_per_byte']:.3f} ns/byte, ordered mean "
                  f"of two {ranks[0]['ordered_mean_of_two_ns_per_element']:.2f} ns/element, shard step "
                  f"{ranks[0]['shard_step']['median'] / result['elements'] * 1e9:.2f} ns/element")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
