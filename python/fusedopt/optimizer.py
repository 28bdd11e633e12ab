"""The optimizer base class: param groups and state kept as torch.optim keeps
them, and a step that is one call into the compiled core."""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import _core
from .precision import (absmax_key, deciding_elements, normalized_group, state_dtypes, storage_options,
                        storage_state_keys)
from .rule import MAX_STEP, NonFiniteGradError, Rule, nonfinite_grad_error

__all__ = ["Optimizer", "NonFiniteGradError", "NONFINITE_POLICIES"]

# What a step does when a gradient holds a NaN or an infinity (see Optimizer).
NONFINITE_POLICIES = ("apply", "skip", "raise")


class Optimizer:
    """Base of fusedopt's optimizers.

    ``params`` is a list of NumPy arrays, or a list of param-group dicts each
    with ``"params"`` and any hyperparameters that differ from the defaults.
    ``param_groups`` may be edited between steps (a schedule changes
    ``"lr"``); ``state`` is a list aligned with the params of all groups in
    order, each entry a dict of the rule's state arrays and ``"step"``, the
    number of updates made to that param so far.

    ``step(grads)`` updates every param in place in one call into C++ and one
    parallel region; ``grads`` is aligned with the params, and a ``None``
    entry leaves its param and state alone.

    Threads: each optimizer has a lock, so calls to ``step``,
    ``add_param_group``, ``state_dict`` and ``load_state_dict`` of one
    optimizer from several threads run one at a time (80 steps from two
    threads are 80 serial steps, in the order the threads got the lock);
    different optimizers step in parallel, the GIL released while their
    kernels run.

    ``nonfinite`` says what a step does when a gradient holds a NaN or an
    infinity:

    - ``"apply"`` (default, as torch.optim): no check; the step is applied
      and the NaN or infinity propagates into the params and state.
    - ``"skip"``: the grads are checked in the same call and parallel region
      as the update (one extra read of the grads); if any value is not
      finite, nothing changes (params, state arrays, step counts), ``step``
      returns ``False`` and ``skipped_steps`` goes up by one.
    - ``"raise"``: checked likewise; nothing changes and
      :class:`NonFiniteGradError` names the first offending ``grads[i]``
      (``skipped_steps`` goes up too).

    Precision (see docs/precision.md): params may be float32, float64,
    bfloat16 (``ml_dtypes.bfloat16``) or float16; the arithmetic of a 16-bit
    param is float32, in the float32 kernel's order, so a 16-bit step is
    exactly "upcast, the float32 step, store". Keyword options, stored in
    every param group (a group may override them):

    - ``state_dtype``: ``None`` (the param's dtype, as torch), a dtype
      (``np.float32`` for 16-bit params: DeepSpeed's fp32 optimizer states;
      a 16-bit dtype for float32 params), or ``{state key: dtype}``.
    - ``master_weights=True`` (16-bit params): a float32 copy of the param in
      the state (``"master_param"``) is stepped, and the param written as its
      rounded copy in the same pass: the run is bitwise the float32 run.
    - ``kahan_sum=True`` (16-bit params): a compensation buffer in the param's
      dtype (``"kahan_comp"``) carries what each store of the param dropped.
    - ``rounding="stochastic"`` (16-bit params) with ``seed`` (an int): the
      param is rounded up with probability equal to its distance to the
      lower neighbour, from random bits keyed by (seed, step, the param's
      position, element index): the same bits for any thread count or split.
    - ``state_bits=8`` (float32, bfloat16 and float16 params): block-wise
      quantized state, as bitsandbytes' 8-bit optimizers: each state array of
      a param with at least ``min_8bit_size`` elements (default 4096) is kept
      as uint8 codes (its own key) and a float32 scale per block of
      ``block_size`` elements (default 256, a multiple of 64 up to 4096), under
      ``"<key>_absmax"``; smaller params keep float32 state. ``state_bits=16``
      is ``state_dtype="bfloat16"``; 32 is the default.
    """

    rule: Rule  # set by each subclass
    # Hyperparameters the class fixes, whatever a loaded state_dict says
    # (AdamW's decoupled_weight_decay=True, as torch.optim.AdamW.__setstate__).
    fixed_hyperparameters: Mapping[str, Any] = {}

    def __init__(self, params: Iterable, defaults: Mapping[str, Any], *, nonfinite: str = "apply",
                 state_dtype: Any = None, master_weights: bool = False, kahan_sum: bool = False,
                 rounding: str = "nearest", seed: int = 0, state_bits: int = 32, block_size: int = 256,
                 min_8bit_size: int = 4096):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, got {nonfinite!r}"
            )
        self.nonfinite = nonfinite
        self.skipped_steps = 0  # steps not applied because a gradient was not finite
        self.defaults = {**defaults, **storage_options(state_dtype=state_dtype, master_weights=master_weights,
                                                       kahan_sum=kahan_sum, rounding=rounding, seed=seed,
                                                       state_bits=state_bits, block_size=block_size,
                                                       min_8bit_size=min_8bit_size)}
        self.param_groups: list[dict[str, Any]] = []
        self.state: list[dict[str, Any]] = StateList()
        # Reentrant: a hyperparameter's own Python code, run inside a step,
        # may call into the optimizer again on the same thread. The core takes
        # it in step() without a Python call (_core.StepLock).
        self._lock = _core.StepLock()
        if isinstance(params, np.ndarray):  # iterating would make one param per row
            raise TypeError(
                f"params must be a list of arrays or of param-group dicts, got a bare {params.ndim}-d "
                f"numpy.ndarray: pass [array]"
            )
        groups = _as_list(params, "params")
        if not groups:
            raise ValueError("params is empty: the optimizer has nothing to update")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ step
    def step(self, grads: Sequence[np.ndarray | None] | None = None, grad_scale: float | None = None) -> bool:
        """Update every param in place from ``grads`` (aligned with the params).

        ``grad_scale`` (loss scaling): every grad is divided by it inside the
        kernel as it is read; the grads are not written. With
        ``nonfinite="skip"`` an inf or NaN grad skips the whole step, as
        torch's GradScaler does.

        Returns ``True`` when the step was applied, ``False`` when
        ``nonfinite="skip"`` skipped it (see the class docstring).
        """
        try:  # the core holds self._lock for the whole step
            bad = self.rule.step(self.param_groups, grads, self.state, self.nonfinite != "apply", grad_scale,
                                 self._lock)
        except TypeError as error:  # only the error path pays for the hints
            if grads is None or callable(grads):  # torch's step() or step(closure)
                raise TypeError(
                    "step(grads) needs the gradients: a list aligned with the params (None skips a "
                    "param). NumPy arrays have no .grad for fusedopt to find; for torch tensors, "
                    "whose step() reads p.grad, use fusedopt.torch"
                ) from None
            _raise_if_torch(grads, "grads", error)
            raise
        if bad is None:
            return True
        self.skipped_steps += 1
        if self.nonfinite == "raise":
            raise nonfinite_grad_error(grads[bad], bad)
        return False

    # ---------------------------------------------------------- param groups
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of params, with hyperparameters defaulting to ``defaults``."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group must have 'params'")
        params = param_group["params"]
        params = [params] if isinstance(params, np.ndarray) else _as_list(params, "a group's 'params'")
        group = {"params": params, **self.defaults}
        group.update((k, v) for k, v in param_group.items() if k != "params")
        group = self._normalized(group)

        with self._lock:
            known = [p for g in self.param_groups for p in g["params"]]
            try:
                _core.check_params(known + params, 0)  # also rejects a param given twice
            except TypeError as error:
                _raise_if_torch(known + params, "params", error)
                raise
            index = len(self.param_groups)
            self.rule.check_group(group, index)
            state = [self.rule.initial_state(group, p, index) for p in params]  # may still refuse a param
            self.param_groups.append(group)
            self.state.extend(state)

    def _normalized(self, group: dict[str, Any]) -> dict[str, Any]:
        """Bring hyperparameters into one form; subclasses may add to it."""
        if isinstance(group.get("betas"), list):  # a JSON round trip turns tuples into lists
            group["betas"] = tuple(group["betas"])
        return normalized_group(group)

    # ------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """A snapshot in torch.optim's layout: ``{"state": {index: {...}},
        "param_groups": [{..., "params": [indices]}]}``, holding only NumPy
        arrays (copies) and plain Python values."""
        with self._lock:
            return self._state_dict()

    def _state_dict(self) -> dict[str, Any]:
        groups, index = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(index, index + count))
            groups.append(saved)
            index += count
        state = {
            i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in entry.items()}
            for i, entry in enumerate(self.state)
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state from ``state_dict()`` output.

        Everything is checked before anything changes: the same number of
        groups and params, every state array present with its param's shape
        and dtype (never cast), every hyperparameter valid. The arrays are
        copied, never aliased.
        """
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = _as_list(state_dict["param_groups"], "state_dict['param_groups']")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state'] must be a dict")

        new_groups, new_state = [], []
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            where = f"state_dict['param_groups'][{g}]"
            if not isinstance(saved, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
            ids = _as_list(saved.get("params"), f"{where}['params']")
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"state_dict['param_groups'][{g}] has {len(ids)} params, the optimizer's "
                    f"group {g} has {len(group['params'])}"
                )
            merged = self._normalized(
                {"params": group["params"], **{k: v for k, v in saved.items() if k != "params"},
                 **self.fixed_hyperparameters}
            )
            self.rule.check_group(merged, g)
            array_keys, scalar_keys = self.rule.state_spec(merged)
            array_keys = [*array_keys, *storage_state_keys(merged)]
            for k, (param, saved_id) in enumerate(zip(group["params"], ids)):
                index = len(new_state)
                try:
                    hash(saved_id)
                except TypeError:
                    raise TypeError(
                        f"{where}['params'][{k}] is a {type(saved_id).__name__}, not a param id "
                        "(an int, or any hashable key of state_dict['state'])"
                    ) from None
                if saved_id not in saved_state:
                    raise ValueError(f"state_dict['state'] has no entry {saved_id} for params[{index}]")
                quantized = _core.keeps_8bit_state(merged, deciding_elements(merged, k, param), g)
                block_size = merged["block_size"] if quantized else None
                new_state.append(_checked_state(saved_state[saved_id], param, array_keys, scalar_keys, index,
                                                self.rule.state_keys(merged) if block_size else (), block_size))
            new_groups.append(merged)

        for group, merged in zip(self.param_groups, new_groups):
            group.clear()
            group.update(merged)
        self.state[:] = new_state

    # A lock cannot be copied or pickled: copies get their own.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = _core.StepLock()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        lines.append(")")
        return "\n".join(lines)


class StateList(list):
    """``Optimizer.state``: a list of per-param dicts, aligned with the params
    of all groups in order. Indexing it with an array, as torch's
    ``opt.state[param]``, says how to find a param's entry."""

    __slots__ = ()

    def __getitem__(self, index):
        if isinstance(index, np.ndarray):
            raise TypeError(
                "opt.state is a list aligned with the params of all groups in order, not a dict "
                "keyed by param as in torch: use opt.state[i], i the param's position "
                "(params of group 0 first, then group 1, ...)"
            )
        return super().__getitem__(index)


def _raise_if_torch(arrays: Any, name: str, error: TypeError) -> None:
    """Turn the core's "must be a numpy.ndarray" into a pointer to fusedopt.torch
    when the offending value is a torch tensor (only on the error path: the
    check costs a step nothing)."""
    for i, value in enumerate(arrays if isinstance(arrays, (list, tuple)) else ()):
        if type(value).__module__.startswith("torch") and not isinstance(value, np.ndarray):
            raise TypeError(
                f"{name}[{i}] is a {type(value).__module__}.{type(value).__name__}; fusedopt's "
                "optimizers update NumPy arrays. For torch tensors use fusedopt.torch (the same "
                "classes as torch.optim subclasses, e.g. fusedopt.torch.Adam(model.parameters()))"
            ) from error


def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes, Mapping, set, frozenset)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list (ordered), got {type(value).__name__}")
    return list(value)


def _checked_state(saved: Any, param: np.ndarray, keys: Iterable[str], scalar_keys: Iterable[str],
                   index: int, quantized_keys: Iterable[str] = (), block_size: int | None = None) -> dict[str, Any]:
    """A private copy of one param's saved state, or an error naming what is wrong.
    ``quantized_keys`` are 8-bit: uint8 codes, and their scales under absmax_key(key)."""
    where = f"state_dict['state'] entry for params[{index}]"
    if not isinstance(saved, Mapping):
        raise TypeError(f"{where} must be a dict")
    step = saved.get("step")
    if isinstance(step, np.integer):
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < MAX_STEP:
        raise ValueError(f"{where} needs 'step', an int in [0, 2**53 - 1); got {step!r}")
    entry: dict[str, Any] = {"step": step}
    for key in keys:
        if key not in saved:
            raise ValueError(f"{where} has no {key!r} (a state_dict of another rule or settings?)")
        array = saved[key]
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{where}[{key!r}] must be a numpy.ndarray, got {type(array).__name__}")
        if key in quantized_keys:
            entry.update(_checked_codes(saved, key, param, block_size, where))
            continue
        if array.dtype == np.uint8:
            raise ValueError(f"{where}[{key!r}] holds 8-bit codes, but this param keeps unquantized state "
                             "(the group's state_bits or min_8bit_size differ from the saved run's)")
        allowed = state_dtypes(key, param.dtype)
        if array.dtype not in allowed:
            raise TypeError(
                f"{where}[{key!r}] has dtype {array.dtype}, the param has {param.dtype} (it may be "
                f"{' or '.join(str(d) for d in allowed)}; fusedopt never converts dtypes)"
            )
        if array.shape != param.shape:
            raise ValueError(f"{where}[{key!r}] has shape {array.shape}, the param has {param.shape}")
        entry[key] = np.empty_like(param, dtype=array.dtype)  # a private copy, in the param's layout
        entry[key][...] = array
    for key in scalar_keys:
        value = saved.get(key)
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"{where} needs {key!r}, a finite number; got {value!r}")
        entry[key] = float(value)
    return entry


def _checked_codes(saved: Mapping[str, Any], key: str, param: np.ndarray, block_size: int,
                   where: str) -> dict[str, np.ndarray]:
    """Private copies of one 8-bit state array: its uint8 codes and float32 scales."""
    codes, scale_key = saved[key], absmax_key(key)
    if codes.dtype != np.uint8:
        raise TypeError(f"{where}[{key!r}] has dtype {codes.dtype}: this param keeps 8-bit state, uint8 codes "
                        "(the group's state_bits=8; was the state_dict saved with other settings?)")
    if codes.shape != param.shape:
        raise ValueError(f"{where}[{key!r}] has shape {codes.shape}, the param has {param.shape}")
    scales = saved.get(scale_key)
    if not isinstance(scales, np.ndarray):
        raise ValueError(f"{where} has no {scale_key!r}, the scales of 8-bit {key!r}")
    blocks = -(-param.size // block_size)
    if scales.dtype != np.float32:
        raise TypeError(f"{where}[{scale_key!r}] has dtype {scales.dtype}; the scales of 8-bit state are float32")
    if scales.shape != (blocks,):
        raise ValueError(f"{where}[{scale_key!r}] has shape {scales.shape}, want ({blocks},): one scale per block of "
                         f"{block_size} (was the state_dict saved with another block_size?)")
    copy = np.empty_like(param, dtype=np.uint8)
    copy[...] = codes
    return {key: copy, scale_key: scales.copy()}
