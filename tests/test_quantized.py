"""8-bit block-quantized state (state_bits=8, docs/precision.md): the map
and its exact encoder on every target, every rule bitwise against the
reference on every target and thread count, accuracy against the 32-bit rule
with bitsandbytes' tolerances, memory, small tensors, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, reference
from fusedopt.precision import bfloat16
from conftest import SUPPORTED_TARGETS
from cases import (
    FULL_STATE_CASE_IDS,
    FULL_STATE_CASES,
    QUANTIZED_PRECISION_IDS,
    QUANTIZED_PRECISIONS,
    RULE_INFO,
    all_arrays,
    assert_same_bits,
    bits,
    default_lr,
    on_target,
)

BLOCK = 256
FLOAT32 = np.dtype(np.float32)


# ------------------------------------------------------------------ the map

@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_map_is_bitsandbytes_dynamic_map_and_the_reference_builds_the_same(signed):
    codes, thresholds = _core.quantization_map(signed)
    assert np.array_equal(bits(codes), bits(reference.dynamic_map(signed)))
    assert np.array_equal(bits(thresholds), bits(reference.map_thresholds(codes)))
    assert codes.dtype == FLOAT32 and codes.size == 256 and np.all(np.diff(codes) > 0)
    assert codes[-1] == 1.0 and 0.0 in codes
    # create_dynamic_map(signed, 7, 8): 127 (signed) or 255 codes in (0, 1], the smallest 1e-6 * 0.55 or 0.325
    positive = codes[codes > 0]
    assert positive.size == (128 if signed else 255)
    np.testing.assert_allclose(positive[0], 0.55e-6 if signed else 0.325e-6, rtol=1e-6)
    if signed:  # the negative codes mirror the positive ones, without -1
        assert np.array_equal(-codes[:127][::-1], positive[:-1])


def nearest_codes(values, codes):
    """The index of the nearest code of each value by brute force, ties to the larger code."""
    distance = np.abs(values.astype(np.float64)[:, None] - codes.astype(np.float64)[None, :])
    return 255 - np.argmin(distance[:, ::-1], axis=1)


def encoder_values(codes, thresholds, rng):
    """Values in [-1, 1] where an encoder can go wrong: every code, every
    threshold and the floats next to it (the exact ties are midpoints that a
    float32 holds), zeros, subnormals, tiny values, +-1, and random values
    spread over every decade."""
    inf = np.float32(np.inf)
    finite = thresholds[:-1]
    edges = [codes, finite, np.nextafter(finite, inf), np.nextafter(finite, -inf),
             np.nextafter(codes, inf), np.nextafter(codes, -inf)]
    special = np.array([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1.1754942e-38, 2**-24, -2**-24, 2**-25, 1e-7, -1e-7,
                        2.75e-7, -2.75e-7], np.float32)
    magnitudes = 10.0 ** rng.uniform(-9, 0, 200_000)
    randoms = (magnitudes * rng.choice([-1.0, 1.0], magnitudes.size)).astype(np.float32)
    values = np.concatenate([*edges, special, randoms, rng.uniform(-1, 1, 50_000).astype(np.float32)])
    return values[np.abs(values) <= 1]


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_encoder_finds_the_exact_nearest_code(target, signed, rng):
    """Blocks whose absmax is 1, so every value is its own normalized value:
    the kernel's code is the brute-force nearest (ties to the larger code) and
    the reference's; decoding gives the code's value. The unsigned map codes
    negative values as 0, the nearest of its codes."""
    codes, thresholds = _core.quantization_map(signed)
    values = encoder_values(codes, thresholds, rng)
    blocks = -(-values.size // (BLOCK - 1))
    padded = np.zeros(blocks * (BLOCK - 1), np.float32)
    padded[:values.size] = values
    laid_out = np.concatenate([np.ones((blocks, 1), np.float32), padded.reshape(blocks, BLOCK - 1)], axis=1).ravel()
    got, absmax = np.empty(laid_out.size, np.uint8), np.empty(blocks, np.float32)
    _core.quantize(laid_out, got, absmax, BLOCK, signed)
    assert np.all(absmax == 1.0)
    got = got.reshape(blocks, BLOCK)[:, 1:].ravel()[:values.size]
    want = nearest_codes(values, codes)
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, (f"{wrong.size} of {values.size} values get another code, the first "
                             f"{values[wrong[0]]!r}: {got[wrong[0]]} ({codes[got[wrong[0]]]!r}), want {want[wrong[0]]}")
    ref_codes, ref_absmax = reference.quantize(laid_out, BLOCK, signed)
    assert np.array_equal(ref_codes.reshape(blocks, BLOCK)[:, 1:].ravel()[:values.size], got)
    decoded = np.empty(laid_out.size, np.float32)
    _core.dequantize(ref_codes, ref_absmax, decoded, BLOCK, signed)
    assert np.array_equal(bits(decoded), bits(codes[ref_codes]))


@pytest.mark.parametrize("block_size, tail", [(64, 1), (64, 33), (256, 31), (256, 32), (4096, 255), (4096, 300)])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_encoder_is_exact_in_every_lane_chunk_and_tail(target, signed, block_size, tail, rng):
    """The vector encoder works in steps of 32 elements and looks its buckets
    up in chunks of 256: the encoder's hard values (every code, threshold and
    tie, +-1, zeros, subnormals), shuffled over every position of blocks of
    every length and of a short last block (a vector tail, a chunk and a
    scalar tail), with absmax 1 (the brute-force nearest code) and scaled by
    a per block absmax (the reference). Blocks of zeros and a last block
    holding an infinity encode the code of 0."""
    codes, thresholds = _core.quantization_map(signed)
    hard = rng.permutation(encoder_values(codes, thresholds, rng)[:3 * 4096])
    blocks = -(-hard.size // (block_size - 1)) + 1  # the last one short
    laid_out = np.zeros(blocks * block_size, np.float32)
    for b in range(blocks - 1):  # each full block starts with 1: its absmax
        chunk = hard[b * (block_size - 1):(b + 1) * (block_size - 1)]
        laid_out[b * block_size] = 1.0
        laid_out[b * block_size + 1:b * block_size + 1 + chunk.size] = chunk
    count = (blocks - 1) * block_size + tail
    laid_out, last = laid_out[:count], slice((blocks - 1) * block_size, count)
    laid_out[last] = rng.choice(hard, tail)
    laid_out[last.start] = -1.0  # its absmax: -1 is the signed map's smallest code, 0 the unsigned map's
    got, absmax = np.empty(count, np.uint8), np.empty(blocks, np.float32)
    _core.quantize(laid_out, got, absmax, block_size, signed)
    assert np.all(absmax == 1.0)
    want = nearest_codes(laid_out, codes)
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, (f"{wrong.size} of {count} values get another code, the first at {wrong[0]}, "
                             f"{laid_out[wrong[0]]!r}: {got[wrong[0]]}, want {want[wrong[0]]}")
    assert got[last.start] == 0 and 255 in got  # the smallest and the largest code
    scales = (10.0 ** rng.uniform(-30, 30, blocks)).astype(np.float32)
    scales[1] = 0.0
    scaled = laid_out * np.repeat(scales, block_size)[:count]
    scaled[last.stop - 1] = np.inf if tail > 1 else scaled[last.stop - 1]
    with np.errstate(over="ignore", invalid="ignore"):
        _core.quantize(scaled, got, absmax, block_size, signed)
        want_codes, want_absmax = reference.quantize(scaled, block_size, signed)
    assert np.array_equal(got, want_codes) and np.array_equal(bits(absmax), bits(want_absmax))
    zero_code = np.flatnonzero(codes == 0.0)[0]
    assert np.all(got[block_size:2 * block_size] == zero_code)
    if tail > 1:
        assert np.isnan(absmax[-1]) and np.all(got[last] == zero_code)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_encoder_divides_by_any_absmax_exactly(target, signed, rng):
    """Blocks of absmax c from subnormal to huge, holding the floats nearest
    threshold * c and their neighbours: x / c falls within an ulp or two of a
    threshold, where a quotient that is not correctly rounded gets the
    neighbouring code. The codes are the reference's (NumPy's division)."""
    codes, thresholds = _core.quantization_map(signed)
    finite = thresholds[:-1]
    blocks = 600
    exponents = np.concatenate([rng.uniform(-44, 38, blocks - 4), [-45, -38, 0, 38]])
    absmax = (rng.uniform(1, 10, blocks) * 10.0 ** exponents).astype(np.float32)
    absmax[absmax == 0] = np.float32(1e-45)
    picked = rng.choice(finite, (blocks, BLOCK - 1))
    with np.errstate(under="ignore", over="ignore"):
        near = (picked.astype(np.float64) * absmax[:, None]).astype(np.float32)
        steps = rng.integers(-2, 3, near.shape)
        for _ in range(2):  # up to two ulps either way
            near = np.where(steps > 0, np.nextafter(near, np.float32(np.inf)), near)
            near = np.where(steps < 0, np.nextafter(near, np.float32(-np.inf)), near)
            steps = steps - np.sign(steps)
    near = np.clip(near, -absmax[:, None], absmax[:, None])  # |x| <= absmax: c stays the block's absmax
    laid_out = np.concatenate([absmax[:, None], near], axis=1).ravel()
    got, got_absmax = np.empty(laid_out.size, np.uint8), np.empty(blocks, np.float32)
    _core.quantize(laid_out, got, got_absmax, BLOCK, signed)
    want, want_absmax = reference.quantize(laid_out, BLOCK, signed)
    assert np.array_equal(bits(got_absmax), bits(absmax)) and np.array_equal(bits(want_absmax), bits(absmax))
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, (f"{wrong.size} of {laid_out.size} values get another code, the first "
                             f"{laid_out[wrong[0]]!r} of absmax {absmax[wrong[0] // BLOCK]!r}: {got[wrong[0]]}, "
                             f"want {want[wrong[0]]}")


@pytest.mark.parametrize("block_size", [64, 256, 4096])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantize_and_dequantize_are_the_reference_bitwise(target, signed, block_size, rng):
    """Blocks of random scales (tiny, subnormal, huge), a block of zeros, a
    block holding a NaN and one an infinity (NaN absmax: the whole block
    decodes to NaN), and a short last block."""
    count = 9 * block_size + 37
    values = (rng.standard_normal(count) * 10.0 ** rng.integers(-40, 38, count // block_size + 1).repeat(block_size)[
        :count]).astype(np.float32)
    values[0:block_size] = 0.0
    values[block_size + 5] = np.nan
    values[2 * block_size + 7] = -np.inf
    values[3 * block_size:4 * block_size] = rng.standard_normal(block_size).astype(np.float32) * 1e-42  # subnormals
    if not signed:
        values = np.abs(values)
    codes, absmax = np.empty(count, np.uint8), np.empty(-(-count // block_size), np.float32)
    with np.errstate(over="ignore"):
        _core.quantize(values, codes, absmax, block_size, signed)
        want_codes, want_absmax = reference.quantize(values, block_size, signed)
    assert np.array_equal(codes, want_codes) and np.array_equal(bits(absmax), bits(want_absmax))
    assert absmax[0] == 0 and np.isnan(absmax[1]) and np.isnan(absmax[2])
    decoded = np.empty(count, np.float32)
    _core.dequantize(codes, absmax, decoded, block_size, signed)
    assert np.array_equal(bits(decoded), bits(reference.dequantize(codes, absmax, block_size, signed)))
    assert np.all(decoded[:block_size] == 0) and np.all(np.isnan(decoded[block_size:3 * block_size]))
    # Each finite block: every value within the map's precision of its block's absmax.
    finite = slice(3 * block_size, count)
    scale = np.repeat(absmax, block_size)[:count][finite].astype(np.float64)
    error = np.abs(decoded[finite].astype(np.float64) - values[finite])
    assert np.all(error <= largest_error(signed) * scale + 2 * np.spacing(np.abs(values[finite])) + 1.5e-45)


# ------------------------------------------- every rule against the reference

SIZES = [1, 63, 64, 65, 255, 257, 1000, 5000]  # around the SIMD block, a block, a tile; none a multiple of 256 but 64
MIN_8BIT_SIZE = 64  # the sizes from 64 up are quantized, 1 and 63 keep 32-bit state


def lockstep(name, kwargs, precision, sizes, steps, seed, runs):
    """The reference and one fused optimizer per (target, threads), stepped
    with the same grads, compared bit for bit (params, codes, scales, every
    state array) after every step."""
    rng = np.random.default_rng(seed)
    start = precision.params(rng, sizes)
    options = {**kwargs, **precision.kwargs(name), "min_8bit_size": MIN_8BIT_SIZE}
    groups = lambda params: [{"params": params[:2]}, {"params": params[2:], "lr": 0.5 * default_lr(name, kwargs)}]
    ref = getattr(reference, name)(groups([p.copy() for p in start]), **options)
    fused = {run: getattr(fusedopt, name)(groups([p.copy() for p in start]), **options) for run in runs}
    for step in range(1, steps + 1):
        grads = precision.grads(rng, sizes)
        ref.step(grads, grad_scale=precision.grad_scale)
        for (target, threads), opt in fused.items():
            with on_target(target), fusedopt.threads(threads):
                opt.step(grads, grad_scale=precision.grad_scale)
            assert_same_bits(opt, ref, f"{target}, {threads} threads, after step {step}")
    quantized = [i for i, p in enumerate(start) if p.size >= MIN_8BIT_SIZE]
    for i, entry in enumerate(ref.state):
        keys = RULE_INFO[name].state_keys
        assert all(entry[k].dtype == (np.uint8 if i in quantized else np.float32)
                   for k in entry if k in keys and isinstance(entry[k], np.ndarray))


@pytest.mark.parametrize("precision", QUANTIZED_PRECISIONS, ids=QUANTIZED_PRECISION_IDS)
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_every_rule_in_every_mode_is_the_reference_bitwise(name, kwargs, precision):
    lockstep(name, kwargs, precision, SIZES, steps=4, seed=21, runs=[(t, 1) for t in SUPPORTED_TARGETS])


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_threads_never_split_a_block(every_team_split, name, kwargs, threads):
    """Tensors laid end to end at offsets that are not multiples of a block,
    one of 1e5 elements cut between the threads: the chunks move to the
    block grid of each tensor, and every thread count gives the reference's bits."""
    precision = QUANTIZED_PRECISIONS[1]  # bfloat16 params, 8-bit state
    lockstep(name, kwargs, precision, [77, 100_003, 333, 20_001], steps=2, seed=22,
             runs=[(t, threads) for t in SUPPORTED_TARGETS])


# ------------------------------------------------- accuracy against 32 bits

def signs_of(opt):
    return opt.rule.state_signs(opt.param_groups[0])


def dequantized(entry, key, signed):
    return reference.dequantize(entry[key], entry[key + "_absmax"], BLOCK, signed)


def largest_error(signed):
    """The most a value may move when quantized, as a fraction of its block's absmax: half the widest gap of the map."""
    codes = _core.quantization_map(signed)[0].astype(np.float64)
    return max(float(np.max(np.diff(codes))) / 2, 1 + codes[0] if signed else 0.0)  # the signed map has no -1


def protocol_pair(name, kwargs, rng):
    """bitsandbytes' start: params randn * 0.1 (16384 elements), one copy
    stepped with 32-bit state and one with 8-bit state."""
    size = 4096 * 4
    start = (rng.standard_normal(size) * 0.1).astype(np.float32)
    full, low = start.copy(), start.copy()
    cls = getattr(fusedopt, name)
    return size, full, low, cls([full], **kwargs), cls([low], **kwargs, state_bits=8)


@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_an_8bit_step_is_the_32bit_step_from_the_dequantized_state(name, kwargs):
    """bitsandbytes' test_optimizer8bit protocol (params randn * 0.1, grads
    randn * 0.01, 50 steps, the 32-bit run's params and states set to the
    8-bit run's before every step). The params agree to the bit at every
    step, since the update uses the state before it is re-quantized; and every
    element of the dequantized state is within the map's precision of the
    32-bit state, the value it encodes (half the widest gap of the map, 0.7% of
    the block's absmax: bitsandbytes' atol 3e-3, rtol 1e-3 assume its states'
    scale; a momentum buffer of RMSprop is near 10)."""
    rng = np.random.default_rng(31)
    size, full, low, opt32, opt8 = protocol_pair(name, kwargs, rng)
    for step in range(1, 51):
        grad = (rng.standard_normal(size) * 0.01).astype(np.float32)
        opt32.step([grad])
        opt8.step([grad])
        assert np.array_equal(bits(full), bits(low)), f"params after step {step}"
        for key, signed in signs_of(opt8).items():
            got, want = dequantized(opt8.state[0], key, signed), opt32.state[0][key]
            bound = largest_error(signed) * np.repeat(opt8.state[0][key + "_absmax"], BLOCK)[:size]
            slack = 2 * np.spacing(np.abs(want))  # the float32 rounding of x / absmax and of code * absmax
            far = np.flatnonzero(np.abs(got.astype(np.float64) - want) > bound + slack)
            assert far.size == 0, (f"{key} after step {step}: {far.size} elements off by more than the map's precision, "
                                   f"the first {got[far[0]]!r} for {want[far[0]]!r}, bound {bound[far[0]]!r}")
            opt32.state[0][key][...] = got  # the next step starts from the same state


# bitsandbytes' 8-bit optimizers with its test settings. (Its RMSprop8bit,
# lr 0.01 and alpha 0.9, drifts to 1.4e-4 here: its update g / sqrt(v) is
# 100 times the grad and amplifies v's quantization error; bitsandbytes'
# test re-synchronises params and states every step, where every rule here
# has no error at all: the test above.)
DRIFT_CASES = [("Adam", {}), ("AdamW", {}), ("SGD", {"lr": 0.01, "momentum": 0.9}), ("Lion", {})]


@pytest.mark.parametrize("name, kwargs", DRIFT_CASES, ids=[f"{n}-{k}" for n, k in DRIFT_CASES])
def test_8bit_params_drift_from_the_32bit_run_within_bitsandbytes_error(name, kwargs):
    """The two runs from the same start with their own states, the 32-bit
    params set to the 8-bit ones every 10 steps (the states drift apart):
    the mean absolute error of the params stays below bitsandbytes' bound,
    6e-5, at every step."""
    rng = np.random.default_rng(32)
    size, full, low, opt32, opt8 = protocol_pair(name, kwargs, rng)
    worst = 0.0
    for step in range(1, 51):
        grad = (rng.standard_normal(size) * 0.01).astype(np.float32)
        opt32.step([grad])
        opt8.step([grad])
        worst = max(worst, float(np.mean(np.abs(full.astype(np.float64) - low))))
        if step % 10 == 0:
            full[...] = low
    assert 0 < worst < 6e-5, f"mean abs error {worst:.3g}"


# ------------------------------------------------------- memory, small tensors

def state_bytes(opt):
    return sum(v.nbytes for entry in opt.state for v in entry.values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("name, kwargs, arrays", [("AdamW8bit", {}, 2), ("Lion8bit", {}, 1),
                                                 ("SGD8bit", {"momentum": 0.9}, 1)])
def test_8bit_state_is_one_byte_per_element_per_array_and_a_scale_per_block(name, kwargs, arrays):
    n = 1_000_003
    opt = getattr(fusedopt, name)([np.zeros(n, bfloat16)], **kwargs)
    assert state_bytes(opt) == arrays * (n + 4 * -(-n // BLOCK))  # about 2 bytes per element for Adam
    assert state_bytes(opt) / n == pytest.approx(arrays * (1 + 4 / BLOCK), rel=1e-5)
    opt.step([np.ones(n, bfloat16)])
    assert state_bytes(opt) == arrays * (n + 4 * -(-n // BLOCK))


@pytest.mark.parametrize("dtype", [np.float32, bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_params_below_min_8bit_size_are_the_32bit_rule_bitwise(name, kwargs, dtype, rng):
    """4095 elements keep float32 state (for a bfloat16 param too, as
    bitsandbytes); 4096 are quantized."""
    params = [(rng.standard_normal(n) * 0.1).astype(dtype) for n in (4095, 100, 4096)]
    cls = getattr(fusedopt, name)
    eight = cls([p.copy() for p in params], **kwargs, state_bits=8)
    full = cls([p.copy() for p in params[:2]], **kwargs, state_dtype=np.float32)
    for _ in range(3):
        grads = [(rng.standard_normal(p.size) * 0.01).astype(dtype) for p in params]
        eight.step(grads)
        full.step(grads[:2])
    for i in range(2):
        assert np.array_equal(bits(eight.param_groups[0]["params"][i]), bits(full.param_groups[0]["params"][i]))
        assert eight.state[i].keys() == full.state[i].keys()
        for key, value in full.state[i].items():
            assert (np.array_equal(bits(eight.state[i][key]), bits(value)) if isinstance(value, np.ndarray)
                    else eight.state[i][key] == value), key
    assert all(v.dtype == np.uint8 for k, v in eight.state[2].items() if k in signs_of(eight))


def test_state_bits_16_is_bfloat16_state(rng):
    w = (rng.standard_normal(5000) * 0.1).astype(np.float32)
    a, b = fusedopt.Adam([w.copy()], state_bits=16), fusedopt.Adam([w.copy()], state_dtype=bfloat16)
    for _ in range(3):
        g = (rng.standard_normal(5000) * 0.01).astype(np.float32)
        a.step([g])
        b.step([g])
    assert_same_bits(a, b, "state_bits=16 against state_dtype=bfloat16")


# ------------------------------------------------------------- resume

@pytest.mark.parametrize("precision", QUANTIZED_PRECISIONS[:4], ids=QUANTIZED_PRECISION_IDS[:4])
@pytest.mark.parametrize("name, kwargs", FULL_STATE_CASES, ids=FULL_STATE_CASE_IDS)
def test_resume_from_a_checkpoint_is_bitwise(tmp_path, name, kwargs, precision, rng):
    """fusedopt.save after 3 steps, load into a fresh optimizer, 3 more steps:
    the uninterrupted run's bits; the group keeps the 8-bit settings."""
    sizes = [5000, 300, 9000]
    start = precision.params(rng, sizes)
    grads = [precision.grads(rng, sizes) for _ in range(6)]
    options = {**kwargs, **precision.kwargs(name), "min_8bit_size": 1000}
    cls = getattr(fusedopt, name)
    whole = cls([p.copy() for p in start], **options)
    for g in grads:
        whole.step(g)
    first_params = [p.copy() for p in start]
    first = cls(first_params, **options)
    for g in grads[:3]:
        first.step(g)
    fusedopt.save(tmp_path / "run.npz", first)
    resumed = cls([p.copy() for p in first_params], **options)
    fusedopt.load(tmp_path / "run.npz", resumed)
    saved = np.load(tmp_path / "run.npz")
    assert saved["optimizer/state/0/" + next(iter(signs_of(first)))].dtype == np.uint8
    for g in grads[3:]:
        resumed.step(g)
    assert_same_bits(resumed, whole, "resumed from a checkpoint")
    group = resumed.state_dict()["param_groups"][0]
    assert (group["state_bits"], group["block_size"], group["min_8bit_size"]) == (8, precision.options.get(
        "block_size", 256), 1000)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("options, error, pattern", [
    ({"state_bits": 4}, ValueError, r"state_bits must be 8, 16 or 32, got 4 \(param group 0\)"),
    ({"state_bits": "8"}, TypeError, r"state_bits \(param group 0\) must be an int"),
    ({"state_bits": True}, TypeError, r"state_bits \(param group 0\) must be an int"),
    ({"state_bits": 8, "block_size": 100}, ValueError, r"block_size must be a positive multiple of 64"),
    ({"state_bits": 8, "block_size": 0}, ValueError, r"block_size must be a positive multiple of 64"),
    ({"state_bits": 8, "block_size": -64}, ValueError, r"block_size must be a positive multiple of 64"),
    ({"state_bits": 8, "block_size": 8192}, ValueError, r"block_size .* up to 4096"),
    ({"state_bits": 8, "block_size": 512.0}, TypeError, r"block_size \(param group 0\) must be an int"),
    ({"state_bits": 8, "min_8bit_size": -1}, ValueError, r"min_8bit_size must be an int >= 0"),
    ({"state_bits": 16, "state_dtype": np.float16}, ValueError, r"state_bits=16 is state_dtype='bfloat16'"),
])
def test_bad_8bit_options_are_refused(options, error, pattern):
    with pytest.raises(error, match=pattern):
        fusedopt.Adam([np.zeros(5000, np.float32)], **options)


def test_float64_params_refuse_8bit_state():
    with pytest.raises(ValueError, match=r"state_bits=8 is for float32, bfloat16 and float16 params.*float64"):
        fusedopt.Adam8bit([np.zeros(5000, np.float64)])


def snapshot(opt):
    return {label: (value.copy() if isinstance(value, np.ndarray) else value)
            for label, value in all_arrays(opt).items()}


def assert_unchanged(opt, before):
    after = all_arrays(opt)
    assert after.keys() == before.keys()
    for label, value in before.items():
        assert (np.array_equal(bits(after[label]), bits(value)) if isinstance(value, np.ndarray)
                else after[label] == value), label


def edit_group(key, value):
    def edit(opt):
        opt.param_groups[0][key] = value
    return edit


def edit_state(key, make):
    def edit(opt):
        opt.state[0][key] = make(opt.state[0][key])
    return edit


MID_RUN_EDITS = [
    (edit_group("state_bits", 32), ValueError, r"state\[0\]\['exp_avg'\] holds 8-bit codes, but param group 0 has "
                                               r"state_bits=32.*changing state_bits or min_8bit_size mid-run"),
    (edit_group("min_8bit_size", 10_000), ValueError, r"holds 8-bit codes.*min_8bit_size=10000"),
    (edit_group("block_size", 512), ValueError, r"state\[0\]\['exp_avg_absmax'\] has shape \(20,\), want \(10,\).*"
                                                r"block_size=512.*changing block_size mid-run"),
    (edit_state("exp_avg", lambda a: a.astype(np.int8)), TypeError, r"state\[0\]\['exp_avg'\] has dtype int8: 8-bit "
                                                                    r"state is uint8 codes"),
    (edit_state("exp_avg", lambda a: a.astype(np.float32)), TypeError, r"has dtype float32: 8-bit state is uint8"),
    (edit_state("exp_avg", lambda a: a[:-1].copy()), ValueError, r"state\[0\]\['exp_avg'\] has shape \(4999,\)"),
    (edit_state("exp_avg_sq_absmax", lambda a: a[:-1].copy()), ValueError, r"exp_avg_sq_absmax'\] has shape \(19,\)"),
    (edit_state("exp_avg_absmax", lambda a: a.astype(np.float64)), TypeError, r"exp_avg_absmax'\] has dtype float64"),
    (edit_state("exp_avg_absmax", lambda a: None), ValueError, r"exp_avg_absmax'\] is missing"),
]


@pytest.mark.parametrize("edit, error, pattern", MID_RUN_EDITS, ids=[p for _, _, p in MID_RUN_EDITS])
def test_a_step_on_state_that_no_longer_matches_is_refused_and_changes_nothing(edit, error, pattern, rng):
    w = (rng.standard_normal(5000) * 0.1).astype(np.float32)
    opt = fusedopt.AdamW8bit([w, np.zeros(7000, np.float32)])
    grads = [(rng.standard_normal(n) * 0.01).astype(np.float32) for n in (5000, 7000)]
    opt.step(grads)
    edit(opt)
    before = snapshot(opt)
    with pytest.raises(error, match=pattern):
        opt.step(grads)
    assert_unchanged(opt, before)


def test_a_state_dict_of_other_8bit_settings_is_refused_and_changes_nothing(rng):
    w = (rng.standard_normal(5000) * 0.1).astype(np.float32)
    saved = fusedopt.AdamW8bit([w.copy()], block_size=512)
    saved.step([np.ones(5000, np.float32)])
    target = fusedopt.AdamW8bit([w.copy()])
    target.step([np.ones(5000, np.float32)])
    before = snapshot(target)
    state_dict = saved.state_dict()
    state_dict["param_groups"][0]["block_size"] = 256  # the scales say 512
    with pytest.raises(ValueError, match=r"exp_avg_absmax'\] has shape \(10,\), want \(20,\).*another block_size"):
        target.load_state_dict(state_dict)
    unquantized = fusedopt.AdamW([w.copy()]).state_dict()
    unquantized["param_groups"][0].update(state_bits=8, block_size=256, min_8bit_size=4096)
    with pytest.raises(TypeError, match=r"'exp_avg'\] has dtype float32: this param keeps 8-bit state"):
        target.load_state_dict(unquantized)
    with pytest.raises(ValueError, match=r"holds 8-bit codes, but this param keeps unquantized state"):
        fusedopt.AdamW([w.copy()]).load_state_dict({**saved.state_dict(), "param_groups": [
            {**saved.state_dict()["param_groups"][0], "state_bits": 32}]})
    assert_unchanged(target, before)
