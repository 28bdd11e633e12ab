"""Low precision (docs/precision.md): bfloat16 and float16 params, state
dtypes, master weights, Kahan summation, stochastic rounding and loss
scaling, every rule against the NumPy reference bit for bit, and each mode
against what it promises."""

import copy

import ml_dtypes
import numpy as np
import pytest
import torch

import fusedopt
from fusedopt import _core, reference
from fusedopt.precision import bfloat16
from cases import (CASE_IDS, CASES, FULL_STATE_CASE_IDS, FULL_STATE_CASES, PRECISION_IDS, PRECISIONS, FLOAT16,
                   FLOAT32, all_arrays, assert_same_bits, bits, default_lr, on_target,
                   resume_and_uninterrupted)
from conftest import SUPPORTED_TARGETS

SIXTEEN_BIT = [bfloat16, FLOAT16]
SIXTEEN_BIT_IDS = ["bfloat16", "float16"]

# The (target, thread count) pairs a step is checked on. Every case runs on
# every target on one thread; one case per rule (the one with every state
# array) also on two threads, with the serial cutoff at 0 (parallel_everywhere)
# so that two threads split even small steps, and a tensor of 1e5 elements
# between them. (A two-thread step of these small arrays costs ~16 ms on this
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
def test_two_threads_and_a_large_array_are_the_reference_bitwise(parallel_everywhere, name, kwargs, precision):
    """Every rule with all its state arrays, every precision, every target, 1
    and 2 threads; the small sizes and 1e5 elements (hundreds of tiles, cut
    between the threads inside the tensor)."""
    lockstep_against_reference(name, kwargs, precision, [*REFERENCE_SIZES, 100_003], steps=3, seed=12,
                               runs=EVERY_THREAD_COUNT)


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
        0x7F7F0000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF,  # bfloat16's max, just below its tie, the tie (to inf), float32's max
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000,  # float16's max 65504, just below the tie, 65520 (to inf), 65536
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
