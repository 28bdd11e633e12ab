"""state_dict() / load_state_dict(): torch's layout, snapshots, exact resume."""

import math

import numpy as np
import pytest

import fusedopt
from cases import CASE_IDS, CASES, all_arrays, random_arrays, resume_and_uninterrupted

SIZES = [7, 100, 1000]


@pytest.mark.parametrize("name, kwargs", CASES, ids=CASE_IDS)
def test_resume_is_bitwise_identical(dtype, name, kwargs):
    """Stop after k steps, load the state_dict into a fresh optimizer over fresh
    copies of the params, continue: the same bits as an uninterrupted run."""
    rng = np.random.default_rng(1)
    start = random_arrays(rng, SIZES, dtype)
    grads = [random_arrays(rng, SIZES, dtype) for _ in range(8)]

    def carry_over(first, fresh):
        saved = first.state_dict()
        for i, entry in enumerate(first.state):  # scalar state (NAdam's mu_product) included
            assert saved["state"][i].keys() == entry.keys()
            for key, value in entry.items():
                np.testing.assert_array_equal(saved["state"][i][key], value, err_msg=f"saved state[{i}][{key!r}]")
        fresh.load_state_dict(saved)

    resumed, uninterrupted = resume_and_uninterrupted(name, kwargs, start, grads, stop=3, carry_over=carry_over)

    got, want = all_arrays(resumed), all_arrays(uninterrupted)
    assert got.keys() == want.keys()
    for label in want:
        np.testing.assert_array_equal(got[label], want[label], err_msg=label)
    assert resumed.param_groups[1]["lr"] == 0.05


def test_layout_is_torchs():
    params = [np.zeros(3, np.float32), np.zeros(4, np.float32), np.zeros(5, np.float32)]
    opt = fusedopt.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], amsgrad=True)
    opt.step([np.ones(3, np.float32), np.ones(4, np.float32), np.ones(5, np.float32)])
    sd = opt.state_dict()
    assert sd.keys() == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.1
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(sd["state"]) == {0, 1, 2}
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][2]["step"] == 1 and type(sd["state"][2]["step"]) is int
    for entry in sd["state"].values():
        for value in entry.values():
            assert isinstance(value, (np.ndarray, int))


def test_state_dict_is_a_snapshot_and_load_copies():
    w = np.ones(10)
    opt = fusedopt.Adam([w])
    opt.step([np.ones(10)])
    sd = opt.state_dict()
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state[0]["exp_avg"])
    opt.step([np.ones(10)])
    assert sd["state"][0]["step"] == 1  # unaffected by later steps

    other = fusedopt.Adam([np.ones(10)])
    other.load_state_dict(sd)
    assert not np.shares_memory(other.state[0]["exp_avg"], sd["state"][0]["exp_avg"])
    sd["state"][0]["exp_avg"][:] = 123.0
    assert not (other.state[0]["exp_avg"] == 123.0).any()


def test_load_keeps_the_optimizers_own_params():
    w = np.ones(4)
    opt = fusedopt.SGD([w], lr=0.1)
    sd = fusedopt.SGD([np.zeros(4)], lr=0.5).state_dict()
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["params"][0] is w
    assert opt.param_groups[0]["lr"] == 0.5


def trained_adam():
    params = [np.ones(5, np.float32), np.ones(6, np.float32)]
    opt = fusedopt.Adam(params)
    opt.step([np.ones(5, np.float32), np.ones(6, np.float32)])
    return opt


def tamper(change):
    def make(sd):
        change(sd)
        return sd
    return make


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (tamper(lambda sd: sd["state"][1].__setitem__("exp_avg", np.zeros(6, np.float64))), TypeError,
         r"params\[1\]\]?.*dtype float64"),
        (tamper(lambda sd: sd["state"][1].__setitem__("exp_avg", np.zeros(7, np.float32))), ValueError, "shape"),
        (tamper(lambda sd: sd["state"][1].pop("exp_avg_sq")), ValueError, "has no 'exp_avg_sq'"),
        (tamper(lambda sd: sd["state"][0].__setitem__("step", -2)), ValueError, "step"),
        (tamper(lambda sd: sd["state"].pop(1)), ValueError, "no entry 1"),
        (tamper(lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0)), ValueError, "lr"),
        (tamper(lambda sd: sd["param_groups"][0].__setitem__("params", [0])), ValueError, "has 1 params"),
        (tamper(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0]))), ValueError, "2 param groups"),
        (lambda sd: {"state": sd["state"]}, ValueError, "'state' and 'param_groups'"),
        (lambda sd: fusedopt.SGD([np.ones(5, np.float32), np.ones(6, np.float32)], momentum=0.9).state_dict(),
         ValueError, "has no 'betas'"),  # another rule's state_dict
    ],
)
def test_bad_state_dict_changes_nothing(make, error, pattern):
    opt = trained_adam()
    before = opt.state_dict()
    with pytest.raises(error, match=pattern):
        opt.load_state_dict(make(trained_adam().state_dict()))
    after = opt.state_dict()
    assert [{k: v for k, v in g.items()} for g in after["param_groups"]] == before["param_groups"]
    for i, entry in before["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][i][key], value)


@pytest.mark.parametrize("value", [None, "1.0", True, math.nan], ids=["missing", "str", "bool", "nan"])
def test_nadam_load_state_dict_checks_mu_product(rng, value):
    params = random_arrays(rng, [3], np.float64)
    opt = fusedopt.NAdam(params)
    saved = opt.state_dict()
    if value is None:
        del saved["state"][0]["mu_product"]
    else:
        saved["state"][0]["mu_product"] = value
    with pytest.raises(ValueError, match=r"params\[0\] needs 'mu_product', a finite number"):
        opt.load_state_dict(saved)
    assert opt.state[0]["mu_product"] == 1.0
