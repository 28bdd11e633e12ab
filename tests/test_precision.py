"""Low precision (docs/precision.md): bfloat16 and float16 params, state
dtypes, master weights, Kahan summation, stochastic rounding and loss
scaling, every rule against the NumPy reference bit for bit, and each mode
against what it promises."""

import copy

import numpy as np
import pytest
import torch

import fusedopt
from fusedopt import _core, reference
from fusedopt.precision import bfloat16
from fusedopt.rule import RULES
from cases import (CASE_IDS, CASES, FULL_STATE_CASE_IDS, FULL_STATE_CASES, PRECISION_IDS, PRECISIONS, FLOAT16,
                   FLOAT32, all_arrays, assert_same_bits, bits, default_lr, on_target,
                   core_bytes_per_element, resume_and_uninterrupted)
from conftest import SUPPORTED_TARGETS

SIXTEEN_BIT = [bfloat16, FLOAT16]
SIXTEEN_BIT_IDS = ["bfloat16", "float16"]

# The (target, thread count) pairs a step is checked on. Every case runs on
# every target on one thread; one case per rule (the one with every state
# array) also on two threads, with the serial cutoff at 0 so that two threads
# split even small steps (every_team_split: one piece per thread, and
# chunked), and a tensor of 1e5 elements between them. (A two-thread step of these small arrays costs ~16 ms on this
# shared 2-core machine, against ~15 us on one: the threads wait for a core.)
ONE_THREAD = [(target, 1) for target in SUPPORTED_TARGETS]
EVERY_THREAD_COUNT = [(target, threads) for target in SUPPORTED_TARGETS for threads in (1, 2)]


def step_on(opt, run, grads, grad_scale=None):
    target, threads = run
    with on_target(target), fusedopt.threads(threads):
        return opt.step(grads, grad_scale=grad_scale)


def split_in_two_groups(params, name, kwargs):
    """Two groups, the second at half the lr: every param knows its group."""
    half = len(params) // 2
    return [{"params": params[:half]}, {"params": params[half:], "lr": 0.5 * default_lr(name, kwargs)}]


def lockstep_against_reference(name, kwargs, precision, sizes, steps, seed, runs):
    """The reference and one fused optimizer per (target, threads) from the
    same start, stepped with the same grads, compared bit for bit after every
    step; after the first, every element of every param must have moved (a
    kernel that updates only part of a tensor, as torch 2.13's fused SGD on
    16-bit tensors, cannot hide behind elements that should stay put)."""
    rng = np.random.default_rng(seed)
    start = precision.params(rng, sizes)
    options = {**kwargs, **precision.kwargs(name)}
    ref = getattr(reference, name)(split_in_two_groups([p.copy() for p in start], name, kwargs), **options)
    fused = {run: getattr(fusedopt, name)(split_in_two_groups([p.copy() for p in start], name, kwargs), **options)
             for run in runs}
    for step in range(1, steps + 1):
        grads = precision.grads(rng, sizes)
        ref.step(grads, grad_scale=precision.grad_scale)
        for run, opt in fused.items():
            step_on(opt, run, grads, precision.grad_scale)
            assert_same_bits(opt, ref, f"{run[0]}, {run[1]} threads, after step {step}")
        if step == 1:
            moved = [p for g in ref.param_groups for p in g["params"]]
            for i, (before, after) in enumerate(zip(start, moved)):
                still = np.flatnonzero(bits(before) == bits(after))
                assert still.size == 0, f"params[{i}]: {still.size} of {before.size} elements did not move"


# Late in a run sqrt(1 - beta2^t) rounds to 1 in float32 (from t of about
# 16,600 with beta2 = 0.999), where the one-pass kernels skip the division
# by it: x / 1 is x.
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if not p.name.endswith("8bit")],
                         ids=[i for p, i in zip(PRECISIONS, PRECISION_IDS) if not p.name.endswith("8bit")])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("step_count", [16_000, 20_000, 1_000_000])
def test_late_steps_are_the_reference_bitwise(name, precision, step_count):
    rng = np.random.default_rng(4)
    start = precision.params(rng, REFERENCE_SIZES)
    options = precision.kwargs(name)
    ref = getattr(reference, name)([p.copy() for p in start], **options)
    fused = {run: getattr(fusedopt, name)([p.copy() for p in start], **options) for run in ONE_THREAD}
    for step in range(3):
        grads = precision.grads(rng, REFERENCE_SIZES)
        if step == 1:  # the first step made the state; now the run is long under way
            for opt in (ref, *fused.values()):
                for entry in opt.state:
                    entry["step"] = step_count
        ref.step(grads)
        for run, opt in fused.items():
            step_on(opt, run, grads)
            assert_same_bits(opt, ref, f"{run[0]}, after step {step_count + step - 1}")


# ---------------------------------------------------------------- the reference

REFERENCE_SIZES = [0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 65, 257, 1000]  # around every vector width and a tile
REFERENCE_STEPS = 6  # RAdam's default betas rectify from step 6


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_every_case_in_every_precision_is_the_reference_bitwise(name, kwargs, precision):
    """Every rule case, every precision, every target; params and every state
    array, every step."""
    lockstep_against_reference(name, kwargs, precision, REFERENCE_SIZES, REFERENCE_STEPS, seed=11, runs=ONE_THREAD)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_two_threads_and_a_large_array_are_the_reference_bitwise(every_team_split, name, kwargs, precision):
    """Every rule with all its state arrays, every precision, every target, 1
    and 2 threads; the small sizes and 1e5 elements (hundreds of tiles, cut
    between the threads inside the tensor)."""
    lockstep_against_reference(name, kwargs, precision, [*REFERENCE_SIZES, 100_003], steps=3, seed=12,
                               runs=EVERY_THREAD_COUNT)


# The 16-bit modes a step converts in 16-element SIMD blocks with a scalar
# redo of a block that holds a NaN (csrc/kernels.cpp, the bulk conversions),
# Kahan summation's compensated store and stochastic rounding among them.
NEAREST_PRECISIONS = [p for p in PRECISIONS if p.name in
                      ("bfloat16", "float16", "bfloat16-state-float32", "float16-state-float32")]
VECTOR_STORE_PRECISIONS = NEAREST_PRECISIONS + [p for p in PRECISIONS if p.name in
                                                ("bfloat16-kahan", "float16-kahan",
                                                 "bfloat16-stochastic", "float16-stochastic")]

# (where, element, raw 16-bit pattern) for each dtype: a signalling NaN with a
# payload, a negative quiet NaN with a payload, infinities, the smallest
# subnormal; each alone in its SIMD vector's lane, at the start, the middle
# and the end of a vector, and in the scalar tail.
SPECIAL_LANES = {
    "bfloat16": [("param", 5, 0x7F81), ("grad", 9, 0xFFC1), ("grad", 16, 0x7F80), ("param", 23, 0xFF80),
                 ("param", 31, 0x0001), ("grad", 32, 0x7FA5)],
    "float16": [("param", 5, 0x7C01), ("grad", 9, 0xFE01), ("grad", 16, 0x7C00), ("param", 23, 0xFC00),
                ("param", 31, 0x0001), ("grad", 32, 0x7D55)],
}
# With float32 state a NaN's payload survives in the state while the 16-bit
# param keeps only its sign; when two different NaNs meet in one operation,
# which one x86 returns depends on the operand order the compiler picked (on
# main the SGD step differs from NumPy there). So the NaNs of those
# modes are the one NaN x86 makes itself (inf - inf), sign bit set.
DEFAULT_NAN = {"bfloat16": 0xFFC0, "float16": 0xFE00}


def special_lanes(precision):
    dtype = np.dtype(precision.dtype).name
    if "state_dtype" not in precision.options:
        return SPECIAL_LANES[dtype]
    exponent = 0x7F80 if dtype == "bfloat16" else 0x7C00
    is_nan = lambda pattern: pattern & exponent == exponent and pattern & ~exponent & 0x7FFF
    return [(where, i, DEFAULT_NAN[dtype] if is_nan(pattern) else pattern)
            for where, i, pattern in SPECIAL_LANES[dtype]]


@pytest.mark.parametrize("precision", VECTOR_STORE_PRECISIONS, ids=[p.name for p in VECTOR_STORE_PRECISIONS])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_a_nan_or_an_inf_in_one_lane_of_a_16bit_step_is_the_reference_bitwise(name, kwargs, precision):
    """NaNs with payloads (signalling ones included), infinities and a
    subnormal, one per SIMD lane, in params and grads of 33 elements (two
    AVX-512 vectors and a tail), every target: params and state as the
    reference, bit for bit, and the other lanes finite."""
    rng = np.random.default_rng(13)
    sizes = [33, 40]
    start = precision.params(rng, sizes)
    specials = special_lanes(precision)
    for where, i, pattern in specials:
        if where == "param":
            bits(start[0])[i] = pattern
    options = {**kwargs, **precision.kwargs(name)}
    ref = getattr(reference, name)([p.copy() for p in start], **options)
    fused = {run: getattr(fusedopt, name)([p.copy() for p in start], **options) for run in ONE_THREAD}
    # A NaN and an infinity in every state array too (as a checkpoint may hold
    # them), in lanes of their own, from the second step on.
    in_state = [i for i in range(sizes[0]) if i not in {lane for _, lane, _ in specials}][-2:]
    for step in range(1, 4):
        grads = precision.grads(rng, sizes)
        for where, i, pattern in specials:
            if where == "grad":
                bits(grads[0])[i] = pattern
        if step == 2:
            for opt in (ref, *fused.values()):
                for value in opt.state[0].values():
                    if isinstance(value, np.ndarray) and value.shape == start[0].shape and value.dtype.kind != "u":
                        value[in_state[0]], value[in_state[1]] = np.nan, -np.inf
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN and inf are the point
            ref.step(grads)
        for run, opt in fused.items():
            step_on(opt, run, grads)
            assert_same_bits(opt, ref, f"{run[0]}, after step {step}")
    special = [i for _, i, pattern in specials if pattern & 0x7FFF != 0x0001]  # the subnormal is finite
    others = np.setdiff1d(np.arange(sizes[0]), special + in_state)
    params = ref.param_groups[0]["params"]
    assert np.isfinite(params[0][others].astype(np.float32)).all(), "a special value spread to another lane"
    assert np.isfinite(params[1].astype(np.float32)).all()


BFLOAT16_NEAREST = [p for p in NEAREST_PRECISIONS if p.name.startswith("bfloat16")]


@pytest.mark.parametrize("precision", BFLOAT16_NEAREST, ids=[p.name for p in BFLOAT16_NEAREST])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_float32_subnormal_results_of_a_bfloat16_step_are_the_reference_bitwise(name, kwargs, precision):
    """bfloat16 params that are subnormal and grads from the subnormals to
    1e-19 (half of them 0), so that params and state come out of the float32 arithmetic as
    float32 subnormals in whole SIMD vectors. AVX-512 BF16's conversion
    flushes those to zero; every target must round them as NumPy does."""
    rng = np.random.default_rng(14)
    sizes = [33, 40]
    subnormal_bits = lambda n: (rng.integers(1, 0x80, n) | (rng.integers(0, 2, n) << 15)).astype(np.uint16)
    start = [subnormal_bits(n).view(precision.dtype) for n in sizes]
    options = {**kwargs, **precision.kwargs(name)}
    ref = getattr(reference, name)([p.copy() for p in start], **options)
    fused = {run: getattr(fusedopt, name)([p.copy() for p in start], **options) for run in ONE_THREAD}
    for step in range(1, 4):
        # half the grads 0, so that those params stay subnormal (the rest move to normal numbers)
        tiny = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-38, -19, n) * (rng.random(n) < 0.5)).astype(np.float32)
                for n in sizes]
        grads = [g.astype(precision.dtype) for g in tiny]
        with np.errstate(under="ignore", invalid="ignore"):  # centered RMSprop: sqrt of a rounded-negative variance
            ref.step(grads)
        for run, opt in fused.items():
            step_on(opt, run, grads)
            assert_same_bits(opt, ref, f"{run[0]}, after step {step}")
    stored = [a for a in all_arrays(ref).values() if isinstance(a, np.ndarray)]
    magnitudes = [np.abs(a.astype(np.float32)) for a in stored]
    subnormal = sum(int(((m > 0) & (m < np.finfo(np.float32).tiny)).sum()) for m in magnitudes)
    assert subnormal > 0, "no array holds a subnormal: the case does not test what it says"


BFLOAT16_KAHAN = [p for p in PRECISIONS if p.name == "bfloat16-kahan"]


@pytest.mark.parametrize("precision", BFLOAT16_KAHAN, ids=[p.name for p in BFLOAT16_KAHAN])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_a_kahan_compensation_below_float32s_normal_range_is_the_reference_bitwise(name, kwargs, precision):
    """Tiny normal bfloat16 params with zero grads, and compensations that
    make what the store drops (even vectors: a compensation under half an
    ulp of w) or the compensated sum (odd vectors: -w plus a few units of
    the lowest binade) a float32 subnormal. The AVX-512 BF16 conversion would
    flush those to zero; every target rounds them as NumPy does."""
    rng = np.random.default_rng(15)
    sizes = [33, 40]
    even = lambda n: np.arange(n) // 16 % 2 == 0  # a kind per AVX-512 vector: each check must catch its own
    tiny = lambda n: (rng.uniform(1.0, 2.0, n) * np.where(even(n), 2.0**-120, 2.0**-126) * rng.choice([-1.0, 1.0], n))
    start = [tiny(n).astype(precision.dtype) for n in sizes]
    options = {**kwargs, **precision.kwargs(name)}
    ref = getattr(reference, name)([p.copy() for p in start], **options)
    fused = {run: getattr(fusedopt, name)([p.copy() for p in start], **options) for run in ONE_THREAD}
    zero_grads = [np.zeros(n, precision.dtype) for n in sizes]
    for step in range(1, 4):
        with np.errstate(under="ignore", invalid="ignore"):
            ref.step(zero_grads)
        for run, opt in fused.items():
            step_on(opt, run, zero_grads)
            assert_same_bits(opt, ref, f"{run[0]}, after step {step}")
        if step == 1:  # compensations as a checkpoint may hold them
            for i, param in enumerate(ref.param_groups[0]["params"]):
                n = param.size
                # k 2^-133 with k < 32 is under half the ulp (2^-127) of a w above 2^-120: w + c rounds to w.
                subnormal = (rng.integers(1, 32, n) | (rng.integers(0, 2, n) << 15)).astype(np.uint16).view(precision.dtype)
                # -w + k 2^-133 is exact in bfloat16 for w in [2^-126, 2^-125): w + c is a subnormal.
                cancelling = (-param.astype(np.float32) + rng.integers(1, 100, n) * 2.0**-133).astype(precision.dtype)
                compensation = np.where(even(n), subnormal, cancelling)
                for opt in (ref, *fused.values()):
                    opt.state[i]["kahan_comp"][...] = compensation
    compensation = ref.state[0]["kahan_comp"].astype(np.float32)
    assert ((compensation != 0) & (np.abs(compensation) < np.finfo(np.float32).tiny)).any(), \
        "no compensation is subnormal: the case does not test what it says"


STOCHASTIC_PRECISIONS = [p for p in PRECISIONS if p.name in ("bfloat16-stochastic", "float16-stochastic")]


@pytest.mark.parametrize("precision", STOCHASTIC_PRECISIONS, ids=[p.name for p in STOCHASTIC_PRECISIONS])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_a_stochastic_store_beyond_the_largest_finite_value_is_the_reference_bitwise(name, kwargs, precision):
    """Stochastic rounding stores results beyond the format's range (and
    infinities) as round-to-nearest does. Vectors without a NaN, so that
    the vector store decides: the largest finite value with an lr that
    carries it further, and an infinity among finite params."""
    rng = np.random.default_rng(16)
    sizes = [33, 40]
    largest = float(np.finfo(precision.dtype).max)
    start = precision.params(rng, sizes)
    start[0][:16] = (largest * rng.choice([-1.0, 1.0], 16)).astype(precision.dtype)
    start[0][20], start[0][27] = np.inf, -np.inf
    options = {**kwargs, **precision.kwargs(name), "lr": largest}
    ref = getattr(reference, name)([p.copy() for p in start], **options)
    fused = {run: getattr(fusedopt, name)([p.copy() for p in start], **options) for run in ONE_THREAD}
    grads = precision.grads(rng, sizes)
    with np.errstate(over="ignore", invalid="ignore"):
        ref.step(grads)
    for run, opt in fused.items():
        step_on(opt, run, grads)
        assert_same_bits(opt, ref, f"{run[0]}")
    assert np.isinf(ref.param_groups[0]["params"][0][16:32].astype(np.float32)).any()


# ----------------------------------------------------------------- conversions

def float32_patterns():
    """float32 bit patterns where rounding to a 16-bit format can go wrong:
    for both signs and every exponent (zeros, the subnormals of float32,
    bfloat16 and float16, the largest finite values, infinities and NaNs
    with every payload, quiet and signalling), mantissas just below, at and
    above the halfway point of every possible number of dropped bits (the
    ties, with an even and an odd kept bit); the boundaries named below; and
    2**20 random patterns."""
    mantissas = [0, 1, 0x7FFFFF, 0x400000, 0x400001, 0x3FFFFF]
    for b in range(23):
        half = 1 << b
        for kept in (0, 2 * half, 6 * half, 0x7FFFFF & ~(2 * half - 1)):
            mantissas += [kept | half, (kept | half) - 1, (kept | half) + 1]
    mantissas = np.unique(np.array(mantissas, np.uint32) & np.uint32(0x7FFFFF))
    exponents = np.arange(256, dtype=np.uint32) << np.uint32(23)
    magnitudes = (exponents[:, None] | mantissas[None, :]).reshape(-1)
    named = np.array([
        # bfloat16's max, just below its tie with infinity, the tie (rounds to inf, even), float32's max
        0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF,
        # float16's max 65504, just below its tie with infinity, the tie 65520 (to inf), 65536
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000,
        0x38800000, 0x387FFFFF, 0x33800000, 0x33000000, 0x33000001, 0x32FFFFFF,  # 2**-14, 2**-24, 2**-25 (tie to 0)
        0x7F800001, 0x7FBFFFFF, 0x7FC00000, 0x7FFFFFFF, 0x7F808000, 0x7F800100,  # NaNs, the low-payload ones included
    ], np.uint32)
    random = np.random.default_rng(3).integers(0, 2**31, 2**20, dtype=np.uint32)
    magnitudes = np.concatenate([magnitudes, named, random])
    return np.concatenate([magnitudes, magnitudes | np.uint32(0x80000000)]).view(np.float32)


def expected_nearest(x, dtype):
    """ml_dtypes' (bfloat16) or NumPy's (float16) conversion."""
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
def test_every_16bit_pattern_upcasts_as_ml_dtypes_and_numpy(target, dtype):
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(dtype)
    want = bits(patterns.astype(np.float32))
    got = np.empty(patterns.size, np.float32)
    _core.convert(patterns, got)
    np.testing.assert_array_equal(bits(got), want)
    np.testing.assert_array_equal(bits(reference.to_float32(patterns)), want)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
def test_round_to_nearest_is_ml_dtypes_and_numpy_bit_for_bit(target, dtype):
    x = float32_patterns()
    want = bits(expected_nearest(x, dtype))
    got = np.empty(x.size, dtype)
    _core.convert(x, got)
    for label, value in (("_core.convert", got), ("reference.round_nearest", reference.round_nearest(x, dtype))):
        differ = np.flatnonzero(bits(value) != want)
        assert differ.size == 0, (f"{label}: {differ.size} of {x.size} differ, e.g. {bits(x)[differ[0]]:#010x} -> "
                                  f"{bits(value)[differ[0]]:#06x}, want {want[differ[0]]:#06x}")


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
def test_torch_rounds_the_same_except_nan_payloads(dtype):
    """torch's CPU conversion agrees on every number, infinities and signed
    zeros; its NaNs differ (bfloat16: always 0xFFFF; float16: the quiet bit
    set) but are NaNs. docs/precision.md lists the difference."""
    x = float32_patterns()
    ours = np.empty(x.size, dtype)
    _core.convert(x, ours)
    torch_dtype = torch.bfloat16 if dtype == bfloat16 else torch.float16
    theirs = torch.from_numpy(x).to(torch_dtype).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(bits(ours)[~nan], theirs[~nan])
    assert np.isnan(theirs.view(dtype)[nan]).all() and np.isnan(ours[nan]).all()


# ------------------------------------------- a 16-bit step is the float32 step

@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_16bit_step_with_float32_state_is_the_float32_step_then_rounding(name, kwargs, dtype):
    """Upcast the params, take the float32 step with the same (upcast) grads
    and float32 state, round the params with ml_dtypes/NumPy: the same bits."""
    rng = np.random.default_rng(21)
    sizes = [17, 1000]
    params = [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]
    wide = [p.astype(np.float32) for p in params]
    narrow_opt = getattr(fusedopt, name)(params, state_dtype=np.float32, **kwargs)
    wide_opt = getattr(fusedopt, name)(wide, **kwargs)
    for step in range(1, REFERENCE_STEPS + 1):
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        narrow_opt.step(grads)
        wide_opt.step([g.astype(np.float32) for g in grads])
        for i, (p, w) in enumerate(zip(params, wide)):
            np.testing.assert_array_equal(bits(p), bits(expected_nearest(w, dtype)), err_msg=f"params[{i}], {step}")
            w[...] = p.astype(np.float32)  # the float32 run goes on from the stored params
        for i, (narrow, full) in enumerate(zip(narrow_opt.state, wide_opt.state)):
            assert narrow.keys() == full.keys()
            for key, value in full.items():
                got = narrow[key]
                if isinstance(value, np.ndarray):
                    assert got.dtype == np.float32, key
                    np.testing.assert_array_equal(bits(got), bits(value), err_msg=f"state[{i}][{key!r}], {step}")
                else:
                    assert got == value, key


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_master_weights_are_the_float32_run(name, kwargs, dtype):
    """With master weights (and float32 state) the master is the float32 run
    from the upcast start, bit for bit, and the param is its rounded copy."""
    rng = np.random.default_rng(22)
    sizes = [17, 1000]
    params = [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]
    wide = [p.astype(np.float32) for p in params]
    narrow_opt = getattr(fusedopt, name)(params, master_weights=True, state_dtype=np.float32, **kwargs)
    wide_opt = getattr(fusedopt, name)(wide, **kwargs)
    for step in range(1, REFERENCE_STEPS + 1):
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        narrow_opt.step(grads)
        wide_opt.step([g.astype(np.float32) for g in grads])
        for i, (p, w) in enumerate(zip(params, wide)):
            master = narrow_opt.state[i]["master_param"]
            np.testing.assert_array_equal(bits(master), bits(w), err_msg=f"master_param[{i}], step {step}")
            np.testing.assert_array_equal(bits(p), bits(expected_nearest(w, dtype)), err_msg=f"params[{i}], {step}")
            for key, value in wide_opt.state[i].items():
                want = bits(value) if isinstance(value, np.ndarray) else value
                got = narrow_opt.state[i][key]
                assert np.array_equal(bits(got) if isinstance(got, np.ndarray) else got, want), key


# ------------------------------------------------------------------ stagnation

STAGNATION_ELEMENTS, STAGNATION_STEPS, STAGNATION_LR = 4096, 100, 1e-4
# The remedies move the params as far as float32 does, on the mean, within
# 5%. Stochastic rounding is unbiased: its error is the sampling error of a
# mean of 4096 roundings to the 2**-8 grid below 1.0, under 2**-9 / 64 = 3e-5,
# about 0.5% of the 6e-3 mean displacement. Kahan's and the master's params
# are the float32-like value rounded to nearest: the mean of rounded values
# carries a quantisation bias, below 2**-9 per element, which the spread of
# displacements (0 to 2.5 grid steps) mostly averages out: 3.3% here.
STAGNATION_TOLERANCE = 0.05
STAGNATION_MODES = {
    "float32": (FLOAT32, {}),
    "round to nearest": (bfloat16, {}),
    "stochastic rounding": (bfloat16, {"rounding": "stochastic", "seed": 1}),
    "Kahan summation": (bfloat16, {"kahan_sum": True}),
    "master weights": (bfloat16, {"master_weights": True}),
}


def stagnation_grads():
    """bfloat16 gradients 1e-2 (mu + noise) with a drift mu in [0, 2] per
    element: under AdamW's normalisation each element drifts down at its own
    speed, from not at all to about lr per step. (A constant gradient would
    move every element by exactly the same 100 lr = 2.6 grid steps, so any
    rounding to nearest would be 16% off for all alike; pure noise would
    move the float32 run less than half a grid step: nothing to compare.)"""
    rng = np.random.default_rng(0)
    drift = rng.uniform(0.0, 2.0, STAGNATION_ELEMENTS)
    return [(1e-2 * (drift + rng.standard_normal(STAGNATION_ELEMENTS))).astype(bfloat16)
            for _ in range(STAGNATION_STEPS)]


def stagnation_displacements():
    """How far each mode moves bf16 params that start at 1.0 (1 - final values)."""
    grads = stagnation_grads()
    out = {}
    for mode, (dtype, options) in STAGNATION_MODES.items():
        w = np.ones(STAGNATION_ELEMENTS, dtype)
        opt = fusedopt.AdamW([w], lr=STAGNATION_LR, **options)
        for g in grads:
            opt.step([g.astype(dtype)])
        out[mode] = 1.0 - w.astype(np.float64)
    return out


def torch_fused_adamw_bf16_displacement():
    w = torch.ones(STAGNATION_ELEMENTS, dtype=torch.bfloat16, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=STAGNATION_LR, fused=True)
    for g in stagnation_grads():
        w.grad = torch.from_numpy(g.view(np.int16).copy()).view(torch.bfloat16)
        opt.step()
    return 1.0 - w.detach().float().numpy().astype(np.float64)


def test_stagnation_round_to_nearest_stalls_and_the_remedies_track_float32():
    moved = stagnation_displacements()
    reference_mean = moved["float32"].mean()
    summary = {mode: (int(np.count_nonzero(d)), d.mean() / reference_mean) for mode, d in moved.items()}
    print("\nstagnation (elements moved, mean displacement / float32's):",
          {mode: f"{count}, {ratio:.4f}" for mode, (count, ratio) in summary.items()})
    assert np.count_nonzero(moved["float32"]) == STAGNATION_ELEMENTS and reference_mean > 5e-3
    # Every step moves a param by at most lr = 1e-4, under half the 2**-8 grid
    # below 1.0: round to nearest never leaves 1.0, exactly as torch's fused AdamW.
    assert np.count_nonzero(moved["round to nearest"]) == 0
    torch_moved = torch_fused_adamw_bf16_displacement()
    assert np.count_nonzero(torch_moved) == 0
    for mode in ("stochastic rounding", "Kahan summation", "master weights"):
        ratio = moved[mode].mean() / reference_mean
        assert abs(ratio - 1) < STAGNATION_TOLERANCE, f"{mode}: mean displacement {ratio:.4f} of float32's"
    # Kahan's and the master's params stay within one grid step of the float32 run, element by element.
    for mode in ("Kahan summation", "master weights"):
        assert np.abs(moved[mode] - moved["float32"]).max() <= 2**-8, mode


# ---------------------------------------------------------- stochastic rounding

def neighbours(x, dtype):
    """The 16-bit values just below and just above each float32 ``x`` (equal when exact)."""
    nearest = expected_nearest(x, dtype)
    steps = bits(nearest).astype(np.int64)
    candidates = [(steps + k).astype(np.uint16).view(dtype).astype(np.float64) for k in (-1, 0, 1)]
    x = x.astype(np.float64)
    below = np.max([np.where(c <= x, c, -np.inf) for c in candidates], axis=0)
    above = np.min([np.where(c >= x, c, np.inf) for c in candidates], axis=0)
    return below, above


# (dtype, param, lr, grad): x = param - lr * grad, exact in float32, lies
# between two 16-bit neighbours at a fraction p of the way up.
UNBIASED_CASES = [
    (bfloat16, 1.0, 1.0, 2.0**-10),                 # p = 0.75 below 1.0 (2**-8 grid)
    (bfloat16, -1.0, 1.0, -0.7 * 2**-8),            # negative, p near 0.3
    (bfloat16, 1000.0, 1.0, 1.3),                   # the grid of 4 at 1000
    (bfloat16, 1.0, 1.0, 2.0**-17),                 # p = 2**-9: rarely up
    (FLOAT16, 1.0, 1.0, 3 * 2.0**-14),              # the 2**-11 grid below 1.0
    (FLOAT16, -300.0, 1.0, 0.1),                    # negative, the grid of 0.25
    (FLOAT16, 2 * 2.0**-24, 2.0**-10, -307 * 2.0**-24),  # float16 subnormals: 2.2998 units of 2**-24
]
UNBIASED_IDS = [f"{np.dtype(d).name}-{w}-{g:.3g}" for d, w, _, g in UNBIASED_CASES]
UNBIASED_ELEMENTS = 100_000


@pytest.mark.parametrize("dtype, start, lr, grad", UNBIASED_CASES, ids=UNBIASED_IDS)
def test_stochastic_rounding_is_unbiased(dtype, start, lr, grad):
    """One value rounded 1e5 times (one element each): every result is one
    of its two neighbours, and the mean is the value within 5 standard errors
    of the mean (p (1 - p) / n)**0.5 ulp: tighter than torchao's
    atol = rtol = 3e-5 for values near 1, and meaningful for subnormals too.
    Round to nearest fails the same bound: its mean is a neighbour."""
    g16 = np.array(grad).astype(dtype)
    x = np.float32(np.float32(start) - np.float32(lr) * g16.astype(np.float32))
    assert float(x) == float(np.float64(start) - lr * float(g16)), "the case's value must be exact in float32"
    below, above = (float(v[0]) for v in neighbours(np.array([x]), dtype))
    ulp, p = above - below, (float(x) - below) / (above - below)
    assert 0 < p < 1
    bound = 5 * ulp * (p * (1 - p) / UNBIASED_ELEMENTS) ** 0.5 + 2.0**-16 * ulp  # + the float16 subnormal compare
    means = {}
    for rounding in ("stochastic", "nearest"):
        w = np.full(UNBIASED_ELEMENTS, start, dtype)
        fusedopt.SGD([w], lr=lr, rounding=rounding, seed=7).step([np.full(UNBIASED_ELEMENTS, g16, dtype)])
        values = w.astype(np.float64)
        assert np.isin(values, [below, above]).all(), f"{rounding}: a result is not a neighbour of {x}"
        means[rounding] = values.mean()
    assert abs(means["stochastic"] - float(x)) <= bound, (means["stochastic"], float(x), bound)
    assert abs(means["nearest"] - float(x)) > bound  # the bound tells rounding modes apart


def stochastic_run(dtype, seed, run=None, groups=False):
    """Adam with stochastic rounding: three params, three steps; the final params."""
    rng = np.random.default_rng(31)
    sizes = [17, 100_003, 1000]
    params = [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]
    opt = fusedopt.Adam([{"params": params[:1]}, {"params": params[1:]}] if groups else params,
                        rounding="stochastic", seed=seed)
    for _ in range(3):
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        if run is None:
            opt.step(grads)
        else:
            step_on(opt, run, grads)
    return params


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=SIXTEEN_BIT_IDS)
def test_stochastic_rounding_bits_depend_on_the_seed_only(parallel_everywhere, dtype):
    """The same bits on every target and thread count, and in one group or
    two (the position counts over all groups); other bits for another seed."""
    first = stochastic_run(dtype, seed=5, run=EVERY_THREAD_COUNT[0])
    for run in EVERY_THREAD_COUNT[1:]:
        for i, (got, want) in enumerate(zip(stochastic_run(dtype, seed=5, run=run), first)):
            np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"params[{i}] on {run}")
    for i, (got, want) in enumerate(zip(stochastic_run(dtype, seed=5, groups=True), first)):
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"params[{i}] in two groups")
    other = stochastic_run(dtype, seed=6)
    for i, (got, want) in enumerate(zip(other, first)):
        assert np.mean(bits(got) != bits(want)) > 0.1, f"params[{i}]: another seed, the same bits"


def test_stochastic_rounding_bits_depend_on_the_params_position_and_the_step():
    """Two params with the same values and grads round differently, and so
    does one param in two steps that compute the same value."""
    w = [np.full(10_000, 1.0, bfloat16) for _ in range(2)]
    g = np.full(10_000, 2.0**-10, bfloat16)
    opt = fusedopt.SGD(w, lr=1.0, rounding="stochastic", seed=3)
    opt.step([g, g])
    assert np.mean(bits(w[0]) != bits(w[1])) > 0.2
    first = w[0].copy()
    w[0][...] = 1.0
    opt.step([g, None])
    assert np.mean(bits(w[0]) != bits(first)) > 0.2


def test_the_seed_is_in_the_state_dict_and_resumes():
    """The group keeps "seed"; an optimizer made with another seed that loads
    the state_dict continues with the saved one, bit for bit."""
    rng = np.random.default_rng(4)
    sizes = (5, 1000)
    start = [(rng.standard_normal(n) * 1e-3).astype(bfloat16) for n in sizes]
    grads = [[rng.standard_normal(n).astype(bfloat16) for n in sizes] for _ in range(6)]
    for seed in (0, 12345):
        uninterrupted = fusedopt.Adam([p.copy() for p in start], rounding="stochastic", seed=seed)
        for g in grads:
            uninterrupted.step(g)
        first_params = [p.copy() for p in start]
        first = fusedopt.Adam(first_params, rounding="stochastic", seed=seed)
        for g in grads[:3]:
            first.step(g)
        saved = first.state_dict()
        assert saved["param_groups"][0].get("seed", 0) == seed  # 0, the default, is not stored
        assert saved["param_groups"][0]["rounding"] == "stochastic"
        resumed = fusedopt.Adam([p.copy() for p in first_params], rounding="stochastic", seed=seed + 999)
        resumed.load_state_dict(saved)
        for g in grads[3:]:
            resumed.step(g)
        assert_same_bits(resumed, uninterrupted, f"seed {seed}")


# ---------------------------------------------------------------- loss scaling

@pytest.mark.parametrize("dtype", [FLOAT32, bfloat16, FLOAT16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_a_power_of_two_loss_scale_is_exactly_the_unscaled_step(name, kwargs, dtype):
    """step(grads * s, grad_scale=s) with s = 2**10: the same bits as
    step(grads), and the scaled grads are not written."""
    scale = 1024.0
    rng = np.random.default_rng(41)
    sizes = [17, 1000]
    start = [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]
    plain = getattr(fusedopt, name)([p.copy() for p in start], **kwargs)
    scaled = getattr(fusedopt, name)([p.copy() for p in start], **kwargs)
    for step in range(1, 5):
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        scaled_grads = [(g.astype(np.float32) * np.float32(scale)).astype(dtype) for g in grads]  # exact
        kept = [g.copy() for g in scaled_grads]
        plain.step(grads)
        scaled.step(scaled_grads, grad_scale=scale)
        assert_same_bits(scaled, plain, f"after step {step}")
        for got, want in zip(scaled_grads, kept):
            np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", [FLOAT32, bfloat16, FLOAT16], ids=["float32", "bfloat16", "float16"])
def test_a_nonfinite_scaled_grad_skips_the_whole_step(dtype, bad):
    rng = np.random.default_rng(42)
    params = [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in (17, 1000)]
    opt = fusedopt.Adam(params, amsgrad=True, nonfinite="skip", state_dtype=np.float32)
    grads = [(rng.standard_normal(n) * 512).astype(dtype) for n in (17, 1000)]
    assert opt.step(grads, grad_scale=512.0)
    before = copy.deepcopy(all_arrays(opt))
    grads[1][-1] = bad  # the last element of the last grad: a sloppy check would have updated the rest
    kept = [g.copy() for g in grads]
    assert opt.step(grads, grad_scale=512.0) is False
    assert opt.skipped_steps == 1
    after = all_arrays(opt)
    for label, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(bits(after[label]), bits(value), err_msg=label)
        else:
            assert after[label] == value, label
    for got, want in zip(grads, kept):
        np.testing.assert_array_equal(bits(got), bits(want))


# ------------------------------------------------------------------- bad input

# (id, param dtype, options, error, message): rejected by the constructor and
# by add_param_group, which leaves the optimizer as it was.
BAD_OPTIONS = [
    ("state-float64-for-bfloat16", bfloat16, {"state_dtype": np.float64}, ValueError,
     r"state_dtype is float64, but param group \d holds a bfloat16 param"),
    ("state-bfloat16-for-float64", np.float64, {"state_dtype": bfloat16}, ValueError,
     r"state_dtype is bfloat16, but param group \d holds a float64 param"),
    ("state-unknown-name", bfloat16, {"state_dtype": "float8"}, ValueError, r"state_dtype must be one of"),
    ("state-unknown-name-float64-param", np.float64, {"state_dtype": "float8"}, ValueError,
     r"state_dtype must be one of"),
    ("state-int32", np.float32, {"state_dtype": np.int32}, ValueError, r"state_dtype must be one of"),
    ("state-per-key-float64", bfloat16, {"state_dtype": {"exp_avg": np.float64}}, ValueError,
     r"state_dtype\['exp_avg'\] is float64"),
    ("state-per-key-unknown-key", bfloat16, {"state_dtype": {"exp_avgs": np.float32}}, ValueError,
     r"state_dtype.*'exp_avgs'"),
    ("master-weights-float32", np.float32, {"master_weights": True}, ValueError,
     r"master_weights is for bfloat16 and float16 params, but param group \d holds a float32 param"),
    ("master-weights-float64", np.float64, {"master_weights": True}, ValueError, r"master_weights is for"),
    ("kahan-float32", np.float32, {"kahan_sum": True}, ValueError, r"kahan_sum is for bfloat16 and float16"),
    ("kahan-float64", np.float64, {"kahan_sum": True}, ValueError, r"kahan_sum is for"),
    ("stochastic-float32", np.float32, {"rounding": "stochastic"}, ValueError, r"rounding='stochastic' is for"),
    ("stochastic-float64", np.float64, {"rounding": "stochastic"}, ValueError, r"rounding='stochastic' is for"),
    ("rounding-unknown", bfloat16, {"rounding": "up"}, ValueError, r"rounding .* 'nearest', 'stochastic'"),
    ("master-and-kahan", bfloat16, {"master_weights": True, "kahan_sum": True}, ValueError, r"choose one"),
    ("master-and-stochastic", bfloat16, {"master_weights": True, "rounding": "stochastic"}, ValueError,
     r"choose one"),
    ("kahan-and-stochastic", FLOAT16, {"kahan_sum": True, "rounding": "stochastic"}, ValueError, r"choose one"),
    ("master-weights-not-bool", bfloat16, {"master_weights": 1}, TypeError, r"master_weights .* bool"),
    ("seed-negative", bfloat16, {"rounding": "stochastic", "seed": -1}, ValueError, r"seed must be an int in \[0"),
    ("seed-too-large", bfloat16, {"rounding": "stochastic", "seed": 2**64}, ValueError, r"seed must be an int"),
    ("seed-str", bfloat16, {"rounding": "stochastic", "seed": "1"}, TypeError, r"seed \(param group 0\) must be an int"),
    ("seed-float", bfloat16, {"rounding": "stochastic", "seed": 1.0}, TypeError, r"seed \(param group 0\) must be an int"),
    ("seed-bool", bfloat16, {"rounding": "stochastic", "seed": True}, TypeError, r"seed \(param group 0\) must be an int"),
]


def stepped_bf16_adam(**kwargs):
    """A bfloat16 Adam that has taken a step, and valid grads for the next."""
    rng = np.random.default_rng(0)
    params = [(rng.standard_normal(40) * 1e-3).astype(bfloat16) for _ in range(3)]
    opt = fusedopt.Adam(params, **kwargs)
    opt.step([rng.standard_normal(40).astype(bfloat16) for _ in range(3)])
    return opt, [rng.standard_normal(40).astype(bfloat16) for _ in range(3)]


def frozen(opt, grads):
    """Everything a failed call must leave as it was."""
    return (copy.deepcopy(all_arrays(opt)), [g.copy() for g in grads if isinstance(g, np.ndarray)],
            copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
            opt.skipped_steps)


def assert_unchanged(opt, grads, before):
    arrays, kept_grads, groups, skipped = before
    now = all_arrays(opt)
    assert now.keys() == arrays.keys()
    for label, value in arrays.items():
        if isinstance(value, np.ndarray):
            assert now[label].dtype == value.dtype, label
            np.testing.assert_array_equal(bits(now[label]), bits(value), err_msg=label)
        else:
            assert now[label] == value, label
    for got, want in zip([g for g in grads if isinstance(g, np.ndarray)], kept_grads):
        np.testing.assert_array_equal(bits(got), bits(want))
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups
    assert opt.skipped_steps == skipped


@pytest.mark.parametrize("case, dtype, options, error, pattern", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_storage_options_are_rejected(case, dtype, options, error, pattern):
    params = [np.ones(3, dtype)]
    with pytest.raises(error, match=pattern):
        fusedopt.Adam(params, **options)
    assert (params[0] == 1).all()


@pytest.mark.parametrize("key, value", [("state_dtype", "float32"), ("master_weights", True), ("state_bits", 8)])
def test_a_storage_option_under_a_key_made_at_run_time_is_read(key, value):
    """The core skips the storage options' lookups when a group's keys are
    interned strings none of which names one; a key built at run time is no
    interned string, and must still be read."""
    built = "".join(list(key))
    assert built == key and built is not key
    results = []
    for name in (key, built):
        param = np.full(8192, 1.0, bfloat16)
        grads = [np.full(8192, 0.5, bfloat16)]
        group = {"params": [param], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                 "amsgrad": False, "maximize": False, "decoupled_weight_decay": False, name: value}
        state = [{"step": 0}]
        RULES["adam"].step([group], grads, state, False)
        results.append((bits(param), {k: (v.dtype, v.shape) for k, v in state[0].items() if k != "step"}))
    assert results[1][1] == results[0][1]
    np.testing.assert_array_equal(results[1][0], results[0][0])
    default = {"exp_avg": (np.dtype(bfloat16), (8192,)), "exp_avg_sq": (np.dtype(bfloat16), (8192,))}
    assert results[0][1] != default  # the option did something


def test_a_rejected_param_group_leaves_the_optimizer_as_it_was():
    """add_param_group with options that do not fit its params raises and adds nothing."""
    opt, grads = stepped_bf16_adam()
    before = frozen(opt, grads)
    with pytest.raises(ValueError, match=r"master_weights is for bfloat16 and float16 params"):
        opt.add_param_group({"params": [np.zeros(3, np.float32)], "master_weights": True})
    assert len(opt.param_groups) == 1 and len(opt.state) == 3
    assert_unchanged(opt, grads, before)
    opt.step(grads)  # still a working optimizer


def test_a_rejected_param_group_is_named():
    opt, _ = stepped_bf16_adam()
    with pytest.raises(ValueError, match=r"param group 1 holds a float32 param"):
        opt.add_param_group({"params": [np.zeros(3, np.float32)], "master_weights": True})


def set_group(key, value):
    def edit(opt, grads):
        opt.param_groups[0][key] = value
        return grads
    return edit


def set_state(key, make):
    def edit(opt, grads):
        opt.state[2][key] = make(opt.state[2])
        return grads
    return edit


def last_grad(make):
    def edit(opt, grads):
        grads[-1] = make(grads[-1])
        return grads
    return edit


# (id, options of the optimizer, edit(opt, grads) -> grads, step kwargs, error, message): step() raises and
# nothing changes (the params and state of earlier params included).
BAD_STEPS = [
    ("grad-float32-for-bfloat16", {}, last_grad(lambda g: g.astype(np.float32)), {}, TypeError,
     r"grads\[2\] has dtype float32 but params\[2\] has dtype bfloat16"),
    ("grad-float16-for-bfloat16", {}, last_grad(lambda g: g.astype(np.float16)), {}, TypeError,
     r"grads\[2\] has dtype float16 but params\[2\] has dtype bfloat16"),
    ("grad-uint16-view", {}, last_grad(lambda g: g.view(np.uint16)), {}, TypeError, r"grads\[2\]"),
    ("grad-scale-zero", {}, None, {"grad_scale": 0.0}, ValueError, r"grad_scale must be > 0, got 0.0"),
    ("grad-scale-negative", {}, None, {"grad_scale": -2.0}, ValueError, r"grad_scale must be > 0"),
    ("grad-scale-nan", {}, None, {"grad_scale": float("nan")}, ValueError, r"grad_scale must be finite"),
    ("grad-scale-inf", {}, None, {"grad_scale": float("inf")}, ValueError, r"grad_scale must be finite"),
    ("grad-scale-str", {}, None, {"grad_scale": "2"}, TypeError, r"grad_scale must be a real number, got str"),
    ("grad-scale-bool", {}, None, {"grad_scale": True}, TypeError, r"grad_scale must be a real number"),
    ("group-master-and-kahan", {"kahan_sum": True}, set_group("master_weights", True), {}, ValueError,
     r"choose one"),
    ("group-seed-negative", {"rounding": "stochastic"}, set_group("seed", -3), {}, ValueError,
     r"seed must be an int"),
    ("group-state-float64", {}, set_group("state_dtype", "float64"), {}, ValueError, r"state_dtype is float64"),
    ("state-float64-array", {}, set_state("exp_avg", lambda s: s["exp_avg"].astype(np.float64)), {}, TypeError,
     r"state\[2\]\['exp_avg'\] has dtype float64"),
    ("master-param-bfloat16", {"master_weights": True}, set_state("master_param", lambda s: s["master_param"]
                                                                 .astype(bfloat16)), {}, TypeError,
     r"state\[2\]\['master_param'\]"),
    ("kahan-comp-float32", {"kahan_sum": True}, set_state("kahan_comp", lambda s: s["kahan_comp"]
                                                         .astype(np.float32)), {}, TypeError,
     r"state\[2\]\['kahan_comp'\]"),
]


@pytest.mark.parametrize("case, options, edit, step_kwargs, error, pattern", BAD_STEPS,
                         ids=[c[0] for c in BAD_STEPS])
def test_bad_steps_are_rejected_and_change_nothing(case, options, edit, step_kwargs, error, pattern):
    opt, grads = stepped_bf16_adam(**options)
    grads = edit(opt, grads) if edit else grads
    before = frozen(opt, grads)
    with pytest.raises(error, match=pattern):
        opt.step(grads, **step_kwargs)
    assert_unchanged(opt, grads, before)


# ------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_state_dict_resumes_every_mode_bitwise(name, kwargs, precision):
    """Stop, load the state_dict into a fresh optimizer over copies of the
    params, continue: the same bits as a run that never stopped. The saved
    state keeps every dtype (bfloat16 included) and the mode's own arrays."""
    rng = np.random.default_rng(51)
    sizes = [7, 100, 1000]
    start = precision.params(rng, sizes)
    grads = [precision.grads(rng, sizes) for _ in range(6)]
    options = {**kwargs, **precision.kwargs(name)}

    def carry_over(first, fresh):
        saved = first.state_dict()
        for i, entry in enumerate(first.state):
            assert saved["state"][i].keys() == entry.keys()
            for key, value in entry.items():
                if isinstance(value, np.ndarray):
                    assert saved["state"][i][key].dtype == value.dtype, key
                    np.testing.assert_array_equal(bits(saved["state"][i][key]), bits(value), err_msg=key)
            extra = {"master_weights": "master_param", "kahan_sum": "kahan_comp"}
            for option, key in extra.items():
                assert (key in entry) == bool(options.get(option)), key
        fresh.load_state_dict(saved)

    resumed, uninterrupted = resume_and_uninterrupted(name, options, start, grads, stop=3, carry_over=carry_over,
                                                      grad_scale=precision.grad_scale)
    assert_same_bits(resumed, uninterrupted, "resumed")


# ------------------------------------------------------ bytes moved per element

# docs/precision.md's table: (param dtype, options, Adam's bytes, SGD with momentum's bytes).
BYTES_PER_ELEMENT = [
    (FLOAT32, {}, 28, 20),
    (bfloat16, {"state_dtype": np.float32}, 22, 14),
    (FLOAT16, {"state_dtype": np.float32}, 22, 14),
    (bfloat16, {"master_weights": True, "state_dtype": np.float32}, 28, 20),
    (bfloat16, {"master_weights": True}, 20, 16),
    (FLOAT32, {"state_dtype": bfloat16}, 20, 16),
    (bfloat16, {}, 14, 10),
    (bfloat16, {"rounding": "stochastic"}, 14, 10),
    (FLOAT16, {}, 14, 10),
    (bfloat16, {"kahan_sum": True}, 18, 14),
    (np.dtype(np.float64), {}, 56, 40),
    (FLOAT32, {"state_bits": 8}, 16, 14),  # codes 1 B each way; the scales (8 B per block) are not counted
    (bfloat16, {"state_bits": 8}, 10, 8),
]


@pytest.mark.parametrize("dtype, options, adam, sgd", BYTES_PER_ELEMENT,
                         ids=[f"{np.dtype(d).name}-{o}" for d, o, _, _ in BYTES_PER_ELEMENT])
def test_bytes_per_element_are_the_table_above(dtype, options, adam, sgd):
    assert core_bytes_per_element("Adam", {}, dtype, options) == adam
    assert core_bytes_per_element("SGD", {"momentum": 0.9}, dtype, options) == sgd


# ------------------------------------------- division by a per-step constant

def divisors():
    """Adam's sqrt(1 - beta2^t) for the usual betas and steps, random ones in
    the multiply range [2^-20, 1], its ends and just outside them."""
    rng = np.random.default_rng(15)
    steps = np.array([1, 2, 3, 10, 1000, 100_000])
    usual = [np.sqrt(1.0 - beta2 ** steps) for beta2 in (0.999, 0.95, 0.9999)]
    edges = [2.0 ** -20, 2.0 ** -20 * (1 - 2.0 ** -24), 1.0, 1.0 - 2.0 ** -24, 1.5, 2.0 ** -30]
    return [float(c) for c in (*np.concatenate(usual), *edges, *2.0 ** rng.uniform(-20, 0, 8))]


def quotient_inputs():
    """Every float32 of the binade [1, 2) (the corrected product scales
    exactly with x's exponent inside the multiply range, so this is every x
    there), samples of the binades at its ends and just outside, a million
    random positive patterns, and the values that must divide: 0, -0, inf,
    NaNs with payloads, tiny and huge ones."""
    rng = np.random.default_rng(16)
    every = np.arange(2 ** 23, dtype=np.uint32)
    sampled = rng.integers(0, 2 ** 23, 100_000, dtype=np.uint32)
    binades = [(np.uint32(127) << np.uint32(23)) | every,
               *((np.uint32(exponent) << np.uint32(23)) | sampled for exponent in (127 - 40, 127 - 41, 127 + 63, 127 + 64))]
    special = np.array([0, 0x80000000, 0x7F800000, 0x7FC00000, 0x7F800001, 0x7FC12345, 0xFFC00000, 1, 0x007FFFFF,
                        0x00800000, 0x2B800000 - 1, 0x5F800000, 0x7F7FFFFF], dtype=np.uint32)
    random = rng.integers(0, 0x7F800000, 1_000_000, dtype=np.uint32)
    return np.concatenate([*binades, special, random]).view(np.float32)


def test_division_by_a_step_constant_is_numpys_division_bit_for_bit(target):
    """The AVX-512 kernels divide by Adam's sqrt(1 - beta2^t) with a
    corrected product instead of the divider (csrc/kernels.cpp, Divisor):
    correctly rounded, so bitwise NumPy's division, NaN payloads included."""
    x = quotient_inputs()
    out = np.empty_like(x)
    for c in divisors():
        _core.divide_by_step_constant(x, c, out)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # a signalling NaN is invalid
            want = x / np.float32(c)
        differ = np.flatnonzero(bits(out) != bits(want))
        assert differ.size == 0, (f"x / {c!r}: {differ.size} quotients differ, the first "
                                  f"{x[differ[0]]!r} / {np.float32(c)!r}: {out[differ[0]]!r}, want {want[differ[0]]!r}")


@pytest.mark.parametrize("offset", [2 ** 32 - 21, 2 ** 32, 2 ** 33 - 5])
def test_stochastic_rounding_of_a_piece_across_2_to_the_32_is_the_reference_bitwise(target, offset):
    """A shard piece (fusedopt.distributed's private "_random_index") whose
    element indices in its param cross a multiple of 2^32: the random bits'
    high half changes inside one SIMD vector, which the vector code must
    leave to the scalar code; every target, params and state bitwise."""
    rng = np.random.default_rng(17)
    start = [rng.standard_normal(100).astype(bfloat16)]
    grads = [(rng.standard_normal(100) * 1e-2).astype(bfloat16)]
    options = dict(lr=1e-3, rounding="stochastic", seed=5)
    ref = reference.Adam([p.copy() for p in start], **options)
    opt = fusedopt.Adam([p.copy() for p in start], **options)
    for o in (ref, opt):
        o.param_groups[0]["_random_index"] = [(0, offset, 0)]
    for step in range(1, 3):
        ref.step(grads)
        opt.step(grads)
        assert_same_bits(opt, ref, f"offset {offset}, step {step}")
