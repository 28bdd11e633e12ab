"""fusedopt.torch with 8-bit state: Adam8bit, AdamW8bit, Lion8bit, SGD8bit
(and state_bits=8 on any class) step exactly as the NumPy API does, their
state_dict resumes bitwise, and a model trains like torch.optim.AdamW."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fusedopt
import fusedopt.torch as ft

# (fusedopt.torch class, the NumPy API's class, hyperparameters)
CLASSES = [
    (ft.Adam8bit, fusedopt.Adam8bit, {"lr": 1e-3}),
    (ft.AdamW8bit, fusedopt.AdamW8bit, {"lr": 1e-3, "weight_decay": 0.1}),
    (ft.Lion8bit, fusedopt.Lion8bit, {"lr": 1e-4}),
    (ft.SGD8bit, fusedopt.SGD8bit, {"lr": 1e-2, "momentum": 0.9}),
    (ft.RMSprop, fusedopt.RMSprop, {"lr": 1e-3, "state_bits": 8}),
]
IDS = [torch_class.__name__ for torch_class, _, _ in CLASSES]
DTYPES = [torch.float32, torch.bfloat16]
SIZES = (5000, 4096 + 17, 300)  # two params above min_8bit_size (one not a block multiple), one below


def tensors(dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=generator) * 0.1).to(dtype) for n in SIZES]


def numpy_view(tensor):
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(fusedopt.precision.bfloat16)
    return tensor.numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("torch_class, numpy_class, kwargs", CLASSES, ids=IDS)
def test_8bit_torch_classes_step_as_the_numpy_api(torch_class, numpy_class, kwargs, dtype):
    params = [torch.nn.Parameter(t) for t in tensors(dtype, 0)]
    arrays = [numpy_view(p.detach()).copy() for p in params]
    ours = torch_class(params, **kwargs)
    theirs = numpy_class(arrays, **kwargs)
    for step in range(4):
        grads = [g * 0.1 for g in tensors(dtype, step + 1)]
        for p, g in zip(params, grads):
            p.grad = g
        ours.step()
        theirs.step([numpy_view(g) for g in grads])
        for i, (p, a) in enumerate(zip(params, arrays)):
            np.testing.assert_array_equal(numpy_view(p.detach()).view(np.uint8), a.view(np.uint8), err_msg=f"param {i}")
            state = ours.state[p]
            for key, value in theirs.state[i].items():
                if isinstance(value, np.ndarray):
                    torch_key = ours.row.torch_key(key)
                    np.testing.assert_array_equal(numpy_view(state[torch_key]).view(np.uint8), value.view(np.uint8),
                                                  err_msg=f"state[{i}][{key!r}] after step {step}")
    quantized = ours.state[params[0]]
    assert quantized["momentum_buffer" if torch_class is ft.SGD8bit else next(iter(ours.row.rule.state_spec(
        ours._core_group(ours.param_groups[0]))[0]))].dtype == torch.uint8
    assert all(v.dtype != torch.uint8 for v in ours.state[params[2]].values())  # below min_8bit_size


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_8bit_state_dict_resumes_bitwise(dtype):
    params = [torch.nn.Parameter(t) for t in tensors(dtype, 0)]
    opt = ft.AdamW8bit(params, lr=1e-3)
    for step in range(3):
        for p, g in zip(params, tensors(dtype, step + 1)):
            p.grad = g * 0.1
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["state_bits"] == 8 and saved["state"][0]["exp_avg"].dtype == torch.uint8
    assert saved["state"][0]["exp_avg_absmax"].shape == (-(-SIZES[0] // 256),)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = ft.AdamW8bit(copies, lr=1e-3)
    resumed.load_state_dict(saved)
    for p, q in zip(params, copies):
        for key, value in opt.state[p].items():
            assert resumed.state[q][key].dtype == value.dtype, key
    grads = [g * 0.1 for g in tensors(dtype, 9)]
    for p, q, g in zip(params, copies, grads):
        p.grad, q.grad = g, g.clone()
    opt.step()
    resumed.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(resumed.state[q][key], value), key


def test_8bit_state_dict_with_bad_codes_is_refused_and_changes_nothing():
    params = [torch.nn.Parameter(t) for t in tensors(torch.float32, 0)]
    opt = ft.AdamW8bit(params, lr=1e-3)
    for p, g in zip(params, tensors(torch.float32, 1)):
        p.grad = g
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"].float()
    with pytest.raises(TypeError, match=r"uint8 torch.Tensor of 8-bit codes"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(before)
    bad["state"][0]["exp_avg_absmax"] = bad["state"][0]["exp_avg_absmax"][:-1]
    with pytest.raises(ValueError, match=r"block scales"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for key, value in before["state"][0].items():
        assert torch.equal(after["state"][0][key], value), key


def test_a_model_trained_with_adamw8bit_ends_near_torch_adamw():
    """An MLP on a noisy regression task, 300 steps: the held-out loss
    within a few percent of torch.optim.AdamW's (the weights, 64x128 and up,
    are large enough for 8-bit state: min_8bit_size 4096). The noise sets a
    floor both reach for, so the comparison is of losses, not of how close
    to zero each overfits."""
    generator = torch.Generator().manual_seed(1)
    x_train, x_test = torch.randn(2048, 64, generator=generator), torch.randn(2048, 64, generator=generator)

    teacher = torch.randn(64, 1, generator=generator) / 8

    def target(x):  # a smooth function of a projection, plus noise
        return torch.tanh(x @ teacher) + 0.1 * torch.randn(len(x), 1, generator=generator)

    y_train, y_test = target(x_train), target(x_test)

    def run(make_optimizer):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64),
                                    torch.nn.Tanh(), torch.nn.Linear(64, 1))
        opt = make_optimizer(model.parameters())
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x_train), y_train).backward()
            opt.step()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x_test), y_test).item(), opt

    reference, _ = run(lambda params: torch.optim.AdamW(params, lr=3e-3))
    eight_bit, opt = run(lambda params: ft.AdamW8bit(params, lr=3e-3))
    assert sum(state["exp_avg"].dtype == torch.uint8 for state in opt.state.values()) == 2  # the two big weights
    assert eight_bit < 0.5 * y_test.var().item()  # it learned
    assert abs(eight_bit - reference) <= 0.05 * reference, (eight_bit, reference)
