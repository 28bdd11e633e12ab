"""Checkpoints (fusedopt.save / fusedopt.load, Optimizer.save / Optimizer.load):
exact resume, a plain .npz layout, every damaged or mismatched file rejected
without changing anything, atomic replacement even under SIGKILL."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import checkpoint_child
import fusedopt
from fusedopt.precision import bfloat16
from cases import CASE_IDS, CASES, all_arrays, random_arrays, resume_and_uninterrupted, two_groups
from fusedopt import checkpoint
from fusedopt.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

SIZES = [7, 100, 1000]
TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def assert_identical(got, want, where="value"):
    """Equal to the bit and of the same types, all the way down (float bits,
    NaN included; array dtypes, shapes and bytes; tuple is not list)."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, float):
        same = (math.isnan(got) and math.isnan(want)) or got.hex() == want.hex()
        assert same, f"{where}: {got!r} != {want!r}"
    elif isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            assert_identical(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_identical(a, b, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# ------------------------------------------------------------ exact resume
@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_resume_from_a_file_is_bitwise_identical(tmp_path, dtype, name, kwargs):
    """Stop after k steps, save, load into a fresh optimizer over fresh copies
    of the params at k, continue: params, every state array, every step count
    and every hyperparameter as in an uninterrupted run."""
    rng = np.random.default_rng(5)
    start = random_arrays(rng, SIZES, dtype)
    grads = [random_arrays(rng, SIZES, dtype) for _ in range(7)]
    grads[1][2] = None  # the params' step counts differ

    def carry_over(first, fresh):
        fusedopt.save(tmp_path / "run.npz", first)
        assert fusedopt.load(tmp_path / "run.npz", fresh) is None

    resumed, uninterrupted = resume_and_uninterrupted(name, kwargs, start, grads, stop=3, carry_over=carry_over)
    assert_identical(all_arrays(resumed), all_arrays(uninterrupted))
    assert_identical(resumed.state_dict(), uninterrupted.state_dict())


# Every storage mode whose state holds 16-bit arrays, a master copy, a
# compensation or a seed.
LOW_PRECISION_MODES = [
    (bfloat16, {}),
    (bfloat16, {"state_dtype": np.float32}),
    (np.float16, {"kahan_sum": True}),
    (bfloat16, {"master_weights": True}),
    (bfloat16, {"rounding": "stochastic", "seed": 7}),
    (np.float32, {"state_dtype": {"exp_avg": "bfloat16"}}),
]


@pytest.mark.parametrize("param_dtype, options", LOW_PRECISION_MODES,
                         ids=[f"{np.dtype(d).name}-{o}" for d, o in LOW_PRECISION_MODES])
def test_low_precision_resume_from_a_file_is_bitwise_identical(tmp_path, param_dtype, options):
    """bfloat16 arrays survive the .npz (stored as their bits, read back as
    bfloat16, with allow_pickle=False) and a resumed run is bitwise an
    uninterrupted one."""
    rng = np.random.default_rng(6)
    start = [a.astype(param_dtype) for a in random_arrays(rng, SIZES, np.float32)]
    grads = [[a.astype(param_dtype) for a in random_arrays(rng, SIZES, np.float32)] for _ in range(6)]

    def carry_over(first, fresh):
        fusedopt.save(tmp_path / "run.npz", first)
        with np.load(tmp_path / "run.npz", allow_pickle=False) as npz:
            assert all(npz[name].dtype.kind != "V" for name in npz.files)  # no anonymous 2-byte voids
        assert fusedopt.load(tmp_path / "run.npz", fresh) is None

    resumed, uninterrupted = resume_and_uninterrupted("AdamW", options, start, grads, stop=3, carry_over=carry_over)
    assert_identical(all_arrays(resumed), all_arrays(uninterrupted))
    assert_identical(resumed.state_dict(), uninterrupted.state_dict())


def advance(schedulers, t):
    for scheduler in schedulers:
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(float(t % 3))  # a metric that stalls: the lr gets cut
        else:
            scheduler.step()


SCHEDULERS = {
    "StepLR": lambda opt: [StepLR(opt, step_size=2, gamma=0.5)],
    "CosineAnnealingLR": lambda opt: [CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)],
    "OneCycleLR-betas": lambda opt: [OneCycleLR(opt, max_lr=0.01, total_steps=12)],
    "ReduceLROnPlateau-inf": lambda opt: [ReduceLROnPlateau(opt, patience=1, factor=0.5)],
    "SequentialLR": lambda opt: [
        SequentialLR(opt, [LinearLR(opt, total_iters=3), CosineAnnealingLR(opt, T_max=4)], milestones=[3])
    ],
    "StepLR+ReduceLROnPlateau": lambda opt: [StepLR(opt, step_size=3), ReduceLROnPlateau(opt, patience=0)],
}


@pytest.mark.parametrize("make_schedulers", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_resume_with_schedulers_is_bitwise_identical(tmp_path, make_schedulers):
    """The schedulers' states (recursive lrs, a best of inf, beta1 cycled in a
    tuple, wrapped schedulers) come back exactly: the lrs go on as if the run
    had never stopped."""
    rng = np.random.default_rng(6)
    start = random_arrays(rng, SIZES, np.float32)
    grads = [random_arrays(rng, SIZES, np.float32) for _ in range(11)]

    def run(opt, schedulers, steps):
        for t in steps:
            opt.step(grads[t])
            advance(schedulers, t)

    uninterrupted = fusedopt.Adam(two_groups([p.copy() for p in start]))
    uninterrupted_schedulers = make_schedulers(uninterrupted)
    run(uninterrupted, uninterrupted_schedulers, range(11))

    first_params = [p.copy() for p in start]
    first = fusedopt.Adam(two_groups(first_params))
    first_schedulers = make_schedulers(first)
    run(first, first_schedulers, range(4))
    fusedopt.save(tmp_path / "run.npz", first, schedulers=first_schedulers)

    resumed = fusedopt.Adam(two_groups([p.copy() for p in first_params]))
    resumed_schedulers = make_schedulers(resumed)  # construction moves the lrs: load undoes it
    fusedopt.load(tmp_path / "run.npz", resumed, schedulers=resumed_schedulers)
    for got, want in zip(resumed_schedulers, first_schedulers):
        assert_identical(got.state_dict(), want.state_dict())
    run(resumed, resumed_schedulers, range(4, 11))

    assert_identical(resumed.state_dict(), uninterrupted.state_dict())
    assert_identical(all_arrays(resumed), all_arrays(uninterrupted))
    for got, want in zip(resumed_schedulers, uninterrupted_schedulers):
        assert_identical(got.state_dict(), want.state_dict())
        assert_identical(got.get_last_lr(), want.get_last_lr())


def test_extra_values_round_trip_exactly(tmp_path):
    """Whatever ``extra`` holds comes back with its exact bits and types,
    including values JSON has no words for and dicts that look like our tags."""
    strided = np.arange(24.0).reshape(4, 6)[:, ::2]
    extra = {
        "floats": [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan],
        "ints": [0, -1, 2**80, True, False, None],
        "text": "ünïcødé \U0001F600 \ud800",
        "tuple": (1, (2.5, "x"), []),
        "int keys": {0: "a", 10: "b", (1, 2): "c", None: "d", 2.5: "e"},
        "looks like a tag": {"__tuple__": [1, 2]},
        "looks like an array": {"__ndarray__": "fusedopt_checkpoint"},
        "numpy scalars": [np.float32(0.1), np.float64(-0.0), np.int8(-7), np.bool_(True), np.float16(np.inf)],
        "arrays": [
            np.array(3.5), np.zeros((0, 3), np.int16), np.array([1 + 2j], np.complex64),
            np.array([True, False]), np.asfortranarray(np.arange(6.0).reshape(2, 3)), strided,
            np.array(["ab", "ü"]), np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        ],
        "same array twice": [strided, strided],
        "nested": {"a": {"b": [{"c": (np.float32(1.5),)}]}},
    }
    opt = fusedopt.SGD([np.ones(3)])
    fusedopt.save(tmp_path / "run.npz", opt, extra=extra)
    got = fusedopt.load(tmp_path / "run.npz", fusedopt.SGD([np.ones(3)]))
    assert_identical(got, extra)
    assert got["arrays"][4].flags.f_contiguous  # .npy keeps the memory order
    assert fusedopt.load(tmp_path / "run.npz", fusedopt.SGD([np.ones(3)])) is not None


def test_the_file_is_a_plain_npz(tmp_path):
    """np.load(allow_pickle=False) reads everything: one entry per state array,
    named by its place, and one JSON document as a 0-d string."""
    params = [np.ones(5, np.float32), np.ones((2, 3))]
    opt = fusedopt.Adam(two_groups(params), amsgrad=True)
    opt.step([np.ones(5, np.float32), np.ones((2, 3))])
    fusedopt.save(tmp_path / "run.npz", opt, extra={"epoch": 3})
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    with np.load(tmp_path / "run.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            ["fusedopt_checkpoint"] + [f"optimizer/state/{i}/{key}" for i in (0, 1) for key in keys]
        )
        for i, entry in enumerate(opt.state):
            for key in keys:
                assert_identical(npz[f"optimizer/state/{i}/{key}"], entry[key])
        text = npz["fusedopt_checkpoint"]
        assert text.shape == () and text.dtype.kind == "U"
        document = json.loads(str(text))
    assert document["format"] == "fusedopt checkpoint" and document["version"] == checkpoint.FORMAT_VERSION
    assert (document["optimizer_class"], document["rule"]) == ("Adam", "adam")
    assert document["optimizer"]["param_groups"][1]["lr"] == 0.05
    assert document["extra"] == {"epoch": 3}


def test_the_path_is_used_as_given(tmp_path):
    """No ".npz" appended (np.savez would), str and PathLike alike; the
    functions and the methods are the same thing."""
    opt = fusedopt.Momentum([np.ones(4)])
    opt.step([np.ones(4)])
    fusedopt.save(str(tmp_path / "ckpt"), opt)
    assert os.listdir(tmp_path) == ["ckpt"]
    fusedopt.save(tmp_path / "ckpt.bin", opt)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "ckpt.bin"]
    assert (tmp_path / "ckpt").read_bytes() == (tmp_path / "ckpt.bin").read_bytes()
    other = fusedopt.Momentum([np.ones(4)])
    checkpoint.load(tmp_path / "ckpt.bin", other)
    assert_identical(other.state_dict(), opt.state_dict())
    assert fusedopt.save is checkpoint.save and fusedopt.load is checkpoint.load


# ------------------------------------------------- bad files change nothing
def trained_adam(seed, shapes=((5,), (2, 3)), dtype=np.float32, cls=fusedopt.Adam, **kwargs):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = cls(two_groups(params), amsgrad=True, **kwargs)
    for _ in range(seed % 3 + 1):
        opt.step([rng.standard_normal(s).astype(dtype) for s in shapes])
    return opt


@pytest.fixture
def saved(tmp_path):
    """A good checkpoint's path, and the state_dict it holds."""
    opt = trained_adam(1)
    fusedopt.save(tmp_path / "good.npz", opt)
    return tmp_path / "good.npz", opt.state_dict()


class Unchanged:
    """Snapshot an optimizer (and schedulers); check nothing of it changed."""

    def __init__(self, opt, schedulers=()):
        self.opt, self.schedulers = opt, schedulers
        self.state_dict = opt.state_dict()
        self.arrays = [dict(entry) for entry in opt.state]  # the array objects themselves
        self.params = [p for group in opt.param_groups for p in group["params"]]
        self.param_values = [p.copy() for p in self.params]
        self.scheduler_states = [s.state_dict() for s in schedulers]

    def check(self):
        assert_identical(self.opt.state_dict(), self.state_dict)
        for entry, before in zip(self.opt.state, self.arrays):
            assert all(entry[key] is value for key, value in before.items() if key != "step")
        params = [p for group in self.opt.param_groups for p in group["params"]]
        assert len(params) == len(self.params) and all(p is q for p, q in zip(params, self.params))
        assert_identical(params, self.param_values)
        for scheduler, state in zip(self.schedulers, self.scheduler_states):
            assert_identical(scheduler.state_dict(), state)


def test_a_missing_file_raises_file_not_found(tmp_path):
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    with pytest.raises(FileNotFoundError) as raised:
        fusedopt.load(tmp_path / "nothing.npz", opt)
    assert raised.value.filename == str(tmp_path / "nothing.npz")
    unchanged.check()


def test_a_truncated_file_is_rejected(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    for length in sorted({0, 1, 3, 4, 30, 200, len(data) // 2, len(data) - 100, len(data) - 22, len(data) - 1}):
        (tmp_path / "cut.npz").write_bytes(data[:length])
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "cut.npz"))):
            fusedopt.load(tmp_path / "cut.npz", opt)
        unchanged.check()


def test_corrupt_array_data_or_document_fails_its_crc(saved, tmp_path):
    path, state_dict = saved
    data = path.read_bytes()
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    targets = [state_dict["state"][1]["exp_avg_sq"].tobytes(), '"format"'.encode("utf-32-le")]
    for target in targets:
        at = data.index(target) + len(target) // 2
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        (tmp_path / "bad.npz").write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="CRC"):
            fusedopt.load(tmp_path / "bad.npz", opt)
        unchanged.check()


def test_any_flipped_byte_is_rejected_or_harmless(saved, tmp_path):
    """A byte flipped anywhere (every 5th position) either makes load raise a
    ValueError, changing nothing, or lands in a zip field that carries no
    data (a timestamp, a version), and the exact state loads."""
    path, state_dict = saved
    data = path.read_bytes()
    rejected = 0
    for at in range(0, len(data), 5):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        (tmp_path / "bad.npz").write_bytes(bytes(damaged))
        opt = trained_adam(2)
        unchanged = Unchanged(opt)
        try:
            fusedopt.load(tmp_path / "bad.npz", opt)
        except ValueError:
            unchanged.check()
            rejected += 1
        else:
            assert_identical(opt.state_dict(), state_dict)
    assert rejected > len(data) // 5 * 0.7  # nearly every byte is data or structure


def test_files_that_are_not_checkpoints_are_rejected(tmp_path):
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "array.npy", np.ones(3))
    np.save(tmp_path / "pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    cases = {
        "text.npz": "not an .npz file", "array.npy": "not an .npz file", "pickle.npy": "not an .npz file",
        "other.npz": "no 'fusedopt_checkpoint' entry",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            fusedopt.load(tmp_path / name, opt)
        unchanged.check()


@pytest.mark.parametrize(
    "make_saved, message",
    [
        (lambda: trained_adam(1, cls=fusedopt.AdamW),  # the same rule, another class
         r"saved from AdamW \(rule 'adam'\), this optimizer is Adam"),
        (lambda: fusedopt.SGD([np.ones(5, np.float32), np.ones((2, 3), np.float32)], momentum=0.9),
         r"saved from SGD \(rule 'sgd'\)"),
        (lambda: trained_adam(1, shapes=((5,), (3, 2))), r"params\[1\]\['exp_avg'\] has shape \(3, 2\)"),
        (lambda: trained_adam(1, dtype=np.float64), "dtype float64"),
        (lambda: trained_adam(1, shapes=((5,), (2, 3), (4,))), "has 2 params"),
        (lambda: fusedopt.Adam([np.ones(5, np.float32), np.ones((2, 3), np.float32)], amsgrad=True),
         "1 param groups"),
    ],
    ids=["AdamW", "SGD", "shapes", "dtypes", "params", "groups"],
)
def test_a_checkpoint_of_another_optimizer_is_rejected(tmp_path, make_saved, message):
    fusedopt.save(tmp_path / "other.npz", make_saved())
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "other.npz"))) as raised:
        fusedopt.load(tmp_path / "other.npz", opt)
    assert re.search(message, str(raised.value)), str(raised.value)
    unchanged.check()


def rewrite(path, change_document=lambda d: d, change_entries=lambda e: e, text=None):
    """Rewrite a checkpoint with its JSON document (or text) and entries changed."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {name: npz[name] for name in npz.files}
    document = change_document(json.loads(str(entries["fusedopt_checkpoint"])))
    entries["fusedopt_checkpoint"] = np.array(json.dumps(document) if text is None else text)
    with open(path, "wb") as file:
        np.savez(file, **change_entries(entries))


def set_in(keys, value):
    def change(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return document
    return change


def drop(name):
    return lambda entries: {k: v for k, v in entries.items() if k != name}


@pytest.mark.parametrize(
    "tamper, message",
    [
        (dict(text="{not json"), "Expecting property name"),
        (dict(text="[]"), "not a fusedopt checkpoint document"),
        (dict(change_document=set_in(["version"], 2)), "format version 2"),
        (dict(change_document=set_in(["format"], "something else")), "not a fusedopt checkpoint document"),
        (dict(change_document=lambda d: {k: v for k, v in d.items() if k != "extra"}), r"no \['extra'\]"),
        (dict(change_document=set_in(["optimizer_class"], "SGD")), "saved from SGD"),
        (dict(change_document=set_in(["optimizer", "param_groups", 0, "lr"], -1.0)), "lr"),
        (dict(change_document=set_in(["optimizer", "param_groups", 0, "betas"], {"__tuple__": 0.9})),
         "__tuple__ entry holds a float"),
        (dict(change_document=set_in(["optimizer", "state", "__pairs__", 0, 1, "step"], -1)), "step"),
        (dict(change_document=set_in(["optimizer", "state", "__pairs__", 1, 1, "exp_avg"],
                                     {"__ndarray__": "optimizer/state/0/exp_avg"})), "used twice"),
        (dict(change_entries=drop("optimizer/state/1/exp_avg")), "no array entry 'optimizer/state/1/exp_avg'"),
        (dict(change_entries=lambda e: {**e, "stray": np.ones(2)}), r"\['stray'\] belong to nothing"),
        (dict(change_entries=lambda e: {**e, "fusedopt_checkpoint": np.array(b"{}")}),
         "no 'fusedopt_checkpoint'"),
        (dict(change_document=set_in(["schedulers"], [{"class": "StepLR", "state": {}}])),
         "1 scheduler states, 0 schedulers"),
        (dict(change_document=set_in(["schedulers"], [["StepLR"]])), "not a list of {'class', 'state'} dicts"),
    ],
    ids=["bad-json", "not-a-dict", "version", "format", "no-extra", "class", "bad-lr", "bad-tag", "bad-step",
         "array-twice", "missing-array", "stray-array", "document-bytes", "scheduler-count",
         "scheduler-entry"],
)
def test_a_tampered_checkpoint_is_rejected(saved, tamper, message):
    path, _ = saved
    rewrite(path, **tamper)
    opt = trained_adam(2)
    unchanged = Unchanged(opt)
    with pytest.raises(ValueError, match=re.escape(str(path))) as raised:
        fusedopt.load(path, opt)
    assert re.search(message, str(raised.value)), str(raised.value)
    unchanged.check()


class RejectingScheduler:
    """A scheduler whose load_state_dict raises (after the optimizer has loaded)."""

    def __init__(self, optimizer):
        self.optimizer, self.count = optimizer, 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        raise ValueError("no thanks")


def test_schedulers_that_do_not_match_change_nothing(tmp_path):
    """Another scheduler count or class is rejected before anything loads; a
    scheduler that raises while loading rolls back the optimizer and the
    schedulers loaded before it."""
    source = trained_adam(1)
    source_schedulers = [StepLR(source, step_size=3), RejectingScheduler(source)]
    fusedopt.save(tmp_path / "run.npz", source, schedulers=source_schedulers)

    opt = trained_adam(2)
    step_lr, cosine = StepLR(opt, step_size=5), CosineAnnealingLR(opt, T_max=5)
    for schedulers, message in [
        ([step_lr], "2 scheduler states, 1 schedulers"),
        ([cosine, RejectingScheduler(opt)], r"schedulers\[0\] is a CosineAnnealingLR, the file holds a 'StepLR'"),
        ([step_lr, RejectingScheduler(opt)], r"schedulers\[1\] rejected its saved state: no thanks"),
    ]:
        unchanged = Unchanged(opt, schedulers)
        with pytest.raises(ValueError, match=message):
            fusedopt.load(tmp_path / "run.npz", opt, schedulers=schedulers)
        unchanged.check()
    with pytest.raises(ValueError, match="drives another optimizer"):
        fusedopt.load(tmp_path / "run.npz", opt, schedulers=[source_schedulers[0], step_lr])


# ------------------------------------------------------------ atomic saves
def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    """Whatever fails (a value that cannot be saved, writing, fsync, the
    rename), the previous checkpoint is untouched and no temporary is left."""
    path = tmp_path / "run.npz"
    opt = trained_adam(1)
    fusedopt.save(path, opt)
    before = path.read_bytes()
    later = trained_adam(2)

    for bad in [{"a": object()}, {1, 2}, [np.array([None])], {"f": len}]:
        with pytest.raises(TypeError, match="cannot save extra"):
            fusedopt.save(path, later, extra=bad)

    def broken(after):
        calls = [0]
        real = after[0]

        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == after[1]:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)
        return call

    for module, name, failing_call in [(np.lib.format, "write_array", 3), (os, "fsync", 1), (os, "replace", 1)]:
        with monkeypatch.context() as patch:
            patch.setattr(module, name, broken((getattr(module, name), failing_call)))
            with pytest.raises(OSError, match="No space left"):
                fusedopt.save(path, later)
        assert os.listdir(tmp_path) == ["run.npz"]
        assert path.read_bytes() == before

    with pytest.raises(IsADirectoryError):
        fusedopt.save(tmp_path, later)  # the path is a directory: the rename fails
    assert os.listdir(tmp_path) == ["run.npz"]
    assert not [name for name in os.listdir(tmp_path.parent) if TEMPORARY.match(name)]
    with pytest.raises(FileNotFoundError):
        fusedopt.save(tmp_path / "no such directory" / "run.npz", later)


def test_saving_keeps_the_files_mode(tmp_path):
    path = tmp_path / "run.npz"
    opt = trained_adam(1)
    previous = os.umask(0o027)
    try:
        fusedopt.save(path, opt)
        assert path.stat().st_mode & 0o777 == 0o640  # a new file: 0o666 less the umask, as open() makes
        os.umask(0o022)
        path.chmod(0o600)
        fusedopt.save(path, opt)
        assert path.stat().st_mode & 0o777 == 0o600
        path.chmod(0o444)  # read-only: replaced all the same (the directory is writable), still read-only
        fusedopt.save(path, opt)
        assert path.stat().st_mode & 0o777 == 0o444
    finally:
        os.umask(previous)


def read_log(log):
    """The steps whose saves the child finished (complete lines only)."""
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().split("\n")[:-1]]


def wait_for(condition, process, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the child exited ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX")
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    """A child resumes from the checkpoint and saves to it again and again; it
    is SIGKILLed at fixed points of a save (writing the temporary file, before
    the rename, after it) and at random moments. Each time the file at path
    holds, bit for bit, a state the child had completely saved: the last one
    it logged, or (killed after the rename, before logging) the next one."""
    path, log = tmp_path / "ckpt.npz", tmp_path / "saved.log"
    marker = Path(str(path) + ".paused")
    params, reference = checkpoint_child.make_optimizer()
    delays = np.random.default_rng(7).uniform(0.0, 0.25, size=5)
    runs = ["writing", "before_replace", "after_replace"] + [f"random {d:.3f}" for d in delays]
    for run in runs:
        logged_before = len(read_log(log))
        marker.unlink(missing_ok=True)
        child = subprocess.Popen(
            [sys.executable, checkpoint_child.__file__, str(path), str(log), run.split()[0]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            if run.startswith("random"):
                wait_for(lambda: len(read_log(log)) > logged_before, child, "a first save")
                time.sleep(float(run.split()[1]))
            else:
                wait_for(marker.exists, child, f"the pause at {run}")
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stderr.close()

        last_logged = read_log(log)[-1]
        temporaries = [name for name in os.listdir(tmp_path) if TEMPORARY.match(name)]
        assert set(os.listdir(tmp_path)) == {path.name, log.name, *temporaries} | (
            {marker.name} if marker.exists() else set())
        params_now, loaded = checkpoint_child.make_optimizer()
        extra = fusedopt.load(path, loaded)
        step = loaded.state[0]["step"]
        partial = [name for name in temporaries if name.startswith(f".{path.name}.{child.pid}.")]
        if run in ("writing", "before_replace"):
            assert step == last_logged and partial  # killed with its temporary file half or fully written
        elif run == "after_replace":
            assert step == last_logged + 1 and not partial
        else:
            assert step in (last_logged, last_logged + 1)
        checkpoint_child.replay(params, reference, step)
        assert_identical(loaded.state_dict(), reference.state_dict(), f"after the kill in {run!r}")
        assert_identical(extra["params"], params)
