"""The benchmark suite's configuration: which cases run, and what the
machine info records.

    python -m pytest benchmarks                       # all rules, float32/64, 1e3 1e5 1e7, models
    python -m pytest benchmarks --fusedopt-bench="--quick"
    python -m pytest benchmarks --fusedopt-bench="--rules adam --sizes 1e3,1e6 --models none"

``--fusedopt-bench`` takes the options of ``python -m fusedopt bench``, so
both measure the same things the same way; pytest-benchmark does the timing.
"""

from __future__ import annotations

import argparse
import shlex


import fusedopt
from fusedopt.bench import cli

DEFAULT = "--sizes 1e3,1e5,1e7 --models model200,resnet18"


def pytest_addoption(parser):
    parser.getgroup("fusedopt").addoption(
        "--fusedopt-bench", default=DEFAULT, metavar="OPTIONS",
        help=f"options of `python -m fusedopt bench` choosing the cases (default: {DEFAULT!r})")


def bench_settings(config):
    parser = argparse.ArgumentParser(prog="--fusedopt-bench")
    cli.add_arguments(parser)
    return cli.settings_from(parser.parse_args(shlex.split(config.getoption("--fusedopt-bench"))))


def pytest_configure(config):
    config._fusedopt_bench_settings = bench_settings(config)


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config._fusedopt_bench_settings
    cases, ids = [], []
    for precision in settings.precisions:
        for workload in settings.workloads:
            for rule in settings.rules:
                for impl in settings.implementations():
                    # e.g. torch has no fused Adadelta, nor float32 state for bfloat16 params: no case
                    if impl.unavailable(rule) is None and impl.refuses(precision) is None:
                        cases.append((rule, precision, workload, impl))
                        ids.append(f"{rule.key}-{precision.name}-{workload.name}-{impl.label.replace(' ', '_')}")
    metafunc.parametrize("case", cases, ids=ids)


def pytest_benchmark_update_machine_info(config, machine_info):
    settings = config._fusedopt_bench_settings
    features = fusedopt.cpu_features()
    machine_info["fusedopt"] = {
        "version": features["version"],
        "target": features["isa"],
        "targets_benchmarked": settings.targets,
        "supported_targets": features["supported_targets"],
        "num_threads": fusedopt.get_num_threads(),
        "thread_counts_benchmarked": settings.threads,
        "serial_cutoff_bytes": features["serial_cutoff_bytes"],
        "openmp": features["openmp"],
        "compiler": features["compiler"],
    }
