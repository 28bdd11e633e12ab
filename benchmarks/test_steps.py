"""One optimizer step of each implementation on each (rule, precision, workload),
as a pytest-benchmark suite: the measurements of ``python -m fusedopt bench``
with pytest-benchmark's timing, comparison and storage.

Grouped by rule, precision and workload, so each group compares fusedopt, the
roof and the peers on the same arrays. ``extra_info`` records the
implementation, its threads and SIMD target, the minimal traffic and GB/s.
"""

from __future__ import annotations

from fusedopt.bench.workloads import grad_sets, make_arrays

_arrays_cache: dict = {}


def _arrays(workload, dtype, seed):
    """The cases run workload by workload: keep the last workload's arrays only."""
    key = (workload.name, dtype.name, seed)
    if key not in _arrays_cache:
        _arrays_cache.clear()
        _arrays_cache[key] = make_arrays(workload, dtype, seed)
    return _arrays_cache[key]


def test_step(benchmark, case, request):
    rule, precision, workload, impl = case
    settings = request.config._fusedopt_bench_settings
    params, grads = _arrays(workload, precision.numpy_dtype, settings.seed)
    traffic = workload.elements * precision.bytes_per_element(rule)
    benchmark.group = f"{rule.key} {precision.name} {workload.name}"
    benchmark.extra_info.update(
        rule=rule.describe(), precision=precision.name, dtype=precision.dtype, workload=workload.name,
        elements=workload.elements, implementation=impl.label, target=impl.target, threads=impl.threads,
        bytes_per_step=traffic,
    )
    with impl.prepared(rule, precision, [p.copy() for p in params], grad_sets(rule, grads)) as step:
        for _ in range(2):  # warm up: every page touched, torch's lazy state made
            step()
        benchmark(step)
    stats = getattr(benchmark.stats, "stats", None)  # None with --benchmark-disable
    if stats is not None and stats.median > 0 and traffic:
        benchmark.extra_info["gb_per_s"] = traffic / stats.median / 1e9
