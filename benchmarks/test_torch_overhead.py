"""The cost of a step through ``fusedopt.torch`` as a pytest-benchmark case:
the cases of ``benchmarks/torch_overhead.py`` (AdamW, float32, tensors of
1000 elements, 2 threads) with pytest-benchmark's timing and comparison.

    python -m pytest benchmarks/test_torch_overhead.py
    python -m pytest benchmarks/test_torch_overhead.py --benchmark-compare   # against a saved run

Each group compares fusedopt.torch with the NumPy API on the same memory
(the floor: the adapter's overhead is the difference), torch's fused AdamW
and DeepSpeed's CPU Adam (when importable) at one count of tensors. The
cases belong to the ``adamw`` rule: a ``--fusedopt-bench`` choosing other
rules (``--rules sgd``) leaves them out, as it leaves out AdamW's others.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="fusedopt.torch needs torch (pip install 'fusedopt[torch]')")

import torch_overhead  # noqa: E402  (benchmarks/ is on sys.path: pytest's rootdir-relative import)

THREADS = 2


COUNTS = [1, 10, 100, 400]


def pytest_generate_tests(metafunc):
    chosen = {rule.key for rule in metafunc.config._fusedopt_bench_settings.rules}
    cases = [(name, count) for name in torch_overhead.IMPLEMENTATIONS for count in COUNTS] if "adamw" in chosen else []
    metafunc.parametrize("name, count", cases, ids=[f"{name.replace(' ', '_')}-{count}" for name, count in cases])


def test_torch_adapter_step(benchmark, name, count):
    if name == "DeepSpeed CPU Adam" and (why := torch_overhead.deepspeed_unavailable()) is not None:
        pytest.skip(f"DeepSpeed CPU Adam is not importable here: {why}")
    previous = torch_overhead.set_threads(THREADS)
    try:
        step = torch_overhead.stepper(name, torch_overhead.make_params(count, torch_overhead.SIZE))
        step()  # lazy state made
        benchmark.group = f"AdamW float32, {count} tensors of {torch_overhead.SIZE}, {THREADS} threads"
        benchmark.extra_info.update(implementation=name, tensors=count, elements=torch_overhead.SIZE,
                                    threads=THREADS)
        benchmark(step)
    finally:
        torch_overhead.set_threads(previous)
