"""fusedopt.torch with 16-bit tensors: zero-copy views, the storage options,
state_dict interchange that keeps the state dtypes, and torch.amp.GradScaler.

Against torch: torch 2.13 has fused CPU kernels for Adam, AdamW, SGD and
Adagrad (``fused=True``; RMSprop, Adadelta and the others have none). On
16-bit tensors they keep the state in the param's dtype, compute in float32
and round every store to nearest: fusedopt.torch's defaults. Both compute in
float32 from the same 16-bit inputs, but torch's vectorised loops fuse
multiply-adds (FMA) and fusedopt's core never does, so the two float32
results differ by a few float32 ulps; a bfloat16 ulp is 2**16 float32 ulps
(a float16 ulp 2**13), so after rounding each stored value is the same or
the adjacent 16-bit value. The comparison is therefore one step at a time
from the same inputs (each step starts from torch's params and state, copied
into ours in place), every element of the params and every state tensor
within ONE_ULP of torch's, counted on the 16-bit grid. Run free, the
one-ulp differences would feed later steps and the bound would have to grow.

torch 2.13's fused SGD on a 16-bit tensor updates only the elements past the
last full vector (in a tensor of 33 elements, 1 moves): our SGD is compared
with torch's for-loop SGD on the float32 upcast of the same inputs, rounded
to nearest, which is what the fused kernel means to compute.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fusedopt
import fusedopt.torch as ft
from cases import PRECISIONS, RULE_INFO, RULE_NAMES

# Around the SIMD widths (8 and 16 float32 lanes; the core's 64-element chunks) and one larger tensor.
SIZES = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000]
STEPS = 5
ONE_ULP = 1
DTYPES_16 = [torch.bfloat16, torch.float16]

# The rules with a fused CPU kernel in torch 2.13, and option sets of each.
FUSED_CASES = [
    ("Adam", {"lr": 1e-2}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 1e-2, "maximize": True}),
    ("AdamW", {"lr": 1e-2}),
    ("AdamW", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.5}),
    ("Adagrad", {"lr": 1e-2}),
    ("Adagrad", {"lr": 1e-2, "weight_decay": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.5}),
]
SGD_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    {"lr": 1e-2, "momentum": 0.5, "dampening": 0.3, "maximize": True},
]


def case_id(name, kwargs):
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def grid_distance(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """How many 16-bit values apart each pair of elements is (0 for equal,
    +0 and -0 the same), from their bit patterns: sign-magnitude integers
    mapped onto one ordered line."""
    def ordered(t):
        bits = t.view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(ours) - ordered(theirs)).abs()


def ulp_at(magnitude: float, dtype: torch.dtype) -> float:
    """The spacing of the 16-bit grid at a (normal) magnitude."""
    return float(np.spacing(np.asarray(magnitude).astype(ft._NUMPY_DTYPES[dtype]))) if magnitude > 0 else 0.0


def assert_within_one_ulp(ours, theirs, label):
    """Each element within one 16-bit ulp of torch's, or, where the terms of
    its update cancel (a param stepping across zero, a running average of
    gradients of both signs: their ulp is tiny, as bfloat16 has float32's
    exponents), within one ulp of the tensor's largest magnitude: torch's
    fused kernels round some intermediates (the state, before the param's
    update reads it) to the 16-bit grid, which moves a result by up to an
    ulp of the terms it combines."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, label
    assert torch.isfinite(theirs).all(), label
    distance = grid_distance(ours, theirs)
    scale = float(theirs.float().abs().max())
    cancelled = (ours.float() - theirs.float()).abs() <= ulp_at(scale, theirs.dtype)
    bad = (distance > ONE_ULP) & ~cancelled
    assert not bad.any(), f"{label}: {int(bad.sum())} elements more than one ulp apart (worst {int(distance.max())})"


def assert_moved(params, before, label):
    """The update reached the elements (torch's fused SGD on 16-bit tensors
    moves only a tensor's tail): at least 90% of them, and half of every
    tensor of 16 elements or more (an update below half an ulp of a large
    element rounds back to it)."""
    moved = [(p.detach() != b) for p, b in zip(params, before)]
    assert sum(int(m.sum()) for m in moved) >= 0.9 * sum(m.numel() for m in moved), label
    assert all(m.float().mean() >= 0.5 for m in moved if m.numel() >= 16), label


def make_params(dtype, seed=0):
    """Params of about 0.1, whose bfloat16 ulp (at most 2**-9) is below the
    lr-sized steps of every rule here, so every element moves; gradients
    never zero."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((0.1 * torch.randn(n, generator=generator)).to(dtype)) for n in SIZES]


def set_grads(params, step):
    generator = torch.Generator().manual_seed(1000 + step)
    for p in params:
        g = torch.randn(p.shape, generator=generator)
        p.grad = (g + torch.sign(g) * 0.1).to(p.dtype)


def copy_into(ours_opt, ours, theirs_opt, theirs):
    """Our params and state made equal to torch's, in place (the same tensors)."""
    with torch.no_grad():
        for mine, their in zip(ours, theirs):
            mine.copy_(their)
            mine.grad = their.grad.clone()
            for key, value in theirs_opt.state[their].items():
                if key in ours_opt.state[mine]:
                    ours_opt.state[mine][key].copy_(value)


def assert_step_matches(ours_opt, ours, theirs_opt, theirs, step):
    for i, (mine, their) in enumerate(zip(ours, theirs)):
        assert_within_one_ulp(mine.detach(), their.detach(), f"params[{i}] after step {step}")
        their_state, my_state = theirs_opt.state[their], ours_opt.state[mine]
        assert my_state.keys() == their_state.keys(), f"state[{i}] keys"
        for key, value in their_state.items():
            if key == "step":
                assert my_state[key].item() == value.item() == step, f"state[{i}]['step']"
            else:
                assert_within_one_ulp(my_state[key], value, f"state[{i}][{key!r}] after step {step}")


# ------------------------------------------------------------------ zero copy

@pytest.mark.parametrize("dtype", DTYPES_16 + [torch.float32])
def test_16bit_tensors_are_viewed_and_stepped_in_place(dtype):
    """The core works on views of the tensors' own memory: the NumPy view of
    a bfloat16 tensor is ml_dtypes' bfloat16 over the same address, and a
    step changes the params and state tensors where they are."""
    params = [torch.nn.Parameter(torch.ones(n, dtype=dtype)) for n in (33, 1000)]
    for p in params:
        view = ft._view(p)
        assert view.__array_interface__["data"][0] == p.data_ptr()
        assert view.dtype == ft._NUMPY_DTYPES[dtype] and view.shape == tuple(p.shape)
    opt = ft.AdamW(params, lr=0.1, state_dtype=torch.float32 if dtype != torch.float32 else None)
    addresses = [p.data_ptr() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)  # each step moves each element by lr
    opt.step()
    state_addresses = {(i, k): v.data_ptr() for i, p in enumerate(params) for k, v in opt.state[p].items()}
    before = [p.detach().clone() for p in params]
    opt.step()
    assert [p.data_ptr() for p in params] == addresses
    assert {(i, k): v.data_ptr() for i, p in enumerate(params) for k, v in opt.state[p].items()} == state_addresses
    assert all((p.detach() != b).all() for p, b in zip(params, before))  # every element moved, in place
    # A view of a live bfloat16 tensor writes through to it.
    ft._view(params[0])[0] = 2.0
    assert params[0][0].item() == 2.0


# ------------------------------------------------------------ against torch

@pytest.mark.parametrize("dtype", DTYPES_16, ids=str)
@pytest.mark.parametrize("name, kwargs", FUSED_CASES, ids=[case_id(*c) for c in FUSED_CASES])
def test_16bit_defaults_match_torch_fused(name, kwargs, dtype):
    theirs, ours = make_params(dtype), make_params(dtype)
    theirs_opt = getattr(torch.optim, name)(theirs, fused=True, **kwargs)
    ours_opt = getattr(ft, name)(ours, **kwargs)
    for step in range(1, STEPS + 1):
        set_grads(theirs, step)
        if step > 1 or name == "Adagrad":  # (Adagrad's state exists from the constructor)
            copy_into(ours_opt, ours, theirs_opt, theirs)
        else:
            for mine, their in zip(ours, theirs):
                mine.grad = their.grad.clone()
        before = [p.detach().clone() for p in theirs]
        theirs_opt.step()
        ours_opt.step()
        assert_moved(theirs, before, f"torch's step {step}")
        assert_step_matches(ours_opt, ours, theirs_opt, theirs, step)


def float32_reference_sgd_step(params, state, kwargs):
    """torch's for-loop SGD on the float32 upcast of 16-bit params, grads and
    momentum buffers, the results rounded to nearest: what torch's fused
    kernel means to compute (see the module docstring)."""
    wide = [torch.nn.Parameter(p.detach().float()) for p in params]
    for w, p in zip(wide, params):
        w.grad = p.grad.float()
    opt = torch.optim.SGD(wide, foreach=False, **kwargs)
    for w, p in zip(wide, params):
        if "momentum_buffer" in state.get(p, {}):
            opt.state[w]["momentum_buffer"] = state[p]["momentum_buffer"].float()
    opt.step()
    return ([w.detach().to(params[0].dtype) for w in wide],
            [{k: v.to(params[0].dtype) for k, v in opt.state[w].items() if v is not None} for w in wide])


@pytest.mark.parametrize("dtype", DTYPES_16, ids=str)
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=[case_id("SGD", k) for k in SGD_CASES])
def test_16bit_sgd_matches_torchs_float32_step_rounded(kwargs, dtype):
    params = make_params(dtype)
    opt = ft.SGD(params, **kwargs)
    for step in range(1, STEPS + 1):
        set_grads(params, step)
        want_params, want_state = float32_reference_sgd_step(params, opt.state, kwargs)
        before = [p.detach().clone() for p in params]
        opt.step()
        assert_moved(params, before, f"step {step}")
        for i, (p, want, want_entry) in enumerate(zip(params, want_params, want_state)):
            assert_within_one_ulp(p.detach(), want, f"params[{i}] after step {step}")
            assert opt.state[p].keys() == want_entry.keys()
            for key, value in want_entry.items():
                assert_within_one_ulp(opt.state[p][key], value, f"state[{i}][{key!r}] after step {step}")


# ------------------------------------------- the storage options, vs NumPy API

def torch_options(options):
    """The NumPy API's storage options with torch dtypes where it has dtypes."""
    to_torch = {np.dtype(v): k for k, v in ft._NUMPY_DTYPES.items()}
    state_dtype = options.get("state_dtype")
    if state_dtype is None:
        return dict(options)
    if isinstance(state_dtype, dict):
        return {**options, "state_dtype": {k: to_torch[np.dtype(v)] for k, v in state_dtype.items()}}
    return {**options, "state_dtype": to_torch[np.dtype(state_dtype)]}


STORAGE_CASES = [(name, precision) for name in RULE_NAMES for precision in PRECISIONS
                 if precision.grad_scale is None]


@pytest.mark.parametrize("name, precision", STORAGE_CASES,
                         ids=[f"{name}-{precision.name}" for name, precision in STORAGE_CASES])
def test_storage_options_are_the_numpy_apis_bitwise(name, precision):
    """The same arrays in, the same bits out: params and every state array
    (master copies and Kahan buffers included) after every step."""
    rng = np.random.default_rng(5)
    sizes = [1, 17, 64, 65]
    arrays = precision.params(rng, sizes)
    tensors = [torch.nn.Parameter(torch.zeros(a.shape, dtype=ft._TORCH_DTYPES[a.dtype])) for a in arrays]
    for t, a in zip(tensors, arrays):
        ft._view(t)[...] = a
    kwargs = precision.kwargs(name)
    numpy_opt = getattr(fusedopt, name)(arrays, **kwargs)
    torch_opt = getattr(ft, name)(tensors, **torch_options(kwargs))
    for step in range(1, 4):
        grads = precision.grads(rng, sizes)
        for t, g in zip(tensors, grads):
            t.grad = torch.zeros_like(t)
            ft._view(t.grad)[...] = g
        numpy_opt.step(grads)
        torch_opt.step()
        for i, (t, a) in enumerate(zip(tensors, arrays)):
            np.testing.assert_array_equal(ft._view(t).view(np.uint16 if a.itemsize == 2 else a.dtype),
                                          a.view(np.uint16 if a.itemsize == 2 else a.dtype),
                                          err_msg=f"params[{i}] after step {step}")
            entry = torch_opt.state[t]
            for key, value in numpy_opt.state[i].items():
                if key == "step":
                    if "step" in entry:
                        assert entry["step"].item() == value == step
                    continue
                if not isinstance(value, np.ndarray):
                    assert entry[key].item() == pytest.approx(value, rel=1e-6), key  # mu_product: torch's 0-d float32
                    continue
                got = ft._view(entry[key])
                assert got.dtype == value.dtype, f"state[{i}][{key!r}] dtype"
                np.testing.assert_array_equal(got.view(np.uint8), value.view(np.uint8),
                                              err_msg=f"state[{i}][{key!r}] after step {step}")
            assert entry.keys() - {"step"} == numpy_opt.state[i].keys() - {"step"}


def test_storage_options_in_the_groups_and_signature():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    opt = ft.AdamW([w], state_dtype={"exp_avg_sq": torch.float32}, rounding="stochastic", seed=7)
    group = opt.param_groups[0]
    assert group["state_dtype"] == {"exp_avg_sq": "float32"} and group["rounding"] == "stochastic"
    assert group["seed"] == 7
    assert "master_weights" not in group and "kahan_sum" not in group  # defaults stay out, as torch's layout
    assert "state_dtype" not in ft.AdamW([torch.nn.Parameter(torch.zeros(3))]).param_groups[0]
    parameters = ft.Adam.__signature__.parameters
    for key, default in [("state_dtype", None), ("master_weights", False), ("kahan_sum", False),
                         ("rounding", "nearest"), ("seed", 0)]:
        assert parameters[key].default == default and parameters[key].kind is parameters[key].KEYWORD_ONLY
    # A group added later may choose its own, with torch dtypes too.
    v = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    opt.add_param_group({"params": [v], "state_dtype": torch.float32, "rounding": "nearest"})
    assert opt.param_groups[1]["state_dtype"] == "float32"
    v.grad = torch.ones_like(v)
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[v]["exp_avg"].dtype == torch.float32 and opt.state[w]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[w]["exp_avg_sq"].dtype == torch.float32


@pytest.mark.parametrize("kwargs, param_dtype, error, message", [
    ({"state_dtype": torch.int8}, torch.bfloat16, ValueError, r"state_dtype must be one of"),
    ({"state_dtype": {"exp_avg": torch.complex64}}, torch.bfloat16, ValueError, r"state_dtype\['exp_avg'\]"),
    ({"state_dtype": {"nope": torch.float32}}, torch.bfloat16, ValueError, r"state_dtype names 'nope'"),
    ({"state_dtype": torch.float64}, torch.bfloat16, ValueError, r"state_dtype is float64.*bfloat16 param"),
    ({"state_dtype": torch.bfloat16}, torch.float64, ValueError, r"state_dtype is bfloat16.*float64 param"),
    ({"master_weights": True}, torch.float32, ValueError, r"master_weights is for bfloat16 and float16"),
    ({"kahan_sum": True}, torch.float64, ValueError, r"kahan_sum is for bfloat16 and float16"),
    ({"kahan_sum": True, "rounding": "stochastic"}, torch.bfloat16, ValueError, r"choose one"),
    ({"rounding": "up"}, torch.bfloat16, ValueError, r"rounding"),
    ({"seed": "x"}, torch.bfloat16, TypeError, r"seed.*must be an int"),
    ({"seed": -1}, torch.bfloat16, ValueError, r"seed must be an int in \[0, 2\*\*64\)"),
])
def test_bad_storage_options_are_refused_by_name(kwargs, param_dtype, error, message):
    w = torch.nn.Parameter(torch.ones(5, dtype=param_dtype))
    with pytest.raises(error, match=message):
        ft.Adam([w], **kwargs)
    good = ft.Adam([torch.nn.Parameter(torch.ones(2, dtype=param_dtype))])
    with pytest.raises(error, match=message):  # a group refused is not added
        good.add_param_group({"params": [w], **kwargs})
    assert len(good.param_groups) == 1
    assert (w.detach() == 1).all()


def test_a_float32_gradient_of_a_bfloat16_param_is_refused_by_name_and_nothing_changes():
    w = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    opt = ft.Adam([w], state_dtype=torch.float32)
    w.grad_dtype = None  # (torch refuses such a gradient unless told to allow it)
    w.grad = torch.ones(5)
    with pytest.raises(TypeError, match=r"the gradient of params\[0\] \(shape \(5,\)\) has dtype torch.float32"):
        opt.step()
    assert (w.detach() == 1).all() and not opt.state


# ----------------------------------------------------------------- state_dict

def bits(tensor):
    return ft._view(tensor).tobytes()


def stepped(opt, params, steps, first=1):
    for step in range(first, first + steps):
        set_grads(params, step)
        opt.step()


@pytest.mark.parametrize("options", [
    {"state_dtype": torch.float32},
    {"master_weights": True},
    {"master_weights": True, "state_dtype": torch.float32},
    {"kahan_sum": True},
    {"rounding": "stochastic", "seed": 11},
    {"state_dtype": {"exp_avg_sq": torch.float32}},
], ids=str)
def test_a_state_dict_reloads_bitwise_keeping_its_dtypes(options):
    """torch's load_state_dict casts state to the param's dtype: ours keeps
    each array in its stored dtype, so a resumed run is bitwise the
    uninterrupted one, master copies and Kahan buffers included."""
    straight = make_params(torch.bfloat16)
    straight_opt = ft.AdamW(straight, lr=1e-2, **options)
    stepped(straight_opt, straight, 3)
    saved = copy.deepcopy(straight_opt.state_dict())

    resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    resumed_opt = ft.AdamW(resumed, lr=1e-2)  # the settings come from the state_dict
    resumed_opt.load_state_dict(saved)
    assert resumed_opt.param_groups[0].keys() == straight_opt.param_groups[0].keys()
    for p, q in zip(straight, resumed):
        assert straight_opt.state[p].keys() == resumed_opt.state[q].keys()
        for key, value in straight_opt.state[p].items():
            assert resumed_opt.state[q][key].dtype == value.dtype, key
            assert torch.equal(resumed_opt.state[q][key], value), key
    stepped(straight_opt, straight, 3, first=4)
    stepped(resumed_opt, resumed, 3, first=4)
    for p, q in zip(straight, resumed):
        assert bits(p) == bits(q)
        for key, value in straight_opt.state[p].items():
            assert bits(resumed_opt.state[q][key]) == bits(value), key


def test_state_dicts_interchange_with_torch_fused_adamw_on_bfloat16():
    """torch.optim's state_dict loads into fusedopt.torch (float32 state kept
    float32 where the optimizer asks for it: the bf16 values upcast
    exactly), and ours into torch.optim, which casts it to bfloat16 as it
    casts any state (and keeps our master copy under its key, unused)."""
    theirs = make_params(torch.bfloat16)
    theirs_opt = torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    stepped(theirs_opt, theirs, 2)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    ours_opt = ft.AdamW(ours, lr=1e-2, state_dtype=torch.float32)
    ours_opt.load_state_dict(copy.deepcopy(theirs_opt.state_dict()))
    for p, q in zip(theirs, ours):
        for key in ("exp_avg", "exp_avg_sq"):
            assert ours_opt.state[q][key].dtype == torch.float32
            assert torch.equal(ours_opt.state[q][key], theirs_opt.state[p][key].float())
        assert ours_opt.state[q]["step"].item() == 2
    stepped(ours_opt, ours, 1, first=3)

    back = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    back_opt = torch.optim.AdamW(back, lr=1e-2, fused=True)
    back_opt.load_state_dict(copy.deepcopy(ours_opt.state_dict()))
    for p, q in zip(ours, back):
        for key in ("exp_avg", "exp_avg_sq"):
            assert back_opt.state[q][key].dtype == torch.bfloat16
            assert torch.equal(back_opt.state[q][key], ours_opt.state[p][key].to(torch.bfloat16))
    stepped(back_opt, back, 1, first=4)  # and torch continues from it
    assert back_opt.state[back[0]]["step"].item() == 4


# ----------------------------------------------------------------- GradScaler

def scaled_steps(opt, params, scaler, steps_with_inf, steps=6):
    """A GradScaler loop on fixed gradients times the scale (as backward of a
    scaled loss gives), an infinity in the steps listed."""
    scales, stepped_ok = [], []
    for step in range(1, steps + 1):
        scaler.scale(torch.ones(()))  # (what scaler.scale(loss) sets up)
        set_grads(params, step)
        scale = scaler.get_scale()
        for p in params:
            p.grad = (p.grad.float() * scale).to(p.dtype)
        if step in steps_with_inf:
            params[1].grad[3] = float("inf")
        grads_before = [p.grad.clone() for p in params]
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        yield step, grads_before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_grad_scaler_steps_and_skips_as_with_torch_fused_adam(dtype):
    theirs, ours = make_params(dtype), make_params(dtype)
    theirs_opt = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    ours_opt = ft.Adam(ours, lr=1e-2)
    assert ours_opt._step_supports_amp_scaling
    their_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    our_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    inf_steps = {1, 4}
    for (step, _), (_, our_grads) in zip(scaled_steps(theirs_opt, theirs, their_scaler, inf_steps),
                                         scaled_steps(ours_opt, ours, our_scaler, inf_steps)):
        assert our_scaler.get_scale() == their_scaler.get_scale(), f"the scale after step {step}"
        for p, g in zip(ours, our_grads):
            assert torch.equal(p.grad.view(torch.int16), g.view(torch.int16)), "the grads are never written"
        taken = step - sum(s <= step for s in inf_steps)
        assert_step_matches_count(ours_opt, ours, theirs_opt, theirs, taken, step)
        copy_into(ours_opt, ours, theirs_opt, theirs)  # the next step from the same inputs
    assert ours_opt.skipped_steps == len(inf_steps)
    # Halved at steps 1 and 4, doubled after steps 2-3 and 5-6.
    assert our_scaler.get_scale() == 2.0**10


def assert_step_matches_count(ours_opt, ours, theirs_opt, theirs, taken, step):
    for i, (mine, their) in enumerate(zip(ours, theirs)):
        assert_within_one_ulp(mine.detach(), their.detach(), f"params[{i}] after step {step}")
        assert ours_opt.state[mine].keys() == theirs_opt.state[their].keys()
        for key, value in theirs_opt.state[their].items():
            if key == "step":
                assert ours_opt.state[mine][key].item() == value.item() == taken, f"state[{i}]['step'] at {step}"
            else:
                assert_within_one_ulp(ours_opt.state[mine][key], value, f"state[{i}][{key!r}] after step {step}")


def test_grad_scaler_with_float32_divides_inside_the_kernel_exactly():
    """On float32 the loss scale is divided out as the kernel reads each
    grad: with a power-of-two scale that is exact, so the run is bitwise
    the unscaled one; an inf step changes nothing at all."""
    plain = [torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(n))) for n in SIZES]
    scaled = [torch.nn.Parameter(p.detach().clone()) for p in plain]
    plain_opt, scaled_opt = ft.AdamW(plain, lr=1e-2), ft.AdamW(scaled, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for step in range(1, 5):
        scaler.scale(torch.ones(()))
        set_grads(plain, step)
        for p, q in zip(plain, scaled):
            q.grad = p.grad * scaler.get_scale()
        if step == 2:
            scaled[0].grad[0] = float("nan")
            before = [q.detach().clone() for q in scaled]
            state_before = {id(q): {k: v.clone() for k, v in scaled_opt.state[q].items()} for q in scaled}
        else:
            plain_opt.step()
        scaler.step(scaled_opt)
        scaler.update()
        if step == 2:
            assert all(torch.equal(q, b) for q, b in zip(scaled, before))
            for q in scaled:
                assert all(torch.equal(v, state_before[id(q)][k]) for k, v in scaled_opt.state[q].items())
        for p, q in zip(plain, scaled):
            assert torch.equal(p, q)
            assert all(torch.equal(v, scaled_opt.state[q][k]) for k, v in plain_opt.state[p].items())


@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaler.step", "unscale_ then step"])
def test_a_grad_scaler_loop_trains_as_with_torch_fused_adam(unscale_first):
    """A whole GradScaler loop on a float32 param (backward of the scaled
    loss, a NaN at the second step, optionally ``scaler.unscale_(opt)``
    before the step, as for clipping): the same scales and step counts as
    with torch's fused Adam, and the params to float32 rounding (torch's
    kernel uses FMA: 8 float32 ulps of the largest magnitude per step, the
    bound of test_torch_adapter.py)."""
    results = []
    for make in (lambda p: torch.optim.Adam([p], lr=0.1, fused=True), lambda p: ft.Adam([p], lr=0.1)):
        p = torch.nn.Parameter(torch.randn(40, generator=torch.Generator().manual_seed(0)))
        opt, scaler = make(p), torch.amp.GradScaler("cpu", init_scale=2.0**8)
        for step in range(4):
            scaler.scale((p**2).sum()).backward()
            if step == 1:
                p.grad[0] = float("nan")
            if unscale_first:
                scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        results.append((p.detach(), scaler.get_scale(), opt.state[p]["step"].item()))
    (theirs, their_scale, their_steps), (ours, our_scale, our_steps) = results
    assert our_scale == their_scale == 2.0**7 and our_steps == their_steps == 3
    torch.testing.assert_close(ours, theirs, rtol=0, atol=3 * 8 * 2.0**-23 * float(theirs.abs().max()))
