"""The benchmark: the command runs and reports every implementation with
sane numbers (no timing is asserted), its baselines compute the same rule as
the reference, and its tables of rules and workloads say what they claim."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import fusedopt
from cases import CASE_IDS, CASES, all_arrays, assert_same_state, core_bytes_per_element
from fusedopt import _core
from fusedopt.bench import baselines, contention, cython_loop, rules, timing, workloads
from fusedopt.bench.precisions import PRECISIONS

FEATURES = fusedopt.cpu_features()
THREADS = sorted({1, fusedopt.get_num_threads()})

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

try:
    import importlib.metadata
    importlib.metadata.version("deepspeed")
    HAVE_DEEPSPEED = True
except importlib.metadata.PackageNotFoundError:
    HAVE_DEEPSPEED = False
HAVE_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
HAVE_TORCHAO = importlib.util.find_spec("torchao") is not None


@pytest.fixture(scope="session")
def loop_cache(tmp_path_factory):
    """One build of the Cython loop per test session, outside the user's cache."""
    directory = tmp_path_factory.mktemp("fusedopt-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUSEDOPT_CACHE_DIR", str(directory))
        patch.setattr(cython_loop, "_loaded", None)
        yield directory


def run_bench(tmp_path, *options, stderr=False, timeout=300, user_cache=False):
    env = dict(os.environ)
    if user_cache:  # the user's cache, not the session's: DeepSpeed's kernel takes minutes to build
        env.pop("FUSEDOPT_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-m", "fusedopt", "bench", "--no-progress", *options],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return (result.stdout, result.stderr) if stderr else result.stdout


def test_bench_command_reports_every_implementation(tmp_path, loop_cache):
    out = run_bench(tmp_path, "--rules", "adam", "--sizes", "0,1e3", "--models", "none", "--dtypes", "float32",
                    "--seconds", "0.01", "--min-samples", "3",
                    "--json", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "bench.png"))
    document = json.loads((tmp_path / "bench.json").read_text())

    target = FEATURES["isa"]
    expected = ([f"roof {n}t" for n in THREADS] + [f"fusedopt {target} {n}t" for n in THREADS]
                + ["numpy", "numpy tuned", "cython loop"]
                + [f"torch {kind} {max(THREADS)}t" for kind in ("for", "foreach", "fused")])
    assert document["machine"]["fusedopt"]["isa"] == target
    assert document["settings"]["headline"] == {"target": target, "threads": max(THREADS)}
    rows = document["results"]
    for workload, elements in (("0", 0), ("1e3", 1000)):
        found = {row["implementation"]: row for row in rows if row["workload"] == workload}
        assert list(found) == expected
        headline = found[f"fusedopt {target} {max(THREADS)}t"]
        assert headline["headline"] and headline["fusedopt_speedup"] == 1.0
        for label, row in found.items():
            assert (row["rule"], row["dtype"], row["elements"], row["tensors"]) == ("adam", "float32", elements, 1)
            assert row["bytes_per_element"] == 28 and row["bytes_per_step"] == 28 * elements
            if label.startswith("torch") and not HAVE_TORCH:
                assert row["skipped"] == "torch is not installed" and row["seconds"] is None
                continue
            assert row["skipped"] is None, row["skipped"]
            seconds = row["seconds"]
            assert 0 < seconds["min"] <= seconds["q1"] <= seconds["median"] <= seconds["q3"] <= seconds["max"]
            assert seconds["samples"] >= 3 and seconds["steps_per_sample"] >= 1
            if elements:
                assert row["gb_per_s"] == pytest.approx(row["bytes_per_step"] / seconds["median"] / 1e9)
            else:
                assert row["gb_per_s"] is None
            if label.startswith("roof"):
                assert row["percent_of_roof"] is None and row["fusedopt_speedup"] is None
            else:
                assert row["fusedopt_speedup"] == pytest.approx(seconds["median"] / headline["seconds"]["median"])
                if elements:
                    roof = found[f"roof {row['roof_threads']}t"]["seconds"]["median"]
                    assert row["roof_threads"] == (1 if row["threads"] == 1 else max(THREADS))
                    assert row["percent_of_roof"] == pytest.approx(100 * roof / seconds["median"])

    assert "adam: Adam(), float32, 28 bytes/element" in out  # the section table
    assert "against each peer" in out                       # the summary
    assert "contention: no busy processes started" in out
    assert document["settings"]["contention"] == {"processes": 0, "kind": "python",
                                                  "description": "no busy processes started"}
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The plot says which machine, when, and on how many threads (in its Title field as on the image).
    title = png_text(png)["Title"]
    assert FEATURES["cpu"] in title and FEATURES["version"] in title
    assert f"threads {', '.join(map(str, THREADS))} (headline {max(THREADS)})" in title
    assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d\b", title)
    assert "no busy processes started" in title


def png_text(png: bytes) -> dict[str, str]:
    """The tEXt fields of a PNG file."""
    fields, offset = {}, 8
    while offset < len(png):
        length = int.from_bytes(png[offset:offset + 4], "big")
        kind, data = png[offset + 4:offset + 8], png[offset + 8:offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = data.partition(b"\0")
            fields[key.decode("latin-1")] = value.decode("latin-1")
        offset += 12 + length
    return fields


def test_a_stale_deepspeed_build_lock_is_named_not_waited_for(tmp_path):
    """torch's extension build waits on its lock file without a timeout; a
    build killed midway leaves it behind, and the bench would hang on it."""
    from fusedopt.bench.implementations import STALE_LOCK_SECONDS, stale_build_lock
    assert stale_build_lock(str(tmp_path)) is None  # no lock
    lock = tmp_path / "lock"
    lock.write_text("")
    now = lock.stat().st_mtime
    assert stale_build_lock(str(tmp_path), now=now + 60) is None  # a build running now
    assert stale_build_lock(str(tmp_path), now=now + STALE_LOCK_SECONDS + 1) == str(lock)


def test_deepspeed_is_a_peer_when_asked_for(tmp_path):
    """--impls deepspeed: DeepSpeedCPUAdam on Adam and AdamW in the precision
    modes it has (float32; bfloat16 with its state in bfloat16 or float32), a
    note for what it cannot run, and a note (not a failure) when it is not
    installed."""
    out = run_bench(tmp_path, "--rules", "adam,adamw,sgd", "--sizes", "1e3", "--models", "none",
                    "--dtypes", "float32,float64,bfloat16", "--impls", "fusedopt,deepspeed", "--threads", "1",
                    "--seconds", "0.01", "--min-samples", "3", "--json", str(tmp_path / "bench.json"),
                    timeout=1800, user_cache=True)  # DeepSpeed's first use builds its kernel: minutes
    assert "DeepSpeed builds its CPU Adam on first use with -march=native" in out
    rows = {(row["rule"], row["precision"]): row for row in json.loads((tmp_path / "bench.json").read_text())["results"]
            if row["family"] == "deepspeed"}
    precisions = ["float32", "float64", "bfloat16", "bfloat16+fp32-state", "bfloat16+master", "bfloat16+kahan",
                  "bfloat16+stochastic", "bfloat16+8bit"]
    assert set(rows) == {(rule, precision) for rule in ("adam", "adamw", "sgd") for precision in precisions}
    runs = ("float32", "bfloat16", "bfloat16+fp32-state")
    for (rule, precision), row in rows.items():
        if not HAVE_DEEPSPEED:
            assert row["skipped"].startswith("deepspeed is not installed (pip install 'fusedopt[peers]')")
        elif rule == "sgd":
            assert row["skipped"] == "DeepSpeed's CPU optimizer is Adam and AdamW only, not SGD(lr=0.001)"
        elif precision not in runs:
            assert row["skipped"] == (f"DeepSpeedCPUAdam steps float32, bfloat16, float16, bfloat16+fp32-state, "
                                      f"float16+fp32-state, not {precision}")
        else:
            assert row["skipped"] is None and row["seconds"]["median"] > 0
    assert "vs deepspeed" in out


@pytest.mark.parametrize("peer, installed, rules, size, missing", [
    ("bitsandbytes", HAVE_BITSANDBYTES, ("adamw", "lion", "adadelta"), "1e4", {"adadelta": "Adadelta()"}),
    # torchao keeps 32-bit state where its block of 256 does not divide the size.
    ("torchao", HAVE_TORCHAO, ("adamw", "lion"), "8192", {"lion": "Lion()"}),
])
def test_an_8bit_library_is_a_peer_when_asked_for(tmp_path, peer, installed, rules, size, missing):
    """--impls bitsandbytes or torchao: its 8-bit optimizers on the 8-bit
    modes only, a note for the rest (a rule it lacks, a mode it lacks), and
    a note (not a failure) when it is not installed."""
    run_bench(tmp_path, "--rules", ",".join(rules), "--sizes", size, "--models", "none",
              "--dtypes", "float32,float32+8bit,bfloat16+8bit", "--impls", f"fusedopt,{peer}", "--threads", "1",
              "--seconds", "0.01", "--min-samples", "3", "--json", str(tmp_path / "bench.json"), timeout=600)
    rows = {(row["rule"], row["precision"]): row for row in json.loads((tmp_path / "bench.json").read_text())["results"]
            if row["family"] == peer}
    assert set(rows) == {(rule, precision) for rule in rules
                         for precision in ("float32", "float32+8bit", "bfloat16+8bit")}
    for (rule, precision), row in rows.items():
        if not installed:
            assert row["skipped"] == f"{peer} is not installed (pip install 'fusedopt[peers]')"
        elif rule in missing:
            assert row["skipped"] == f"{peer} has no 8-bit {missing[rule]}"
        elif precision == "float32":
            assert row["skipped"] == f"{peer}'s 8-bit optimizers keep 8-bit state, not float32's"
        else:
            assert row["skipped"] is None and row["seconds"]["median"] > 0
            codes = 2 * (2 if rule == "adamw" else 1)  # each state array's codes read and written
            assert row["bytes_per_element"] == (12 if precision == "float32+8bit" else 6) + codes


def test_precision_modes_are_workloads_with_their_peers(tmp_path):
    """--dtypes bfloat16: every bfloat16 mode, each with its bytes per element
    and its roof; torch runs the mode it has (state in bfloat16, round to
    nearest) on tensors sharing the arrays' memory, and is not run in the others."""
    run_bench(tmp_path, "--rules", "adam", "--sizes", "1e3", "--models", "none", "--dtypes", "bfloat16,float16+master",
              "--impls", "roof,fusedopt,numpy,torch-fused", "--threads", "1", "--seconds", "0.01",
              "--min-samples", "3", "--json", str(tmp_path / "bench.json"))
    document = json.loads((tmp_path / "bench.json").read_text())
    rows = {(row["precision"], row["family"]): row for row in document["results"]}
    bytes_per_element = {"bfloat16": 14, "bfloat16+fp32-state": 22, "bfloat16+master": 28, "bfloat16+kahan": 18,
                         "bfloat16+stochastic": 14, "bfloat16+8bit": 10, "float16+master": 28}
    assert list(document["settings"]["precisions"]) == list(bytes_per_element)
    for (precision, family), row in rows.items():
        assert row["bytes_per_element"] == bytes_per_element[precision] and row["tensors"] == 1
        assert row["dtype"] == precision.split("+")[0]
        if family == "torch fused" and precision != "bfloat16":
            assert row["skipped"].startswith("torch.optim keeps state in the param's dtype"), row["skipped"]
        else:
            assert row["skipped"] is None and row["seconds"]["median"] > 0, (precision, family, row["skipped"])
        if family in ("fusedopt", "numpy", "torch fused") and row["skipped"] is None:
            assert row["percent_of_roof"] > 0


def test_rounds_measure_a_rows_implementations_in_turns(tmp_path):
    """--rounds 3: every implementation of a row is timed in each of three
    rounds (its samples pooled), and the header and the JSON say so."""
    out = run_bench(tmp_path, "--rules", "adam", "--sizes", "1e3", "--models", "none", "--dtypes", "float32,bfloat16",
                    "--impls", "roof,fusedopt,numpy", "--threads", "1", "--seconds", "0.03", "--min-samples", "6",
                    "--rounds", "3", "--json", str(tmp_path / "bench.json"))
    assert "measured in turns: 3 rounds of 0.01 s each" in out
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["settings"]["rounds"] == 3
    measured = [row for row in document["results"] if row["skipped"] is None]
    assert {row["family"] for row in measured} == {"roof", "fusedopt", "numpy"}
    assert all(row["seconds"]["samples"] >= 6 and row["seconds"]["median"] > 0 for row in measured)


def test_measure_in_turns_samples_every_step_in_every_round():
    """Steps slower than a sample's minimum (one step per sample): each is
    warmed up and calibrated, then every round takes its share of each in
    turn, and the samples of all rounds are pooled."""
    order: list[str] = []

    def step(name):
        def run():
            order.append(name)
            time.sleep(2 * timing.MIN_SAMPLE_SECONDS)
        return run

    timings = timing.measure_in_turns([step("a"), step("b")], rounds=4, seconds=0.0, min_samples=8)
    assert "".join(order) == "aa" + "bb" + "aabb" * 4  # warm-up and calibration, then 2 samples each per round
    assert [t.samples for t in timings] == [9, 9] and [t.steps_per_sample for t in timings] == [1, 1]


@pytest.mark.parametrize("kind", ["python", "fusedopt"])
def test_bench_runs_beside_busy_processes_and_says_so(tmp_path, kind):
    out = run_bench(tmp_path, "--rules", "adam", "--sizes", "1e5", "--models", "none", "--dtypes", "float32",
                    "--impls", "fusedopt", "--seconds", "0.01", "--min-samples", "3",
                    "--contention", "2", "--contention-kind", kind, "--json", str(tmp_path / "bench.json"))
    document = json.loads((tmp_path / "bench.json").read_text())
    description = f"2 busy processes beside it ({contention.KINDS[kind]})"
    assert document["settings"]["contention"] == {"processes": 2, "kind": kind, "description": description}
    assert f"contention: {description}" in out
    assert all(row["seconds"] for row in document["results"])


@pytest.mark.parametrize("kind", ["python", "fusedopt"])
def test_busy_processes_are_busy_and_stop_with_the_block(kind):
    with contention.busy_processes(2, kind) as processes:
        assert len(processes) == 2
        time.sleep(0.3)
        for process in processes:
            assert process.poll() is None
            with open(f"/proc/{process.pid}/stat") as stat:  # utime + stime, in clock ticks
                fields = stat.read().rsplit(")", 1)[1].split()
            assert int(fields[11]) + int(fields[12]) > 0
    assert all(process.poll() is not None for process in processes)
    with pytest.raises(ValueError, match="kind must be one of python, fusedopt"):
        with contention.busy_processes(1, "java"):
            pass


def test_the_bench_warns_of_nothing(tmp_path):
    """Centered RMSprop with one gradient forever drives v - gbar^2 to a rounding
    error, half the time negative: NumPy warned of a sqrt of a negative (NaN
    params in every implementation). The bench alternates that rule's grads
    with their negatives."""
    _, err = run_bench(tmp_path, "--rules", "rmsprop_centered_momentum", "--sizes", "1e3", "--models", "none",
                       "--dtypes", "float32", "--impls", "numpy,numpy-tuned", "--threads", "1",
                       "--seconds", "0.2", "--min-samples", "3000", stderr=True)
    assert "Warning" not in err, err


def test_centered_rmsprop_stays_finite_on_the_bench_grads():
    rule = rules.rule_named("rmsprop_centered_momentum")
    params, grads = workloads.make_arrays(workloads.single_tensor(1000), np.float32)
    sets = workloads.grad_sets(rule, grads)
    assert len(sets) == 2 and np.array_equal(sets[1][0], -grads[0])
    optimizer = fusedopt.RMSprop(params, **rule.kwargs)
    for step in range(5000):
        optimizer.step(sets[step % 2])
    assert np.isfinite(params[0]).all()
    assert workloads.grad_sets(rules.rule_named("adam"), grads) == [grads]  # no copy where none is needed


def test_benchmark_suite_records_target_and_threads(tmp_path, loop_cache):
    """benchmarks/ runs under pytest-benchmark and says what it ran on."""
    suite = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    report = tmp_path / "suite.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider",
         "--fusedopt-bench=--rules sgd --sizes 1e3 --models none --dtypes float32 --impls roof,numpy",
         "--benchmark-max-time=0.001", "--benchmark-min-rounds=1", f"--benchmark-json={report}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    recorded = document["machine_info"]["fusedopt"]
    assert recorded["target"] == FEATURES["isa"] and recorded["thread_counts_benchmarked"] == THREADS
    names = sorted(b["extra_info"]["implementation"] for b in document["benchmarks"])
    assert names == sorted([f"roof {n}t" for n in THREADS] + [f"fusedopt {FEATURES['isa']} {n}t" for n in THREADS]
                           + ["numpy"])
    assert {b["group"] for b in document["benchmarks"]} == {"sgd float32 1e3"}


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("baseline", ["cython loop", "numpy tuned"])
def test_baselines_compute_the_reference_rule(loop_cache, dtype, rng, baseline, name, kwargs):
    """The plain loop and tuned NumPy are the same rule: params and every
    state array equal the reference's after each step, element by element."""
    make = cython_loop.cython_class if baseline == "cython loop" else baselines.tuned_numpy_class
    shapes = [(0,), (1,), (7,), (17,), (1000,), (3, 5, 7)]
    params = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    ours = make(name)([p.copy() for p in params], **kwargs)
    ref = getattr(fusedopt.reference, name)([p.copy() for p in params], **kwargs)
    for step in range(1, 6):
        grads = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        ours.step(grads)
        ref.step(grads)
        assert_same_state(ours, ref, dtype, step)


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("baseline", ["cython loop", "numpy tuned"])
def test_baselines_agree_on_special_values(loop_cache, baseline, name, kwargs):
    """Zeros of both signs, infinities and NaN go through the baselines as
    through the reference: sign(-0.0) is +0, a max with NaN is NaN, ..."""
    make = cython_loop.cython_class if baseline == "cython loop" else baselines.tuned_numpy_class
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5])
    params = [np.array([0.0, -0.0, 1.0, -1.0, 0.0, -0.0, 2.0, -2.0])]
    ours = make(name)([p.copy() for p in params], **kwargs)
    ref = getattr(fusedopt.reference, name)([p.copy() for p in params], **kwargs)
    with np.errstate(all="ignore"):
        for step, grad in enumerate([np.zeros(8), -np.zeros(8), np.roll(special, 1), special], start=1):
            ours.step([grad])
            ref.step([grad])
            assert_same_state(ours, ref, np.float64, step)
            for label, value in all_arrays(ref).items():  # == does not tell -0.0 from +0.0
                if isinstance(value, np.ndarray):
                    zeros = value == 0  # (a NaN's sign means nothing: not compared)
                    got = all_arrays(ours)[label][zeros]
                    assert np.array_equal(np.signbit(got), np.signbit(value[zeros])), label


def test_every_rule_is_benchmarked_with_every_baseline():
    """Each optimizer of the package has a bench rule, a tuned NumPy update and a Cython loop."""
    optimizers = [name for name in fusedopt.__all__
                  if isinstance(getattr(fusedopt, name), type) and issubclass(getattr(fusedopt, name), fusedopt.Optimizer)
                  and name != "Optimizer" and name not in fusedopt.optimizers.EIGHT_BIT]
    benchmarked = {rule.optimizer for rule in rules.RULES}
    assert set(optimizers) <= benchmarked, f"no bench rule for {set(optimizers) - benchmarked}"
    for name in optimizers:
        assert baselines.tuned_numpy_class(name) is not None, f"no tuned NumPy update for {name}"
        assert cython_loop.cython_class(name) is not None, f"no Cython loop for {name}"


def test_minimal_traffic_per_rule():
    """Bytes per element: every stream read once, all but the grad written once."""
    expected = {"momentum": 20, "sgd": 12, "sgd_momentum": 20, "adadelta": 28, "adam": 28, "adamw": 28,
                "rmsprop": 20, "rmsprop_centered_momentum": 36, "adagrad": 20, "nadam": 28, "radam": 28,
                "adamax": 28, "lion": 20}
    assert [rule.key for rule in rules.RULES] == list(expected)
    for rule in rules.RULES:
        assert rule.bytes_per_element(np.float32) == expected[rule.key], rule.key
        assert rule.bytes_per_element(np.float64) == 2 * expected[rule.key], rule.key
    assert rules.rule_named("rmsprop_centered_momentum").state_keys == ["square_avg", "momentum_buffer", "grad_avg"]
    assert rules.rule_named("nadam").state_keys == ["exp_avg", "exp_avg_sq"]  # mu_product is a scalar


@pytest.mark.parametrize("precision", list(PRECISIONS.values()), ids=list(PRECISIONS))
def test_roof_covers_every_rule_in_every_precision(precision):
    """The roof kernel has each rule's streams in each mode's widths: no
    rule is left without its roof. The float roof adds g to w as floats, the
    roof of mixed widths as unsigned integers of w's width; with master
    weights the param is only written (the sum of what was read, g)."""
    from fusedopt.bench import implementations
    roof = implementations.make("roof", 1, FEATURES["isa"])
    for rule in rules.RULES:
        assert roof.unavailable(rule) is None, rule.key
        param = np.ones(300, np.float32).astype(precision.numpy_dtype)
        grad = np.full(300, 2.0, np.float32).astype(precision.numpy_dtype)
        start = param.copy()
        with roof.prepared(rule, precision, [param], [[grad]]) as step:
            step()
        if precision.is_wide:
            want = start + grad
        else:
            width = f"u{param.itemsize}"
            want = grad.view(width) if precision.options.get("master_weights") else start.view(width) + grad.view(width)
            param = param.view(width)
        np.testing.assert_array_equal(param, want, err_msg=f"{rule.key} {precision.name}")


@pytest.mark.parametrize("precision", list(PRECISIONS.values()), ids=list(PRECISIONS))
def test_bytes_per_element_are_the_cores_count(precision):
    """The bench's traffic per mode is what the core counts for its serial cutoff."""
    for rule in rules.RULES:
        want = core_bytes_per_element(rule.optimizer, dict(rule.kwargs), precision.numpy_dtype, dict(precision.options))
        assert precision.bytes_per_element(rule) == want, rule.key


def test_bytes_roof_sums_and_refuses_bad_arrays():
    updated = [np.full(1000, 7, np.uint8), np.full(1000, 1, np.uint32)]
    read = [np.full(1000, 3, np.uint16), np.full(1000, 2, np.uint64)]
    stored = [np.zeros(1000, np.uint16)]
    _core.bytes_roof([(updated, read, stored)])
    assert (updated[0] == 12).all() and (updated[1] == 6).all() and (stored[0] == 5).all()
    bad = [
        (([np.zeros(3, np.uint8)], [np.zeros(4, np.uint8)], []), ValueError, "one size"),
        (([np.zeros(3, np.uint8)], [], []), ValueError, "reads at least one"),
        (([np.zeros(3, np.uint8)[::-1]], [np.zeros(3, np.uint8)], []), ValueError, "C-contiguous"),
        (([np.zeros(3, np.complex128)], [np.zeros(3, np.uint8)], []), ValueError, "1, 2, 4 or 8 bytes"),
        (([np.zeros(3, np.uint8)] * 6, [np.zeros(3, np.uint8)], []), ValueError, "at most"),
        (([[1, 2, 3]], [np.zeros(3, np.uint8)], []), TypeError, "NumPy arrays"),
        (([np.zeros(3, np.uint8)], [np.zeros(3, np.uint8)]), ValueError, "three lists"),
    ]
    read_only = np.zeros(3, np.uint8)
    read_only.flags.writeable = False
    bad.append((([read_only], [np.zeros(3, np.uint8)], []), ValueError, "writeable"))
    for tensor, error, message in bad:
        with pytest.raises(error, match=message):
            _core.bytes_roof([tensor])


def test_rules_chosen_by_the_command_line():
    """All rules by default, a few with --quick, and --rules wins over both."""
    import argparse
    from fusedopt.bench import cli
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)

    def chosen(*options):
        return [rule.key for rule in cli.settings_from(parser.parse_args(options)).rules]

    assert chosen() == [rule.key for rule in rules.RULES]
    assert chosen("--quick") == rules.QUICK_RULES == ["sgd_momentum", "adadelta", "adam", "rmsprop_centered_momentum"]
    assert chosen("--quick", "--rules", "lion,adam") == ["lion", "adam"]
    assert chosen("--rules", "all") == [rule.key for rule in rules.RULES]


@pytest.mark.parametrize("baseline", ["cython loop", "numpy tuned"])
def test_baselines_honour_nonfinite(loop_cache, baseline):
    """A grad with a NaN: "skip" changes nothing and returns False, "raise" names the grad."""
    make = cython_loop.cython_class if baseline == "cython loop" else baselines.tuned_numpy_class
    params = [np.ones(4), np.ones(3)]
    grads = [np.ones(4), np.array([1.0, np.nan, 1.0])]
    skipping = make("Adam")([p.copy() for p in params], nonfinite="skip")
    assert skipping.step(grads) is False and skipping.skipped_steps == 1
    assert all(np.array_equal(p, q) for p, q in zip(skipping.param_groups[0]["params"], params))
    assert [s["step"] for s in skipping.state] == [0, 0]
    raising = make("Adam")([p.copy() for p in params], nonfinite="raise")
    with pytest.raises(fusedopt.NonFiniteGradError) as caught:
        raising.step(grads)
    assert caught.value.index == 1
    assert make("Adam")([p.copy() for p in params]).step([np.ones(4), np.ones(3)]) is True


def test_workloads():
    resnet, gpt2, model = workloads.resnet18(), workloads.gpt2_small(), workloads.model200()
    assert (resnet.tensors, resnet.elements) == (62, 11_689_512)       # torchvision's count
    assert (gpt2.tensors, gpt2.elements) == (148, 124_439_808)         # GPT-2 small's count
    sizes = [shape[0] for shape in model.shapes]
    assert len(sizes) == 200 and 100 <= min(sizes) and max(sizes) <= 1_000_000
    assert workloads.model200().shapes == model.shapes                 # fixed seed
    assert [workloads.size_label(n) for n in (0, 1000, 30_000_000, 123)] == ["0", "1e3", "3e7", "123"]
    params, grads = workloads.make_arrays(resnet, np.float32)
    assert [p.shape for p in params] == list(resnet.shapes) == [g.shape for g in grads]
    assert all(p.dtype == np.float32 and p.flags.c_contiguous for p in params)


@pytest.mark.parametrize("option", ["--json", "--plot", "--markdown"])
def test_an_output_in_a_missing_folder_is_refused_before_anything_is_measured(tmp_path, option):
    """The check runs first: the command ends at once, having measured nothing."""
    missing = tmp_path / "no_such_folder" / "out"
    result = subprocess.run([sys.executable, "-m", "fusedopt", "bench", "--no-progress", "--rules", "adam",
                             "--sizes", "1e3", "--models", "none", option, str(missing)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert f"bench: {option} {missing}: the folder {missing.parent} does not exist" in result.stderr
    assert "adam:" not in result.stdout  # no table: nothing was measured
