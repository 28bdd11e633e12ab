"""fusedopt's rules as ``torch.optim`` optimizers, for CPU tensors.

A one-line swap for a torch training loop::

    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # was torch.optim.AdamW
    loss.backward()
    opt.step()            # every param of every group in one fused call, in place
    opt.zero_grad()

Each class is a ``torch.optim.Optimizer`` with its torch counterpart's
constructor arguments and defaults, param groups, state layout and
``state_dict()``: a checkpoint of ``torch.optim.Adam`` loads into
``fusedopt.torch.Adam`` and continues, and the other way round. torch's
learning-rate schedulers, step hooks and ``zero_grad`` work unchanged.

How a step works: the params, their gradients and the state tensors are
handed to fusedopt's compiled core as NumPy views of the tensors' own memory
(``Tensor.numpy()`` never copies a CPU tensor), so the core updates them in
place. The params must be dense float32, float64, bfloat16 or float16
tensors (any layout that fills one block of memory: contiguous,
channels_last, a transpose) on the CPU; anything else is refused with an
error naming the param. A bfloat16 tensor, which ``Tensor.numpy()`` refuses,
is viewed through its bits (``t.view(torch.int16).numpy()``) as ml_dtypes'
bfloat16: no copy either. (A param
may be on the meta device until its first step, for
``with torch.device("meta"): model = ...`` then ``model.to_empty(...)``
with ``torch.__future__.set_swap_module_params_on_conversion(True)``, which
keeps the param objects the optimizer holds.)

The views and the core's dicts are made at the first step and kept (see
:class:`_Plan`); each later step checks, at C speed over lists, that
nothing they depend on changed (param groups, gradients, ``opt.state``, the
tensors' memory, the 0-d state values) and makes them again if it did, so
edits between steps work as with ``torch.optim``; 16-bit params take the
same path. The step runs torch's
step hooks itself (torch's ``Optimizer.step`` wrapper would cost more than
a small step) and is labelled for torch's profiler while one records.

torch's implementation switches are accepted so that code written for
``torch.optim`` runs unchanged: ``foreach`` and ``fused`` are stored in the
param groups and otherwise ignored (fusedopt has one implementation, fused);
``capturable=True`` and ``differentiable=True`` are refused.

State is kept as torch keeps it: ``state["step"]`` and NAdam's
``state["mu_product"]`` are 0-d float tensors (of torch's default dtype, as
torch makes them), the arrays are tensors shaped like their param. Each step
hands the core their values as numbers and writes the new ones back; a
``state["step"]`` that is not a one-element tensor holding a whole number
is refused with an error naming the param. Every rule makes a param's state
at its first step, except Adagrad, whose state torch 2.13's constructor
makes (on the param's device, the meta device included, where torch's step
then fails and fusedopt's says which tensor is on meta); a group added
later gets its state at its first step, as in torch. Adagrad's ``sum`` starts at
the param group's ``initial_accumulator_value``, where torch takes the
constructor's for every group (the two differ only for a group given its
own value).

Precision: every class takes the NumPy API's storage options, keyword-only,
with their meaning and errors (docs/precision.md): ``state_dtype`` (None:
the param's dtype, as torch; a torch dtype, e.g. ``torch.float32`` for
bfloat16 params; or ``{state key: dtype}``; kept in the groups by name,
``"float32"``), ``master_weights``, ``kahan_sum``, ``rounding`` and
``seed``. The state tensors are the arrays the core's ``initial_state``
makes (in their dtypes; ``master_param``, ``kahan_comp``), made at a param's
first step. ``load_state_dict`` gives each state array the dtype the loaded
group's options give it (torch's casts every floating state tensor to its
param's dtype: float32 state of a bfloat16 param would lose its bits);
torch.optim loading ours casts as it always does. With stochastic rounding
SGD keeps ``state["step"]`` (torch's SGD keeps none): the random bits are
keyed by it. torch's fused kernels on 16-bit tensors agree with the defaults
(state in the param's dtype, float32 arithmetic, round to nearest) to one
16-bit rounding.

``torch.amp.GradScaler``: the classes set ``_step_supports_amp_scaling``, as
torch's fused optimizers do, so ``scaler.step(opt)`` hands the step the
scale and the scaler's inf check (``opt.grad_scale``, ``opt.found_inf``):
the core divides each grad by the scale as it reads it (the grads are never
written), and a step with an inf or NaN changes nothing but the state a
first step makes, as torch's fused Adam (and counts in ``skipped_steps``);
``scaler.update()`` sees the inf as usual.

Every class also takes fusedopt's ``nonfinite="apply" | "skip" | "raise"``
(keyword-only; see :class:`fusedopt.Optimizer`): with ``"skip"`` a step whose
gradients hold a NaN or an infinity changes nothing (params, state, step
counts) and adds one to ``opt.skipped_steps``; ``"raise"`` does the same and
raises :class:`fusedopt.NonFiniteGradError` naming the param. ``step()``
still returns what the closure returned, as torch's does.

``fusedopt.torch.Adadelta`` is torch's rule with torch's param groups;
``scale="weights"`` (keyword-only) chooses the course's variant, which torch
lacks, and only then do the groups carry a ``"scale"`` key. A tensor ``lr``
must have one element (a ``ValueError``, as torch's).

The rules differ from ``torch.optim``'s by float rounding only: the core
never fuses a multiply and an add into one FMA (so it is bitwise identical to
fusedopt's NumPy reference on every SIMD target), while some of torch's
vectorised CPU kernels do. One more: torch rounds NAdam's running product
``mu_product`` to its tensor's dtype before using it, while the core uses the
product in double and then stores it; with float64 params and torch's default
dtype float32 the two differ by about 1e-7 relative in that step's
coefficients (set the default dtype to float64, as for any float64 model, and
both compute it in float64).
"""

from __future__ import annotations

import inspect
import operator
import weakref
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

try:
    import torch
except ImportError as error:  # torch is an optional dependency
    raise ImportError(
        "fusedopt.torch needs PyTorch, which is not installed. Install it with\n"
        '    pip install "fusedopt[torch]"\n'
        "(on a machine without a GPU, install torch's CPU-only build first,\n"
        "from PyTorch's own package index, to avoid several GB of CUDA packages)"
    ) from error

from torch.optim.optimizer import _global_optimizer_post_hooks as _global_step_post_hooks
from torch.optim.optimizer import _global_optimizer_pre_hooks as _global_step_pre_hooks

import fusedopt
from fusedopt import _core
from fusedopt.precision import bfloat16 as _NUMPY_BFLOAT16
from fusedopt.precision import absmax_key, normalized_group, state_dtypes, storage_options, storage_state_keys
from fusedopt.rule import NonFiniteGradError, Rule, nonfinite_grad_error as _nonfinite_grad_error

__all__ = ["FusedOptimizer", "Row", "NonFiniteGradError", "Momentum", "SGD", "Adadelta", "Adam", "AdamW",
           "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "Lion", "Adam8bit", "AdamW8bit", "Lion8bit", "SGD8bit"]


@dataclass(frozen=True)
class Row:
    """How one fusedopt rule appears as a ``torch.optim`` optimizer.

    ``fused`` is the fusedopt class: its rule is what a step calls, its
    constructor validates the hyperparameters and supplies the defaults.
    ``torch_name`` names the ``torch.optim`` counterpart, whose constructor
    signature the torch-facing class takes (None when torch has no such
    rule: the fusedopt class's signature is used). ``state_names`` renames the
    core's state keys where torch's differ. ``counts_steps`` says whether
    torch keeps ``state["step"]`` (``torch.optim.SGD`` keeps none).
    ``state_at_construction`` says whether torch's constructor makes every
    param's state (``torch.optim.Adagrad``) rather than its first step.
    """

    fused: type[fusedopt.Optimizer]
    torch_name: str | None
    state_names: Mapping[str, str] = field(default_factory=dict)
    counts_steps: bool = True
    state_at_construction: bool = False

    @property
    def rule(self) -> Rule:
        return self.fused.rule

    @property
    def torch_class(self) -> type[torch.optim.Optimizer] | None:
        return getattr(torch.optim, self.torch_name) if self.torch_name else None

    def torch_key(self, core_key: str) -> str:
        return self.state_names.get(core_key, core_key)


# torch's choices between its own implementations: accepted, kept in the
# param groups (so state_dicts match torch's) and otherwise ignored. Any other
# argument torch has and fusedopt lacks (capturable, differentiable) may only
# keep its default.
_IGNORED_SWITCHES = {"foreach", "fused"}

# The dtypes a param may have, and the NumPy dtype its view has (NumPy's
# bfloat16 is ml_dtypes'; torch's .numpy() cannot make it: see _view).
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                 torch.bfloat16: _NUMPY_BFLOAT16, torch.float16: np.dtype(np.float16)}
_FLOAT_DTYPES = tuple(_NUMPY_DTYPES)
_TORCH_DTYPES = {numpy: dtype for dtype, numpy in _NUMPY_DTYPES.items()}
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
                torch.float16: "float16"}

# fusedopt's keyword options, shared by every class (the NumPy API's: see
# fusedopt.Optimizer and docs/precision.md), with their defaults.
_OPTIONS = {"nonfinite": "apply", "state_dtype": None, "master_weights": False, "kahan_sum": False,
            "rounding": "nearest", "seed": 0, "state_bits": 32, "block_size": 256, "min_8bit_size": 4096}


def _with_options(signature: inspect.Signature) -> inspect.Signature:
    """A fusedopt class's signature with its shared ``**options`` spelled out."""
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(parameters) < len(signature.parameters):
        parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                       for name, default in _OPTIONS.items()]
    return signature.replace(parameters=parameters)


def _state_dtype_names(value: Any) -> Any:
    """A ``state_dtype`` with torch dtypes (alone or as a dict's values) given
    by the names the core reads; anything else as it is, for
    fusedopt.precision to accept or refuse by name."""
    if isinstance(value, Mapping):
        return {key: _DTYPE_NAMES.get(dtype, dtype) for key, dtype in value.items()}
    return _DTYPE_NAMES.get(value, value) if isinstance(value, torch.dtype) else value


def _normalized_storage(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's storage options in the core's form (dtype names)."""
    if "state_dtype" in group:
        group["state_dtype"] = _state_dtype_names(group["state_dtype"])
    return normalized_group(group)


class FusedOptimizer(torch.optim.Optimizer):
    """Base of the torch-facing optimizers: a subclass names its :class:`Row`
    (``class Adam(FusedOptimizer, row=Row(fusedopt.Adam, "Adam"))``) and gets
    torch's constructor, state layout and a fused ``step``."""

    row: ClassVar[Row]
    # torch.amp.GradScaler hands a step its loss scale and inf check (see _amp_scaling).
    _step_supports_amp_scaling: ClassVar[bool] = True
    nonfinite: str  # what a step does with a NaN or infinite gradient (see fusedopt.Optimizer)
    skipped_steps: int  # steps not applied because of one
    _signature: ClassVar[inspect.Signature]
    _torch_only: ClassVar[dict[str, Any]]  # torch's arguments fusedopt lacks, with their defaults
    _fixed: ClassVar[dict[str, Any]]  # hyperparameters the class fixes (AdamW's decoupled decay)
    # fusedopt's own options at their defaults (Adadelta's scale="updates"):
    # the core reads them, torch's param groups do not have them.
    _core_defaults: ClassVar[dict[str, Any]]
    _plan: _Plan | None  # the core's arguments, kept between steps

    def __init_subclass__(cls, row: Row | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if row is None:  # a subclass of a rule's class keeps its row
            return
        cls.row = row
        fused_signature = _with_options(inspect.signature(row.fused))
        fused_names = set(fused_signature.parameters)
        cls._core_defaults = {}
        if row.torch_class is None:
            cls._signature, cls._torch_only = fused_signature, {}
        else:
            torch_parameters = list(inspect.signature(row.torch_class).parameters.values())
            extra = [  # fusedopt's own options (Adadelta's scale), keyword-only
                p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                for name, p in fused_signature.parameters.items()
                if name not in {q.name for q in torch_parameters}
            ]
            cls._signature = inspect.Signature(torch_parameters + extra)
            cls._torch_only = {
                p.name: p.default for p in torch_parameters if p.name not in fused_names
            }
            cls._core_defaults = {p.name: p.default for p in extra if p.name not in _OPTIONS}
        cls.__signature__ = cls._signature
        probe = row.fused([np.zeros(1, np.float32)])
        cls._fixed = {k: v for k, v in probe.defaults.items() if k not in fused_names}
        if cls.__doc__ is None:
            counterpart = f"torch.optim.{row.torch_name}'s" if row.torch_name else "fusedopt's"
            cls.__doc__ = (
                f"{row.fused.__doc__.rstrip()}\n\n    A torch.optim.Optimizer over CPU tensors, "
                f"with {counterpart} constructor\n    arguments and state layout (see fusedopt.torch).\n"
            )

    def __init__(self, params: Iterable, *args: Any, **kwargs: Any) -> None:
        self._plan = None
        bound = self._signature.bind(params, *args, **kwargs)  # TypeError as torch's would
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("params")
        lr = arguments.get("lr")
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")  # as torch's
        switches = {name: arguments.pop(name) for name in self._torch_only}
        for name, value in switches.items():
            default = self._torch_only[name]
            if name not in _IGNORED_SWITCHES and value != default:
                raise ValueError(
                    f"fusedopt.torch.{type(self).__name__} does not support {name}={value!r} "
                    f"(it updates CPU tensors with one fused kernel); leave it at {default!r}"
                )
        # The storage options, in the NumPy API's form (torch dtypes as names);
        # only those set otherwise than by default go into the groups.
        storage = {name: arguments.pop(name) for name in _OPTIONS if name != "nonfinite"}
        storage["state_dtype"] = _state_dtype_names(storage["state_dtype"])
        storage = storage_options(**storage)
        # fusedopt's constructor validates the hyperparameters (and nonfinite)
        # and fills in the fixed ones; its one param group holds them in their
        # normal form. (Its float32 probe would refuse the 16-bit storage
        # options: the groups' checks judge those, param by param.)
        probe = self.row.fused([np.zeros(1, np.float32)], **arguments)
        self.nonfinite = probe.nonfinite
        self.skipped_steps = 0
        # torch's layout for torch's rule: fusedopt's own options stay out of
        # the groups unless they choose a form torch lacks (scale="weights").
        defaults = {k: v for k, v in probe.param_groups[0].items()
                    if k != "params" and not (k in self._core_defaults and v == self._core_defaults[k])}
        defaults.update(storage)
        defaults.update(switches)
        super().__init__(params, defaults)
        if self.row.state_at_construction:  # as torch's Adagrad; a group added later gets it at its first step
            for index, group in enumerate(self.param_groups):
                self._make_state(group, index)

    def _core_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """A param group as the core reads it: with fusedopt's own options."""
        return {**self._core_defaults, **group}

    def _make_state(self, group: dict[str, Any], index: int) -> None:
        """Every param's state before its first step: step 0 and the core's initial state."""
        for param in group["params"]:
            state = self.state[param]
            for key, value in self._initial_state(group, param, index).items():
                if key != "step" or self._counts_steps(group):
                    state[key] = value

    def _counts_steps(self, group: Mapping[str, Any]) -> bool:
        """Whether a group's params keep ``state["step"]``: as torch's rule
        does, and always with stochastic rounding, whose random bits are
        keyed by the step count (torch's SGD keeps none; fusedopt's does)."""
        return self.row.counts_steps or group.get("rounding") == "stochastic"

    def _initial_state(self, group: dict[str, Any], param: torch.Tensor, index: int) -> dict[str, Any]:
        """One param's state before its first step, in torch's keys: whatever
        arrays the core's ``initial_state`` makes for the group's settings (in
        their state dtypes, the master copy, the Kahan buffer), as tensors
        sharing their memory; the numbers (step, mu_product) as torch's 0-d
        tensors. A param on the meta device gets meta tensors of the same
        dtypes and values, as torch makes state on the param's device."""
        core_group = self._core_group(group)
        if param.device.type == "meta":
            stand_in = np.zeros(1, _NUMPY_DTYPES[param.dtype])
            made = self.row.rule.initial_state(core_group, stand_in, index)
            made = {key: torch.full_like(param, value.flat[0], dtype=_TORCH_DTYPES[value.dtype])
                    if isinstance(value, np.ndarray) else value for key, value in made.items()}
        else:
            made = self.row.rule.initial_state(core_group, _view(param), index)
        return {self.row.torch_key(key): _tensor(value) if isinstance(value, np.ndarray)
                else value if isinstance(value, torch.Tensor) else _new_scalar(value)
                for key, value in made.items()}

    # ---------------------------------------------------------- param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, then the checks fusedopt needs: every
        param a dense float32/float64 CPU tensor (any dense layout), not sharing
        memory with another, and valid hyperparameters. On an error the
        group is not added. A param may also be on the meta device, as in
        ``with torch.device("meta"): model = ...``, until its first step
        (``model.to_empty(device="cpu")`` in between)."""
        super().add_param_group(param_group)
        try:
            index = len(self.param_groups) - 1
            group = _normalized_storage(self.param_groups[index])
            first = sum(len(g["params"]) for g in self.param_groups[:-1])
            for k, param in enumerate(group["params"]):
                _check_param(param, self._label(first + k, group, k), meta_allowed=True)
            params = [p for g in self.param_groups for p in g["params"]]
            if all(p.device.type == "cpu" for p in params):  # (the step checks meta params once they are real)
                _core.check_params(list(map(_view, params)), 0)  # also rejects params sharing memory
            core_group = self._core_group(group)
            self.row.rule.check_group(core_group, index)
            for dtype in {param.dtype for param in group["params"]}:  # the storage options suit each dtype
                self.row.rule.initial_state(core_group, np.zeros(1, _NUMPY_DTYPES[dtype]), index)
        except Exception:
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every param that has a gradient, in place, in one call into
        fusedopt's core; params without a gradient are skipped, their state
        neither created nor counted. Returns ``closure()`` if given.

        With ``nonfinite="skip"``, a step whose gradients hold a NaN or an
        infinity changes nothing and adds one to ``skipped_steps``;
        ``"raise"`` then raises :class:`fusedopt.NonFiniteGradError`.

        The step hooks (``register_step_pre_hook``, ``register_step_post_hook``
        and the global ones) run as torch's ``Optimizer.step`` wrapper runs
        them, and the step is labelled for torch's profiler while it records:
        this method is that wrapper (torch's would cost more than the step)."""
        if type(self).step is not FusedOptimizer.step:  # a subclass's own step, which torch wrapped
            return self._fused_step(closure)
        profiling = torch._C._autograd._profiler_enabled()
        if not (profiling or _global_step_pre_hooks or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or _global_step_post_hooks):
            return self._fused_step(closure)  # all the wrapper does without hooks or a profiler
        args = (self,) if closure is None else (self, closure)
        if not profiling:
            return self._step_with_hooks(args, {})
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
            return self._step_with_hooks(args, {})

    step.hooked = True  # type: ignore[attr-defined]  # torch's Optimizer then leaves it unwrapped

    def _step_with_hooks(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What torch's ``Optimizer.profile_hook_step`` wrapper does around a step."""
        if _global_step_pre_hooks or self._optimizer_step_pre_hooks:
            for pre_hook in chain(_global_step_pre_hooks.values(), self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"{FusedOptimizer.step} must return None or a tuple of "
                                           f"(new_args, new_kwargs), but got {result}.")
                    args, kwargs = result
        out = FusedOptimizer._fused_step(*args, **kwargs)
        self._optimizer_step_code()  # where torch's profiler, when it traces Python, looks
        if self._optimizer_step_post_hooks or _global_step_post_hooks:
            for post_hook in chain(self._optimizer_step_post_hooks.values(), _global_step_post_hooks.values()):
                post_hook(self, args, kwargs)
        return out

    def _fused_step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._plan
        # torch.amp.GradScaler's protocol with optimizers that unscale inside
        # their kernel (_step_supports_amp_scaling): it sets these two 0-d
        # tensors for the step, found_inf already checked over the grads.
        attributes = self.__dict__
        if "grad_scale" in attributes or "found_inf" in attributes:
            grad_scale, found_inf = _amp_scaling(attributes)
        else:
            grad_scale, found_inf = None, False
        try:
            if plan is None or not plan.fits(self):
                self._plan = None  # building may raise
                plan = self._plan = _Plan(self)
            # This frame holds the gradients while the core reads them (their
            # views do not), even if another thread steps or zeroes meanwhile.
            step_grads, grad_views = plan.step_grads, plan.grad_views  # noqa: F841 (held)
            if found_inf:  # skipped as torch's fused kernels skip it: the state made, nothing updated
                plan.step_grads = None
                plan.record(self)
                self.skipped_steps += 1
                return loss
            bad = plan.rule_step(plan.step_cache, plan.core_groups(self), grad_views, plan.entries,
                                 self.nonfinite != "apply", grad_scale)
        except (TypeError, ValueError, RuntimeError):
            self._plan = None
            self._raise_for_unusable_tensor()  # a clearer error naming the param, if one is
            raise
        error = None
        if bad is None:
            plan.record(self)
        else:  # nothing changed; the state made for the step is dropped
            self.skipped_steps += 1
            if plan.pending:
                self._plan = None
            if self.nonfinite == "raise":
                error = _nonfinite_grad_error(grad_views[bad], bad, f"the gradient of {self._label_at(bad)}")
        plan.step_grads = None  # the plan keeps no gradient alive between steps: zero_grad() frees them
        if error is not None:
            raise error
        return loss

    # ------------------------------------------------------------ state_dict
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """torch's ``load_state_dict``, after checking that every param's saved
        state has what the rule needs, in its param's shape; on an error
        nothing changes. torch casts every floating state tensor to its
        param's dtype; here each state array gets the dtype the loaded group's
        storage options give it instead (float32 state of a bfloat16 param
        stays float32, the master copy float32), as torch would cast it."""
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        self._cast_state_as_stored(state_dict)

    def _cast_state_as_stored(self, state_dict: Mapping[str, Any]) -> None:
        """After torch's load: every state array of ``state_dict`` cast (from
        the saved tensor, not torch's cast of it) to the dtype the core's
        initial state has for the loaded group and the param's dtype."""
        saved_state = state_dict["state"]
        for g, (group, saved) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            stored: dict[torch.dtype, dict[str, torch.dtype]] = {}
            for param, saved_id in zip(group["params"], saved["params"]):
                entry = saved_state.get(saved_id)
                if not entry:
                    continue
                if param.dtype not in stored:
                    stand_in = np.zeros(1, _NUMPY_DTYPES[param.dtype])
                    made = self.row.rule.initial_state(self._core_group(group), stand_in, g)
                    stored[param.dtype] = {self.row.torch_key(key): _TORCH_DTYPES[value.dtype]
                                           for key, value in made.items() if isinstance(value, np.ndarray)}
                state = self.state[param]
                if self._8bit_block_size(group, param, g) is not None:
                    # 8-bit: the uint8 codes (torch cast them to the param's dtype) and float32 scales, as saved.
                    for key in map(self.row.torch_key, self.row.rule.state_spec(self._core_group(group))[0]):
                        for name, dtype in ((key, torch.uint8), (absmax_key(key), torch.float32)):
                            state[name] = entry[name].to(dtype=dtype, device=param.device)
                    continue
                for key, dtype in stored[param.dtype].items():
                    value = entry.get(key)
                    if isinstance(value, torch.Tensor) and dtype != param.dtype:  # else torch's cast is right
                        state[key] = value.to(dtype=dtype, device=param.device)

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps defaults, state and param_groups only (a deepcopy or
        # pickle goes through it); the non-finite policy and count go along.
        return {**super().__getstate__(), "nonfinite": self.nonfinite, "skipped_steps": self.skipped_steps}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._plan = None  # (load_state_dict comes here too)
        self.__dict__.setdefault("nonfinite", "apply")  # pickled before fusedopt.torch had it
        self.__dict__.setdefault("skipped_steps", 0)
        for group in self.param_groups:
            # A checkpoint of torch.optim lacks fusedopt's own options (and
            # one of fusedopt.torch may lack torch's switches): defaults.
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.update(self._fixed)  # as torch's AdamW forces decoupled decay
            # Old checkpoints kept the step count and scalar state (NAdam's
            # mu_product) in Python numbers; torch's optimizers keep 0-d tensors.
            numbers = [self.row.torch_key(key) for key in self.row.rule.state_spec(self._core_group(group))[1]]
            if self.row.counts_steps:
                numbers.append("step")
            for param in group["params"]:
                entry = self.state.get(param, _NO_STATE)
                for key in numbers:
                    value = entry.get(key)
                    if value is not None and not isinstance(value, torch.Tensor):
                        entry[key] = _new_scalar(float(value))

    def _check_loadable(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}"
            )
        index = 0
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict['param_groups'][{g}] has {len(saved['params'])} params, the "
                    f"optimizer's group {g} has {len(group['params'])}"
                )
            merged = {**self._core_defaults, **self.defaults, **saved, **self._fixed, "params": group["params"]}
            self.row.rule.check_group(merged, g)
            arrays, scalars = self.row.rule.state_spec(merged)
            array_keys = [self.row.torch_key(k) for k in arrays]
            scalar_keys = ["step"] if self.row.counts_steps else []
            scalar_keys += [self.row.torch_key(k) for k in scalars]
            for k, (param, saved_id) in enumerate(zip(group["params"], saved["params"])):
                entry = saved_state.get(saved_id)
                if entry:  # a param that has been stepped
                    where = f"state_dict['state'][{saved_id!r}] ({self._label(index, group, k)})"
                    _check_saved_state(entry, param, array_keys, scalar_keys, where,
                                       self._8bit_block_size(merged, param, g))
                index += 1

    def _8bit_block_size(self, group: Mapping[str, Any], param: torch.Tensor, g: int) -> int | None:
        """The block size of ``param``'s 8-bit state in ``group``, None if it keeps float state."""
        core_group = self._core_group(group)
        return core_group["block_size"] if _core.keeps_8bit_state(core_group, param.numel(), g) else None

    # --------------------------------------------------------------- errors
    def _label(self, index: int, group: Mapping[str, Any], k: int) -> str:
        """A param as an error names it: ``params[3] 'fc1.weight' (shape (16, 6))``."""
        param = group["params"][k]
        names = group.get("param_names")
        name = f" {names[k]!r}" if names else ""
        return f"params[{index}]{name} (shape {tuple(param.shape)})"

    def _label_at(self, index: int) -> str:
        """The label of params[index], counted over all groups."""
        first = index
        for group in self.param_groups:
            if index < len(group["params"]):
                return self._label(first, group, index)
            index -= len(group["params"])
        raise IndexError(first)

    def _raise_for_unusable_tensor(self) -> None:
        """Find what the core (or ``Tensor.numpy()``) refused, and say it in
        torch's terms; return if nothing torch-specific is wrong."""
        index = 0
        for group in self.param_groups:
            try:
                core_group = self._core_group(group)
                keys = [*self.row.rule.state_spec(core_group)[0], *storage_state_keys(core_group)]
            except (TypeError, ValueError):
                return  # the group's hyperparameters are wrong: the core's error says which
            for k, param in enumerate(group["params"]):
                label = self._label(index, group, k)
                index += 1
                if param.grad is None:
                    continue
                _check_param(param, label)
                _check_like_param(param.grad, param, f"the gradient of {label}")
                state = self.state.get(param, _NO_STATE)
                for key in keys:
                    if self.row.torch_key(key) in state:
                        _check_like_param(state[self.row.torch_key(key)], param,
                                          f"state[{self.row.torch_key(key)!r}] of {label}", key)


def _amp_scaling(attributes: Mapping[str, Any]) -> tuple[float | None, bool]:
    """The loss scale to divide the grads by and whether the step is to be
    skipped, from the ``grad_scale`` and ``found_inf`` tensors GradScaler
    sets on the optimizer for a step (absent otherwise)."""
    grad_scale, found_inf = attributes.get("grad_scale"), attributes.get("found_inf")
    if grad_scale is None and found_inf is None:
        return None, False
    if isinstance(grad_scale, torch.Tensor):
        grad_scale = grad_scale.item()
    return grad_scale, found_inf is not None and bool(found_inf.item())


_NO_STATE: Mapping[str, Any] = {}
_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_ITEM = np.ndarray.item
_MIRROR_WIDTHS = {np.dtype(np.float32): 4, np.dtype(np.float64): 8}
_GET = dict.__getitem__
# Bounds the step counts the core is given (it counts in 64-bit ints).
_MAX_STEP = 2**62


class _Plan:
    """The core's arguments for this optimizer's steps, built once and kept
    while they still describe the optimizer.

    Building them costs microseconds per param (a NumPy view of every
    tensor, the core's dicts, the state checked); checking them is one walk
    over the plan's lists in C (``_core.check_torch_plan``,
    csrc/torch_plan.cpp), so a step does only that:

    - the param groups, their ``params`` lists and the state layout their
      settings ask for (``amsgrad`` or ``master_weights`` turned on needs one
      more array), looked up again only when one of a group's values is
      another object than at the last check (a scheduler's new lr);
    - each param's gradient: which params have one (a change rebuilds) and
      the gradient objects (a new one, as after ``zero_grad()`` and
      ``backward()``, gets a new view). The plan holds gradients weakly
      (torch frees them at ``zero_grad()``, and so must the plan) and their
      views do not own their memory: a view is used only while its gradient
      is alive, is ``param.grad`` and has the same ``data_ptr()`` (its memory
      cannot have been freed and reused then: memory a tensor is given is
      allocated while it still has its old memory, so the address differs
      unless it is a view of that same memory);
    - ``opt.state``: its keys and dicts (state replaced by hand or by
      ``load_state_dict``);
    - the memory (``data_ptr()``) of every tensor the step reads or writes,
      found where torch keeps it (``param.grad``, ``opt.state[param][key]``):
      a tensor replaced, ``.data`` reassigned, ``share_memory_()``, ``set_()``;
    - the values of the 0-d state tensors (``step``, ``mu_product``), which
      the core is given as numbers: one edited in place is read again
      (compared with the counts last written, which a float32 holds exactly
      below 2**24, rather than reading them back after each step).

    Anything else rebuilds the plan. The plan holds every tensor it has a
    view of and its storage, so memory it points into is not freed and
    reused while it exists: an unchanged ``data_ptr()`` is the same memory
    (a tensor replaced by another view of its own memory is not noticed, and
    needs not be; one replaced by a view of it in another dtype or shape is
    not supported).
    The core keeps the step counts in the plan's dicts and the plan copies
    them into torch's tensors after each step.
    """

    def __init__(self, opt: FusedOptimizer) -> None:
        row = opt.row
        self.state_map = opt.state
        self.groups = list(opt.param_groups)
        self.param_lists = [group["params"] for group in self.groups]
        self.param_copies = [list(params) for params in self.param_lists]  # what the lists held
        self.core_group_list: list[dict[str, Any]] | None = None  # core_groups()
        # The core keeps what it checked at one step for the next, given the
        # same views (the plan's own: nobody else can reshape them).
        self.rule_step, self.step_cache = row.rule.step_cached, _core.StepCache()
        self.specs = [_state_layout(opt, group) for group in self.groups]
        # The group's values the specs were read from: unchanged objects need no new spec.
        self.spec_values = [list(group.values()) for group in self.groups]
        self.params = [p for params in self.param_lists for p in params]
        self.step_grads = list(map(_GRAD, self.params))  # held during a step only
        self.has_grad = [g is not None for g in self.step_grads]
        self.group_views: list[list[np.ndarray | None]] = []
        self.grad_views: list[np.ndarray | None] = []  # aligned with params, for the core
        self.entries: list[dict[str, Any] | None] = []  # the core's state dicts, likewise
        self.active: list[torch.Tensor] = []  # the params the step updates
        self.grad_refs: list[weakref.ref] = []  # aligned with params
        self.grad_ptrs: list[int] = []  # of the gradients there are
        self.watched: list[torch.Tensor] = []  # the params the step updates
        self.pending: list[tuple[torch.Tensor, str, torch.Tensor]] = []  # state to store once the step succeeds
        # torch's 0-d state tensors (step, mu_product) and the core's numbers.
        self.mirror_tensors: list[torch.Tensor] = []
        self.mirror_views: list[np.ndarray] = []
        self.mirror_entries: list[dict[str, Any]] = []
        self.mirror_keys: list[str] = []
        self.mirror_labels: list[str] = []
        # (param, torch's state key) of every state tensor the step uses, for the memory check
        self.state_slots: list[tuple[torch.Tensor, str]] = []
        self.state_held: list[Any] = []  # their storages, kept allocated

        index = 0
        for g, (group, params, ((arrays, scalars), storage_keys)) in enumerate(
                zip(self.groups, self.param_lists, self.specs)):
            # The rule's arrays, then those the storage options add (the master copy, the Kahan buffer).
            array_keys = [(key, row.torch_key(key), True) for key in arrays]
            array_keys += [(key, row.torch_key(key), False) for key in storage_keys]
            scalar_keys = [(key, row.torch_key(key), value) for key, value in scalars.items()]
            counts_steps = opt._counts_steps(group)
            if counts_steps:
                scalar_keys.insert(0, ("step", "step", 0.0))
            views: list[np.ndarray | None] = []
            for param in params:
                if not self.has_grad[index]:  # skipped, as torch skips it
                    views.append(None)
                    self.grad_views.append(None)
                    self.entries.append(None)
                else:
                    views.append(_view(param))
                    self.active.append(param)
                    self.watched.append(param)
                    self.entries.append(self._entry(opt, group, g, param, index, array_keys, scalar_keys,
                                                    counts_steps))
                    self.grad_views.append(None)  # filled by _take_grads
                index += 1
            self.group_views.append(views)
        self._take_grads()
        self.watched_ptrs = list(map(_DATA_PTR, self.watched))
        self.mirror_values = list(map(_ITEM, self.mirror_views))
        # Where the check and the record read and write them: float32 and
        # float64 directly (width 4 or 8), any other dtype through its view.
        self.mirror_addresses = [view.ctypes.data for view in self.mirror_views]
        self.mirror_widths = [_MIRROR_WIDTHS.get(view.dtype, 0) for view in self.mirror_views]
        if not self.pending:
            self._snapshot_state(opt)

    def _entry(self, opt: FusedOptimizer, group: dict[str, Any], g: int, param: torch.Tensor, index: int,
               array_keys: list, scalar_keys: list, counts_steps: bool) -> dict[str, Any]:
        """One param's state for the core, from torch's (made as the core's
        initial state where it is missing, and stored only after the step)."""
        state = opt.state.get(param, _NO_STATE)
        entry: dict[str, Any] = {}
        created = False  # a state array of the rule made now
        initial = None
        if group.get("state_bits") == 8 and _core.keeps_8bit_state(opt._core_group(group), param.numel(), g):
            # 8-bit state: each rule array's codes, and its block scales beside it.
            array_keys = array_keys + [(absmax_key(core_key), opt.row.torch_key(absmax_key(core_key)), False)
                                       for core_key, _, of_rule in array_keys if of_rule]
        for core_key, torch_key, of_rule in array_keys:
            tensor = state.get(torch_key)
            if tensor is None:  # a new param, a setting turned on (amsgrad), a checkpoint without a master copy
                if initial is None:
                    initial = opt._initial_state(group, param, g)
                tensor = initial[torch_key]
                self.pending.append((param, torch_key, tensor))
                created = created or of_rule
            elif not isinstance(tensor, torch.Tensor):
                raise TypeError(f"state[{torch_key!r}] of params[{index}] must be a torch.Tensor, got "
                                f"{type(tensor).__name__}")
            else:
                self.state_slots.append((param, torch_key))
            entry[core_key] = _view(tensor)
            self.state_held.append(tensor.untyped_storage())
        for core_key, torch_key, initial in scalar_keys:
            tensor = state.get(torch_key)
            label = f"state[{torch_key!r}] of params[{index}]"
            if tensor is None:
                tensor = _new_scalar(initial)
                self.pending.append((param, torch_key, tensor))
            else:
                self.state_slots.append((param, torch_key))
            entry[core_key] = _mirrored_value(tensor, core_key, label)
            self.mirror_tensors.append(tensor)
            self.mirror_views.append(_view(tensor))
            self.mirror_entries.append(entry)
            self.mirror_keys.append(core_key)
            self.mirror_labels.append(label)
            self.state_held.append(tensor.untyped_storage())
        if not counts_steps:
            # The core counts steps to know when a momentum buffer is new (it
            # then starts as a copy of the gradient); torch instead looks for
            # the buffer. Tell the core the same: it counts on from here.
            entry["step"] = 0 if created else 1
        return entry

    def _take_grads(self) -> None:
        """Views of this step's gradients (``step_grads``)."""
        grads = self.step_grads
        self.grad_refs = [_NO_GRAD if g is None else weakref.ref(g) for g in grads]
        present = list(compress(grads, self.has_grad))
        self.grad_ptrs = list(map(_DATA_PTR, present))
        self.grad_views = [None if g is None else _unowned_view(g) for g in grads]

    def _snapshot_state(self, opt: FusedOptimizer) -> None:
        """What the identity check of ``opt.state`` compares with."""
        self.state_items = list(opt.state.items())  # held: their identities stay theirs
        self.slot_dicts = [opt.state[param] for param, _ in self.state_slots]
        self.slot_keys = [key for _, key in self.state_slots]
        self.slot_ptrs = list(map(_DATA_PTR, map(_GET, self.slot_dicts, self.slot_keys)))

    # ------------------------------------------------------------ each step
    def fits(self, opt: FusedOptimizer) -> bool:
        """Whether the plan still describes ``opt`` (after taking in new
        gradient objects and re-reading edited 0-d state). The walk over the
        plan's lists is ``_core.check_torch_plan`` (csrc/torch_plan.cpp), which
        reports what it found; what follows handles the rarer findings."""
        changes, grads = _core.check_torch_plan(self, opt.param_groups, opt.state)
        if not changes:
            self.step_grads = grads
            return True
        if changes & _core.TORCH_PLAN_REBUILD:
            return False
        if changes & _core.TORCH_PLAN_GROUP_VALUES:
            # A value replaced (a scheduler's lr): the state layout may differ (amsgrad turned on).
            self.core_group_list = None
            for g, group in enumerate(self.groups):
                values = list(group.values())
                if len(values) != len(self.spec_values[g]) or not all(map(operator.is_, values, self.spec_values[g])):
                    if _state_layout(opt, group) != self.specs[g]:
                        return False
                    self.spec_values[g] = values
        self.step_grads = grads
        if changes & _core.TORCH_PLAN_NEW_GRADS:
            self._take_grads()
        if changes & _core.TORCH_PLAN_MIRRORS_EDITED:
            self._reread_mirrors()
        return True

    def _reread_mirrors(self) -> None:
        """The 0-d state tensors edited in place since the last step, read again."""
        values = list(map(_ITEM, self.mirror_views))
        for k, (value, cached) in enumerate(zip(values, self.mirror_values)):
            if value != cached:
                key = self.mirror_keys[k]
                self.mirror_entries[k][key] = _mirrored_value(self.mirror_tensors[k], key, self.mirror_labels[k])
        self.mirror_values = values

    def core_groups(self, opt: FusedOptimizer) -> list[dict[str, Any]]:
        """The groups as the core reads them: hyperparameters as they are
        now (a scheduler edits them between steps), views for params. Kept
        while every group's values are the objects they were (fits() drops
        them otherwise): the core reads those objects' values at each step."""
        if self.core_group_list is None:
            self.core_group_list = [{**opt._core_group(group), "params": views}
                                    for group, views in zip(opt.param_groups, self.group_views)]
        return self.core_group_list

    def record(self, opt: FusedOptimizer) -> None:
        """After a step the core made: store the state it needed, copy its
        counts into torch's 0-d tensors, tell autograd the params changed."""
        if self.pending:
            for param, key, tensor in self.pending:
                opt.state.setdefault(param, {})[key] = tensor
                self.state_slots.append((param, key))
            self.pending = []
            self._snapshot_state(opt)
        # What the tensors now hold, for the next step's check.
        self.mirror_values = _core.record_torch_plan(self)
        # The params changed through NumPy, which autograd does not see: bump
        # their version counters, so a graph that saved them refuses to
        # backward through stale values, as after torch's in-place updates.
        _increment_versions(self.active)


def _state_layout(opt: FusedOptimizer, group: Mapping[str, Any]) -> tuple:
    """What state a group's settings ask for: the rule's (``state_spec``) and
    the storage options' arrays (a master copy, a Kahan buffer)."""
    core_group = opt._core_group(group)
    return opt.row.rule.state_spec(core_group), storage_state_keys(core_group)


class _Gone:
    pass


_NO_GRAD = weakref.ref(_Gone())  # a dead reference: where a param has no gradient


def _unowned_view(grad: torch.Tensor) -> np.ndarray:
    """A NumPy view of a gradient's memory that does not keep it allocated
    (the plan checks before each use that the gradient still owns it); any
    gradient the core would refuse gets an ordinary view, for its error."""
    dtype = _NUMPY_DTYPES.get(grad.dtype)
    if dtype is None or not grad.is_cpu or grad.layout != torch.strided or not grad.is_contiguous() or grad.numel() == 0:
        return _view(grad)
    return _core.unowned_view(dtype, grad.shape, grad.data_ptr())


def _view(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a tensor's memory, whose base (a detached alias)
    keeps that memory allocated even if the tensor's ``.data`` is replaced.
    A bfloat16 tensor, which ``.numpy()`` refuses (NumPy has no bfloat16 of
    its own), is viewed through its bits as ml_dtypes' bfloat16: no copy."""
    if tensor.dtype == torch.bfloat16:
        return tensor.detach().view(torch.int16).numpy().view(_NUMPY_BFLOAT16)
    return tensor.detach().numpy()


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (the core's new state arrays);
    ml_dtypes' bfloat16 through its bits, as in _view."""
    if array.dtype == _NUMPY_BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _increment_versions(tensors: list[torch.Tensor]) -> None:
    torch.autograd.graph.increment_version(tensors)


try:
    torch.autograd.graph.increment_version([])  # a list: torch >= 2.5
except TypeError:  # earlier torch takes one tensor at a time
    def _increment_versions(tensors: list[torch.Tensor]) -> None:  # noqa: F811
        for tensor in tensors:
            torch.autograd.graph.increment_version(tensor)
else:
    # What that public function calls, without its Python frame (a third of
    # a 1-tensor step's bookkeeping), where torch has it and it takes a list.
    try:
        torch._C._increment_version([])
        _increment_versions = torch._C._increment_version  # noqa: F811
    except (AttributeError, TypeError):
        pass


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives ``state["step"]`` and NAdam's
    ``state["mu_product"]``: float32, or float64 when that is torch's default
    dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _new_scalar(value: float) -> torch.Tensor:
    """A 0-d state tensor (step, mu_product), as torch.optim makes one."""
    return torch.tensor(value, dtype=_scalar_dtype())


def _scalar_value(value: Any) -> float | None:
    """A saved or live scalar state value (a one-element floating tensor, or
    a number) as a float, or None if it is not a finite real number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    return float(value)


def _scalar_state(value: Any, label: str) -> float:
    """A live scalar state tensor's value for the core, or an error naming it."""
    number = _scalar_value(value) if isinstance(value, torch.Tensor) else None
    if number is None:
        raise ValueError(f"{label} must be a one-element floating-point tensor holding a finite "
                         f"number, got {value!r:.60}")
    _check_on_cpu(value, label)
    return number


def _live_step(step: Any, label: str) -> int:
    """A live ``state["step"]`` (torch's 0-d tensor) as the core's int, or
    an error naming it."""
    if not isinstance(step, torch.Tensor):
        raise TypeError(f"{label} must be a one-element tensor (torch keeps the count in a 0-d float "
                        f"tensor), got {type(step).__name__} {step!r:.60}")
    if step.numel() != 1:
        raise ValueError(f"{label} must be a one-element tensor, got one of shape {tuple(step.shape)}")
    _check_on_cpu(step, label)
    count = _step_count(step)
    if count is None or count >= _MAX_STEP:
        raise _bad_step(step, label)
    return count


def _mirrored_value(tensor: Any, core_key: str, label: str) -> int | float:
    """The core's number for a 0-d state tensor: the step count, or scalar state."""
    return _live_step(tensor, label) if core_key == "step" else _scalar_state(tensor, label)


def _check_on_cpu(tensor: torch.Tensor, label: str) -> None:
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        raise TypeError(f"{label} is a {tensor.layout} tensor on {tensor.device}: fusedopt.torch works on "
                        "dense CPU tensors only")


def _step_count(step: Any) -> int | None:
    """A saved or live ``state["step"]`` (a 0-d tensor, or a number) as the
    core's int, or None if it is not a non-negative whole number."""
    value = step.item() if isinstance(step, torch.Tensor) and step.numel() == 1 else step
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not float(value).is_integer() or value < 0:
        return None
    return int(value)


def _bad_step(step: Any, label: str) -> ValueError:
    return ValueError(f"{label} must be a non-negative whole number, got {step!r}")


def _check_param(param: Any, label: str, meta_allowed: bool = False) -> None:
    """A param fusedopt can update in place through a NumPy view (or, with
    ``meta_allowed``, one that can be made real before the first step)."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(param).__name__}")
    if param.device.type != "cpu" and not (meta_allowed and param.device.type == "meta"):
        raise TypeError(f"{label} is on {param.device}: fusedopt.torch updates CPU tensors only")
    if param.layout != torch.strided:
        raise TypeError(f"{label} is {param.layout}: fusedopt.torch updates dense tensors only")
    if param.dtype not in _FLOAT_DTYPES:
        kind = "complex " if param.is_complex() else ""
        raise TypeError(
            f"{label} has {kind}dtype {param.dtype}: fusedopt.torch updates float32, float64, "
            "bfloat16 and float16 tensors only"
        )
    if not _is_dense(param):
        raise ValueError(
            f"{label} is not dense (strides {param.stride()}): fusedopt updates params in place "
            "and never copies; any layout whose elements fill one block of memory will do (contiguous, "
            "channels_last, a transpose): param.data = param.data.contiguous()"
        )


def _is_dense(tensor: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one block of memory, in
    some order (contiguous, channels_last, a transpose), as the core needs."""
    expected = 1
    for stride, size in sorted((abs(st), n) for st, n in zip(tensor.stride(), tensor.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(tensor: torch.Tensor, param: torch.Tensor) -> bool:
    """Element k of the one block is element k of the other (strides of the axes longer than 1 agree)."""
    return all(a == b for a, b, n in zip(tensor.stride(), param.stride(), param.shape) if n != 1)


def _check_like_param(tensor: Any, param: torch.Tensor, label: str, state_key: str | None = None) -> None:
    """A gradient (or, with ``state_key``, state tensor) the core can use beside ``param``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise TypeError(f"{label} is on {tensor.device}: fusedopt.torch works on CPU tensors only")
    if tensor.layout != torch.strided:
        raise TypeError(f"{label} is {tensor.layout}: fusedopt.torch works on dense tensors only")
    allowed = (param.dtype,) if state_key is None else tuple(
        _TORCH_DTYPES[dtype] for dtype in state_dtypes(state_key, _NUMPY_DTYPES[param.dtype]))
    if tensor.dtype not in allowed:
        may = "" if state_key is None else f" (it may be {' or '.join(map(str, allowed))})"
        raise TypeError(f"{label} has dtype {tensor.dtype}, the param has {param.dtype}{may}")
    if tensor.shape != param.shape:
        raise ValueError(f"{label} has shape {tuple(tensor.shape)}, the param has {tuple(param.shape)}")
    if not _is_dense(tensor) or not _same_layout(tensor, param):
        raise ValueError(f"{label} has strides {tensor.stride()}, the param {param.stride()}: the update pairs "
                         "elements by their place in memory, so both need one dense layout")


def _check_saved_state(entry: Any, param: torch.Tensor, array_keys: list[str], scalar_keys: list[str],
                       where: str, block_size: int | None = None) -> None:
    """One param's saved state, as load_state_dict will take it: the arrays
    shaped like the param, the scalars ("step", "mu_product") numbers; with
    8-bit state (``block_size``), each array uint8 codes with a float32 scale
    per block beside it."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
    for key in scalar_keys + array_keys:
        if key not in entry:
            raise ValueError(f"{where} has no {key!r} (a state_dict of another rule or settings?)")
    for key in scalar_keys:
        value = entry[key]
        if key == "step":
            if _step_count(value) is None:
                raise _bad_step(value, f"{where}['step']")
        elif _scalar_value(value) is None:
            raise ValueError(f"{where}[{key!r}] must be a finite number (a one-element tensor or a "
                             f"Python number), got {value!r:.60}")
    for key in array_keys:
        value = entry[key]
        if block_size is not None:
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
                raise TypeError(f"{where}[{key!r}] must be a uint8 torch.Tensor of 8-bit codes (the group has "
                                f"state_bits=8), got {value!r:.60}")
            scales = entry.get(absmax_key(key))
            blocks = -(-param.numel() // block_size)
            if not isinstance(scales, torch.Tensor) or not scales.is_floating_point() or scales.shape != (blocks,):
                raise ValueError(f"{where}[{absmax_key(key)!r}] must be a float tensor of {blocks} block scales "
                                 f"(8-bit state, block_size={block_size}), got {scales!r:.60}")
        elif not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{where}[{key!r}] must be a floating-point torch.Tensor, got {value!r:.60}")
        if value.shape != param.shape:
            raise ValueError(f"{where}[{key!r}] has shape {tuple(value.shape)}, the param has {tuple(param.shape)}")
        if value.layout != torch.strided or not _is_dense(value):
            raise ValueError(f"{where}[{key!r}] must be a dense tensor")


# ---------------------------------------------------------------------------
# The rules: one row each.


class Momentum(FusedOptimizer, row=Row(fusedopt.Momentum, None)):
    pass


class SGD(FusedOptimizer, row=Row(fusedopt.SGD, "SGD", counts_steps=False)):
    pass


class Adadelta(FusedOptimizer, row=Row(fusedopt.Adadelta, "Adadelta")):
    pass


class Adam(FusedOptimizer, row=Row(fusedopt.Adam, "Adam")):
    pass


class AdamW(FusedOptimizer, row=Row(fusedopt.AdamW, "AdamW")):
    pass


class RMSprop(FusedOptimizer, row=Row(fusedopt.RMSprop, "RMSprop")):
    pass


class Adagrad(FusedOptimizer, row=Row(fusedopt.Adagrad, "Adagrad", state_at_construction=True)):
    pass


class NAdam(FusedOptimizer, row=Row(fusedopt.NAdam, "NAdam")):
    pass


class RAdam(FusedOptimizer, row=Row(fusedopt.RAdam, "RAdam")):
    pass


class Adamax(FusedOptimizer, row=Row(fusedopt.Adamax, "Adamax")):
    pass


class Lion(FusedOptimizer, row=Row(fusedopt.Lion, None)):
    pass


# bitsandbytes' names: the rule's class with 8-bit block-quantized state by
# default (state_bits=8; docs/precision.md).


def _with_8bit_state(base: type[FusedOptimizer], name: str) -> type[FusedOptimizer]:
    """``base`` with ``state_bits=8`` by default, named as bitsandbytes names it."""
    def __init__(self, params: Iterable, *args: Any, state_bits: int = 8, **kwargs: Any) -> None:
        base.__init__(self, params, *args, state_bits=state_bits, **kwargs)

    signature = base.__signature__.replace(parameters=[
        p.replace(default=8) if p.name == "state_bits" else p for p in base.__signature__.parameters.values()])
    doc = (f"fusedopt.torch.{base.__name__} with 8-bit block-quantized state by default "
           f"(``{base.__name__}(..., state_bits=8)``, bitsandbytes' {name}; docs/precision.md).")
    return type(name, (base,), {"__init__": __init__, "__signature__": signature, "__doc__": doc,
                                "__module__": __name__, "__qualname__": name})


Adam8bit = _with_8bit_state(Adam, "Adam8bit")
AdamW8bit = _with_8bit_state(AdamW, "AdamW8bit")
Lion8bit = _with_8bit_state(Lion, "Lion8bit")
SGD8bit = _with_8bit_state(SGD, "SGD8bit")
