"""Plain NumPy implementations of every rule, behind the same class API.

Written the way a user writes an optimizer in NumPy: one loop over the
params, one line per formula, each operation a separate NumPy expression.
They are the tests' oracle and the benchmarks' baseline. Each line
evaluates in the order the compiled kernels do, so the two agree to the
last bit on every target; the tests still allow the few ULP that
docs/algorithms.md allows.

The constructors, validation and state layout are those of the fused
classes (these subclass them); only ``step`` differs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import _core, optimizers
from .optimizer import Optimizer
from .precision import DTYPES, STORAGE_DEFAULTS, absmax_key, bfloat16_dtype, deciding_elements, is_bfloat16
from .rule import nonfinite_grad_error

__all__ = ["Momentum", "SGD", "Adadelta", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax",
           "Lion"]


class _NumpyStep(Optimizer):
    """The loop over params; subclasses write one param's update."""

    def step(self, grads: Sequence[np.ndarray | None], grad_scale: float | None = None) -> bool:
        grads = list(grads)
        params = [(group, p) for group in self.param_groups for p in group["params"]]
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} params")
        if self.nonfinite != "apply":
            for i, grad in enumerate(grads):
                if grad is not None and not np.isfinite(grad).all():
                    self.skipped_steps += 1
                    if self.nonfinite == "raise":
                        raise nonfinite_grad_error(grad, i)
                    return False
        for position, ((group, param), grad, state) in enumerate(zip(params, grads, self.state)):
            if grad is None:
                continue
            hyper = {k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
                         else v) for k, v in group.items()
                     if k != "params" and k not in STORAGE_DEFAULTS and k != "_random_index"}
            state["step"] += 1
            staging = _Staging(group, param, state, _random_index(group, param, position),
                               self.rule.state_signs(group))
            w, g, working = staging.load(grad, grad_scale)
            self._update(w, g, working, **hyper)
            staging.store(w, working)
        return True

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, Any], **hyper: Any) -> None:
        raise NotImplementedError


# ------------------------------------------------------------- precisions
# What the core's staged kernel does, in NumPy: 16-bit arrays are upcast to
# float32, the rule's float32 update runs, and the written arrays are stored
# back with the same rounding, bit for bit (csrc/kernels.cpp, "16-bit storage").

_U32 = np.uint32


def to_float32(a: np.ndarray) -> np.ndarray:
    """A float32 copy of a bfloat16, float16 or float32 array (exact)."""
    if is_bfloat16(a.dtype):
        return (a.view(np.uint16).astype(_U32) << 16).view(np.float32)
    return a.astype(np.float32)


def bf16_nearest(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16, round to nearest even; NaN -> quiet NaN of its sign (as ml_dtypes)."""
    u = np.ascontiguousarray(x, np.float32).view(_U32)
    rounded = (u + _U32(0x7FFF) + ((u >> 16) & _U32(1))) >> 16
    nan = ((u >> 16) & _U32(0x8000)) | _U32(0x7FC0)
    return np.where((u & _U32(0x7FFFFFFF)) > _U32(0x7F800000), nan, rounded).astype(np.uint16).view(bfloat16_dtype())


def f16_nearest(x: np.ndarray) -> np.ndarray:
    """float32 -> float16, round to nearest even; NaN keeps the top of its payload (as NumPy)."""
    u = np.ascontiguousarray(x, np.float32).view(_U32)
    sign = (u >> 16) & _U32(0x8000)
    a = u & _U32(0x7FFFFFFF)
    normal = (a - _U32((127 - 15) << 23) + _U32(0xFFF) + ((a >> 13) & _U32(1))) >> 13
    half = np.float32(0.5)
    with np.errstate(invalid="ignore"):  # a signalling NaN's lane; the NaN branch below replaces it
        subnormal = (a.view(np.float32) + half).view(_U32) - half.view(_U32)
    nan = _U32(0x7C00) | ((a >> 13) & _U32(0x3FF)) | np.where((a & _U32(0x7FE000)) == 0, _U32(1), _U32(0))
    out = np.where(a < _U32(0x38800000), subnormal, normal)
    out = np.where(a >= _U32(0x47800000), _U32(0x7C00), out)
    out = np.where(a > _U32(0x7F800000), nan, out)
    return (sign | out).astype(np.uint16).view(np.float16)


def round_nearest(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 values stored as ``dtype`` with the core's round-to-nearest-even."""
    if is_bfloat16(dtype):
        return bf16_nearest(x)
    if dtype == np.float16:
        return f16_nearest(x)
    return x.astype(dtype)


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> 16)
    x = x * _U32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * _U32(0xC2B2AE35)
    return x ^ (x >> 16)


def _mix64(x: int) -> int:
    mask = (1 << 64) - 1
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def random_key(seed: int, step: int, position: int) -> int:
    """The per-tensor key of stochastic rounding: (seed, step, the param's position)."""
    return _mix64(seed ^ _mix64(step ^ _mix64(position)))


def random16(key: int, count: int, first: int = 0) -> np.ndarray:
    """16 random bits for each element index first .. first+count-1 of a tensor."""
    index = np.arange(first, first + count, dtype=np.uint64)
    low, high = (index & np.uint64(0xFFFFFFFF)).astype(_U32), (index >> np.uint64(32)).astype(_U32)
    x = _mix32(low ^ _U32(key & 0xFFFFFFFF))
    return _mix32(x ^ high ^ _U32(key >> 32)) >> 16


def round_stochastic(x: np.ndarray, dtype: np.dtype, random: np.ndarray) -> np.ndarray:
    """float32 values stored as ``dtype`` (bfloat16 or float16) with stochastic rounding,
    ``random`` holding 16 random bits per element."""
    u = np.ascontiguousarray(x, np.float32).view(_U32).reshape(-1)
    a = u & _U32(0x7FFFFFFF)
    if is_bfloat16(dtype):
        out = ((u + random) >> 16).astype(np.uint16)
        return np.where(a > _U32(0x7F800000), bf16_nearest(x).reshape(-1).view(np.uint16), out).view(bfloat16_dtype())
    e = a >> 23
    normal_kept = (a - _U32((127 - 15) << 23)) >> 13
    normal_scaled = (a & _U32(0x1FFF)) << 3
    mantissa = np.where(e == 0, a, (a & _U32(0x7FFFFF)) | _U32(0x800000))
    drop = _U32(126) - np.where(e == 0, _U32(1), e)
    shift = np.minimum(drop, _U32(31))
    sub_kept = mantissa >> shift
    sub_dropped = mantissa & ((_U32(1) << shift) - _U32(1))
    with np.errstate(over="ignore"):
        down = np.minimum(drop - _U32(16), _U32(31))
    up_shift = np.where(drop < 16, _U32(16) - np.minimum(drop, _U32(16)), _U32(0))
    sub_scaled = np.where(drop >= 16, sub_dropped >> down, sub_dropped << up_shift)
    is_normal = e >= 113
    kept = np.where(is_normal, normal_kept, sub_kept)
    scaled = np.where(is_normal, normal_scaled, sub_scaled)
    out = ((u >> 16) & _U32(0x8000)) | (kept + (scaled > random).astype(_U32))
    nearest = f16_nearest(x).reshape(-1).view(np.uint16).astype(_U32)
    return np.where(a >= _U32(0x47800000), nearest, out).astype(np.uint16).view(np.float16)


def _kahan_store(updated: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
    """w, c (16-bit) <- the Kahan-compensated store of the float32 result ``updated``."""
    old = to_float32(w)
    y = to_float32(c) + (updated - old)
    stored = round_nearest(old + y, w.dtype)
    w[...] = stored
    c[...] = round_nearest(y - (to_float32(stored) - old), c.dtype)


# ------------------------------------------------------------- 8-bit state
# bitsandbytes' dynamic tree map and block-wise quantization, as the core
# computes them (csrc/quantize.cpp builds the map, csrc/kernels.cpp encodes).

_DECADES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 ascending float32 codes of bitsandbytes' create_dynamic_map(signed), computed in
    float64 and rounded once: per decade 10**(i-6), the midpoints of linspace(0.1, 1, k + 1)
    (k = 2**i with both signs, or 2**(i+1) unsigned), then 0 and 1."""
    codes = [np.float32(0.0), np.float32(1.0)]
    for i, decade in enumerate(_DECADES):
        count = 2**i if signed else 2 ** (i + 1)
        start, stop = 0.1, 1.0
        boundaries = np.arange(count + 1, dtype=np.float64) * ((stop - start) / count) + start  # as np.linspace
        boundaries[-1] = stop
        scaled = decade * ((boundaries[:-1] + boundaries[1:]) / 2.0)
        codes.extend(scaled.astype(np.float32))
        if signed:
            codes.extend((-scaled).astype(np.float32))
    return np.sort(np.array(codes, dtype=np.float32))


def map_thresholds(codes: np.ndarray) -> np.ndarray:
    """For each pair of neighbouring codes, the smallest float32 nearer the upper one (ties go
    up): the exact midpoint, rounded up; the last entry is inf. A value's code is the number of
    thresholds <= it."""
    middle = (codes[:-1].astype(np.float64) + codes[1:]) / 2.0
    thresholds = middle.astype(np.float32)
    below = thresholds.astype(np.float64) < middle
    thresholds[below] = np.nextafter(thresholds[below], np.float32(np.inf))
    return np.append(thresholds, np.float32(np.inf))


_MAPS = {signed: (dynamic_map(signed), map_thresholds(dynamic_map(signed))) for signed in (True, False)}


def _block_sizes(count: int, block_size: int) -> np.ndarray:
    sizes = np.full(-(-count // block_size), block_size)
    if count % block_size:
        sizes[-1] = count % block_size
    return sizes


def quantize(values: np.ndarray, block_size: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 codes, float32 absmax per block) of float32 ``values`` in memory order: absmax is
    the largest magnitude of the block (NaN if it holds a NaN or an infinity), each code the
    exact nearest to value / absmax (the code of 0 in a block whose absmax is 0 or NaN)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    codes_table, thresholds = _MAPS[signed]
    if flat.size == 0:
        return np.zeros(values.shape, np.uint8), np.zeros(0, np.float32)
    sizes = _block_sizes(flat.size, block_size)
    magnitude = flat.view(_U32) & _U32(0x7FFFFFFF)
    largest = np.maximum.reduceat(magnitude, np.arange(0, flat.size, block_size))
    absmax = np.where(largest >= _U32(0x7F800000), np.float32(np.nan), largest.view(np.float32))
    scaled = np.repeat(absmax > 0, sizes)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(scaled, flat / np.repeat(np.where(absmax > 0, absmax, np.float32(1)), sizes),
                              np.float32(0))
    codes = np.searchsorted(thresholds, normalized, side="right").astype(np.uint8)
    return codes.reshape(values.shape), absmax.astype(np.float32)


def dequantize(codes: np.ndarray, absmax: np.ndarray, block_size: int, signed: bool) -> np.ndarray:
    """float32 values: each code's value times its block's absmax."""
    flat = codes.reshape(-1)
    if flat.size == 0:
        return np.zeros(codes.shape, np.float32)
    values = _MAPS[signed][0][flat] * np.repeat(absmax, _block_sizes(flat.size, block_size))
    return values.astype(np.float32).reshape(codes.shape)


def _random_index(group: dict[str, Any], param: np.ndarray, position: int) -> tuple[int, int, int]:
    """(position, element offset) keying a param's stochastic rounding, and
    the element count deciding its 8-bit state: its own position, 0 and its
    size, or what a group of shard pieces says (the private "_random_index"
    of fusedopt.distributed: the full param's position, where the piece
    starts in it and the full param's size; csrc/rules.hpp, StorageOptions)."""
    pairs = group.get("_random_index")
    if pairs is None:
        return position, 0, param.size
    k = next(k for k, p in enumerate(group["params"]) if p is param)
    return pairs[k][0], pairs[k][1], deciding_elements(group, k, param)


class _Staging:
    """One param's arrays as the update sees them (the compute dtype) and
    their store back, as the core's staged kernel does."""

    def __init__(self, group: dict[str, Any], param: np.ndarray, state: dict[str, Any],
                 random_index: tuple[int, int, int], signs: dict[str, bool]):
        self.group, self.param, self.state, self.random_index, self.signs = group, param, state, random_index, signs
        self.compute = np.dtype(np.float64 if param.dtype == np.float64 else np.float32)
        self.block_size = group.get("block_size", STORAGE_DEFAULTS["block_size"])
        self.quantized = _core.keeps_8bit_state(group, random_index[2])  # the core's one decision
        self.scale_keys = {absmax_key(key) for key in signs} if self.quantized else set()

    def _state_dtype(self, key: str) -> np.dtype:
        spec = self.group.get("state_dtype")
        if isinstance(spec, dict):
            spec = spec.get(key)
        if self.group.get("state_bits") == 16:
            spec = "bfloat16"
        if not spec and self.group.get("state_bits") == 8:
            spec = "float32"  # an 8-bit group's small params keep 32-bit state
        return DTYPES[spec] if spec else self.param.dtype

    def load(self, grad: np.ndarray, grad_scale: float | None):
        w = self.param if self.param.dtype == self.compute else to_float32(self.param)
        if self.group.get("master_weights"):
            w = self.state.setdefault("master_param", to_float32(self.param))
        g = grad if grad.dtype == self.compute else to_float32(grad)
        if grad_scale is not None and grad_scale != 1:
            g = g / self.compute.type(grad_scale)
        working = {}
        for key, value in self.state.items():
            if key in ("master_param", "kahan_comp") or key in self.scale_keys:
                continue
            is_array = isinstance(value, np.ndarray)
            if is_array and self.quantized and key in self.signs:
                working[key] = dequantize(value, self.state[absmax_key(key)], self.block_size, self.signs[key])
                continue
            working[key] = to_float32(value) if is_array and value.dtype != self.compute else value
        return w, g, working

    def store(self, w: np.ndarray, working: dict[str, Any]) -> None:
        for key, value in working.items():
            if not isinstance(value, np.ndarray):
                self.state[key] = value
                continue
            existing = self.state.get(key)
            if self.quantized and key in self.signs:
                codes, absmax = quantize(value, self.block_size, self.signs[key])
                if existing is None:  # created by this step
                    self.state[key], self.state[absmax_key(key)] = codes, absmax
                else:
                    existing[...], self.state[absmax_key(key)][...] = codes, absmax
                continue
            if existing is None or not isinstance(existing, np.ndarray):  # created by this step
                self.state[key] = round_nearest(value, self._state_dtype(key))
            elif value is not existing:
                existing[...] = round_nearest(value, existing.dtype)
        if self.param.dtype == self.compute:
            return  # updated in place
        if self.group.get("master_weights"):
            self.param[...] = round_nearest(w, self.param.dtype)
        elif self.group.get("kahan_sum"):
            c = self.state.setdefault("kahan_comp", np.zeros_like(self.param))
            _kahan_store(w, self.param, c)
        elif self.group.get("rounding") == "stochastic":
            position, first, _ = self.random_index
            key = random_key(self.group.get("seed", 0), self.state["step"], position)
            rounded = round_stochastic(w, self.param.dtype, random16(key, self.param.size, first))
            self.param[...] = rounded.reshape(self.param.shape)
        else:
            self.param[...] = round_nearest(w, self.param.dtype)


class Momentum(_NumpyStep, optimizers.Momentum):
    def _update(self, w, g, state, *, lr, momentum, **_):
        v = state["velocity"]
        v[...] = momentum * v - lr * g
        w += v


class SGD(_NumpyStep, optimizers.SGD):
    def _update(self, w, g, state, *, lr, momentum, dampening, weight_decay, nesterov, maximize, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        if momentum != 0:
            if state["step"] == 1 or "momentum_buffer" not in state:
                b = state["momentum_buffer"] = g.copy()  # torch starts from the first gradient
            else:
                b = state["momentum_buffer"]
                b[...] = momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        w -= lr * g


class Adadelta(_NumpyStep, optimizers.Adadelta):
    def _update(self, w, g, state, *, lr, rho, eps, weight_decay, maximize, scale, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        square_avg = state["square_avg"]
        square_avg[...] = rho * square_avg + (1 - rho) * g**2
        if scale == "weights":
            square_weight_avg = state.setdefault("square_weight_avg", np.zeros_like(w))
            square_weight_avg[...] = rho * square_weight_avg + (1 - rho) * w**2
            w -= lr * np.sqrt((square_weight_avg + eps) / (square_avg + eps)) * g
        else:
            acc_delta = state.setdefault("acc_delta", np.zeros_like(w))
            dx = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
            acc_delta[...] = rho * acc_delta + (1 - rho) * dx**2
            w -= lr * dx


class Adam(_NumpyStep, optimizers.Adam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, amsgrad, maximize,
                decoupled_weight_decay, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        if maximize:
            g = -g
        if decoupled_weight_decay:
            w *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * g**2
        if amsgrad:
            v_max = state.setdefault("max_exp_avg_sq", np.zeros_like(w))
            np.maximum(v_max, v, out=v_max)
            v = v_max
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        w -= lr / bias_correction1 * m / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)


class AdamW(Adam, optimizers.AdamW):
    pass


class RMSprop(_NumpyStep, optimizers.RMSprop):
    def _update(self, w, g, state, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, **_):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        square_avg = state["square_avg"]
        square_avg[...] = alpha * square_avg + (1 - alpha) * (g * g)
        mean_square = square_avg
        if centered:
            grad_avg = state.setdefault("grad_avg", np.zeros_like(w))
            grad_avg[...] = alpha * grad_avg + (1 - alpha) * g
            mean_square = square_avg - grad_avg * grad_avg
        avg = np.sqrt(mean_square) + eps
        if momentum > 0:
            b = state.setdefault("momentum_buffer", np.zeros_like(w))
            b[...] = momentum * b + g / avg
            w -= lr * b
        else:
            w -= lr * (g / avg)


class Adagrad(_NumpyStep, optimizers.Adagrad):
    def _update(self, w, g, state, *, lr, lr_decay, weight_decay, eps, maximize, **_):
        t = state["step"]
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        step_size = lr / (1 + (t - 1) * lr_decay)
        accumulator = state["sum"]
        accumulator[...] = accumulator + g * g
        std = np.sqrt(accumulator) + eps
        w -= step_size * (g / std)


class NAdam(_NumpyStep, optimizers.NAdam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        state["mu_product"] = mu_product = state["mu_product"] * mu
        mu_product_next = mu_product * mu_next
        if maximize:
            g = -g
        if decoupled_weight_decay:
            w *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * (g * g)
        denom = np.sqrt(v / (1 - beta2**t)) + eps
        w[...] = (w - lr * (1 - mu) / (1 - mu_product) * (g / denom)
                  - lr * mu_next / (1 - mu_product_next) * (m / denom))


class RAdam(_NumpyStep, optimizers.RAdam):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        if maximize:
            g = -g
        if decoupled_weight_decay:
            w *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * w
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m[...] = beta1 * m + (1 - beta1) * g
        v[...] = beta2 * v + (1 - beta2) * (g * g)
        beta2_t = beta2**t
        bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2_t / bias_correction2
        if rho_t > 5:
            rectification = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            step_size = lr / bias_correction1 * math.sqrt(bias_correction2) * rectification
            w[...] = w - step_size * (m / (np.sqrt(v) + eps))
        else:
            w[...] = w - lr / bias_correction1 * m


class Adamax(_NumpyStep, optimizers.Adamax):
    def _update(self, w, g, state, *, lr, betas, eps, weight_decay, maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        t = state["step"]
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * w
        m, u = state["exp_avg"], state["exp_inf"]
        m[...] = beta1 * m + (1 - beta1) * g
        u[...] = np.maximum(beta2 * u, np.abs(g) + eps)
        w -= lr / (1 - beta1**t) * (m / u)


class Lion(_NumpyStep, optimizers.Lion):
    def _update(self, w, g, state, *, lr, betas, weight_decay, maximize, **_):
        beta1, beta2 = float(betas[0]), float(betas[1])
        if maximize:
            g = -g
        m = state["exp_avg"]
        update = np.sign(beta1 * m + (1 - beta1) * g) + 0.0  # + 0.0: sign(-0.0) is +0, as the kernel's
        w[...] = w * (1 - lr * weight_decay) - lr * update
        m[...] = beta2 * m + (1 - beta2) * g
