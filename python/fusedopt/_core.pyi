"""fusedopt's compiled core (csrc/, bound in csrc/bindings.cpp). Private: use the fusedopt package.

Where things are defined:
- each update rule, e.g. ``adam``, is an instance of :class:`Rule` made from the one list
  csrc/rule_list.hpp; ``adam.step`` is ``fusedopt::step<AdamRule>`` (csrc/step.cpp), its
  hyperparameters and per-step scalars are ``AdamRule`` (csrc/rules.hpp, csrc/rules.cpp),
  its loop is ``adam<T>`` (csrc/kernels.cpp);
- the gradient passes (grad_norm, scale_grads, clamp_grads, first_nonfinite), check_params
  and roof are in csrc/step.cpp; threads in csrc/parallel.cpp; targets in csrc/dispatch.cpp.
"""

from typing import Any, Sequence

import numpy as np

MAX_STEP: int
"""A state's "step" is an int in [0, MAX_STEP) (2**53 - 1: t = step + 1 stays exact in double)."""

class StepCache:
    """What Rule.step_cached read and checked at one step, for the next (csrc/step.hpp)."""

    @property
    def hits(self) -> int:
        """How many steps used what the cache held (the others were full steps)."""

class StepLock:
    """A reentrant lock that Rule.step holds for a whole step (its `lock` argument) and that
    `with` takes; a thread waiting for it releases the GIL."""

    def __enter__(self) -> None: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def held_by_me(self) -> bool:
        """Whether the calling thread holds the lock."""

class Rule:
    """One update rule of the compiled core (see csrc/rule_list.hpp)."""

    @property
    def name(self) -> str:
        """The rule's name, e.g. "adam"."""
    @property
    def summary(self) -> str:
        """One line on what the rule is."""
    def step(
        self,
        param_groups: Sequence[dict[str, Any]],
        grads: Sequence[np.ndarray | None],
        state: Sequence[dict[str, Any]],
        check_finite: bool = False,
        grad_scale: float | None = None,
        lock: StepLock | None = None,
    ) -> int | None:
        """One step over every param of every group in one call and one parallel region; with
        check_finite, returns the index of the first non-finite grad (nothing changed), else None."""
    def step_cached(
        self,
        cache: StepCache,
        param_groups: Sequence[dict[str, Any]],
        grads: Sequence[np.ndarray | None],
        state: Sequence[dict[str, Any]],
        check_finite: bool = False,
        grad_scale: float | None = None,
        lock: StepLock | None = None,
    ) -> int | None:
        """step(), keeping what it checked in `cache` for the next step with the same objects (which
        then reads again only hyperparameters, step counts and scalar state). For arrays only the
        caller holds."""
    def check_group(self, group: dict[str, Any], index: int = 0) -> None:
        """Validate one param group's hyperparameters (errors name group `index`)."""
    def state_keys(self, group: dict[str, Any]) -> list[str]:
        """The names of the state arrays the rule keeps for a group's params, in stream order."""
    def state_signs(self, group: dict[str, Any]) -> dict[str, bool]:
        """{state array key: True if signed, False if never negative}: the 8-bit map each array uses."""
    def state_spec(self, group: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """({state array key: initial element value}, {scalar state key: initial value})."""
    def initial_state(self, group: dict[str, Any], param: np.ndarray, index: int = 0) -> dict[str, Any]:
        """One param's state before its first step: "step" 0 and every state at its initial value."""

momentum: Rule
"""Heavy-ball momentum (the course's form): MomentumRule, momentum<T>."""
sgd: Rule
"""SGD as torch.optim.SGD: SgdRule, sgd<T>."""
adadelta: Rule
"""Adadelta (Zeiler's, or the course's variant): AdadeltaRule, adadelta<T>."""
adam: Rule
"""Adam / AdamW / AMSGrad as torch.optim.Adam: AdamRule, adam<T>."""
rmsprop: Rule
"""RMSprop as torch.optim.RMSprop: RmspropRule, rmsprop<T>."""
adagrad: Rule
"""Adagrad as torch.optim.Adagrad: AdagradRule, adagrad<T>."""
nadam: Rule
"""NAdam as torch.optim.NAdam: NadamRule, nadam<T>."""
radam: Rule
"""RAdam as torch.optim.RAdam: RadamRule, radam<T>."""
adamax: Rule
"""Adamax as torch.optim.Adamax: AdamaxRule, adamax<T>."""
lion: Rule
"""Lion (Chen et al. 2023): LionRule, lion<T>."""
rules: dict[str, Rule]
"""Every rule by name, in rule_list.hpp order."""

def grad_norm(grads: Sequence[np.ndarray | None], norm_type: float = 2.0) -> float:
    """The norm_type-norm (> 0 or inf) of all grads as one vector, in double; the same for every thread count."""

def scale_grads(grads: Sequence[np.ndarray | None], factor: float) -> None:
    """g *= factor for every grad, in place, in one parallel region."""

def clamp_grads(grads: Sequence[np.ndarray | None], limit: float) -> None:
    """g = clamp(g, -limit, limit) for every grad, in place (NaN stays NaN)."""

def first_nonfinite(grads: Sequence[np.ndarray | None]) -> int | None:
    """The index of the first grad holding a NaN or an infinity, or None."""

def check_params(params: Sequence[np.ndarray], first_index: int = 0) -> None:
    """Check that arrays can be params: writeable, aligned, contiguous float arrays, not overlapping."""

def convert(source: np.ndarray, destination: np.ndarray) -> None:
    """destination <- source (one of them float32) with the kernels' conversions: round to nearest even."""

def quantization_map(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(codes, thresholds) of 8-bit state: the 256 ascending float32 codes (bitsandbytes' dynamic map), and
    per pair of neighbours the smallest float32 nearer the upper code (ties up); the last threshold is inf."""

def keeps_8bit_state(group: dict[str, Any], elements: int, index: int = 0) -> bool:
    """Whether a param of `elements` elements in this group keeps 8-bit (block-quantized) state."""

def quantize(values: np.ndarray, codes: np.ndarray, absmax: np.ndarray, block_size: int, signed: bool) -> None:
    """codes (uint8), absmax (float32, one per block) <- float32 values, with the active target's kernel (tests)."""

def dequantize(codes: np.ndarray, absmax: np.ndarray, values: np.ndarray, block_size: int, signed: bool) -> None:
    """values (float32) <- codes * absmax of their block, with the active target's kernel (tests)."""

def divide_by_step_constant(x: np.ndarray, divisor: float, out: np.ndarray) -> None:
    """out <- x / float32(divisor) as the active target's vector kernels divide by a per-step
    constant (Adam's sqrt(1 - beta2^t); tests)."""

def roof(tensors: Sequence[Sequence[np.ndarray]]) -> None:
    """Memory roof: for each [a_1, ..., a_k, b], a_i += b in place (benchmarks only)."""

def bytes_roof(
    tensors: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray]]],
) -> None:
    """Memory roof of mixed storage: for each (updated, read, stored), the read arrays' sum (as
    unsigned integers of their width) is added to the updated ones and written to the stored ones
    (benchmarks only)."""

TORCH_PLAN_REBUILD: int
TORCH_PLAN_GROUP_VALUES: int
TORCH_PLAN_NEW_GRADS: int
TORCH_PLAN_MIRRORS_EDITED: int

def check_torch_plan(plan: Any, param_groups: list[dict[str, Any]], state: dict[Any, Any]) -> tuple[int, list[Any] | None]:
    """fusedopt.torch's per-step check of its cached plan (a _Plan): (flags, grads), flags 0 when
    the plan still describes the optimizer, else TORCH_PLAN_* bits; grads: each plan param's .grad."""

def unowned_view(dtype: np.dtype, shape: Sequence[int], address: int) -> np.ndarray:
    """fusedopt.torch's view of a gradient's memory, neither owning nor keeping it alive (private)."""

def record_torch_plan(plan: Any) -> list[float]:
    """Copies the core's counts into fusedopt.torch's 0-d state tensors; returns what they now hold."""

def num_threads() -> int:
    """The thread count a large step uses now."""

def thread_override() -> int:
    """The thread count fixed by set_thread_override or FUSEDOPT_NUM_THREADS, 0 if none."""

def set_thread_override(count: int) -> int:
    """Fix the thread count (0 unfixes it); returns the previous override."""

def scoped_thread_override() -> int:
    """The thread count fixed for the calling thread only, 0 if none."""

def set_scoped_thread_override(count: int) -> int:
    """Fix the thread count of the calling thread's steps (0 unfixes it); returns the previous one."""

def contention_stats() -> dict[str, int]:
    """What the default thread count did about a busy machine: team_steps, serial_steps, stalls,
    stall_streak, serial_budget_ns (see csrc/parallel.hpp)."""

def last_team_size() -> int:
    """How many threads ran the most recent step (1 on the serial path)."""

def serial_cutoff_bytes() -> int:
    """Steps moving fewer bytes than this run on the calling thread."""

def set_serial_cutoff_bytes(bytes: int) -> int:
    """Set the serial cutoff; returns the previous one."""

def chunked_step_bytes() -> int:
    """Team steps moving fewer bytes are split one piece per thread; larger ones are chunked."""

def set_chunked_step_bytes(bytes: int) -> int:
    """Set that size; returns the previous one."""

def select_target(name: str) -> None:
    """Switch the kernels to a compiled, supported SIMD target (tests use it)."""

def build_info() -> dict[str, Any]:
    """What was built and what was chosen at import (version, compiler, openmp, targets, cpu, threads)."""
