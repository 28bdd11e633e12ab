"""The test table (cases.py) against the package: every optimizer class has
its entry, and what an entry says of its rule is what the package does (the
entry's other facts are checked where they are used: the state keys in
test_state.py, the torch names and defaults in test_against_torch.py)."""

import inspect

import pytest

import fusedopt
from cases import (
    BAD_HYPERPARAMETER_IDS,
    CASE_IDS,
    FULL_STATE_CASE_IDS,
    RULES,
    TORCH_CASE_IDS,
)


def optimizer_classes():
    """One class per rule (the 8-bit presets, Adam8bit and the like, are their rule's class with state_bits=8)."""
    return [name for name in fusedopt.__all__
            if isinstance(getattr(fusedopt, name), type) and issubclass(getattr(fusedopt, name), fusedopt.Optimizer)
            and name != "Optimizer" and name not in fusedopt.optimizers.EIGHT_BIT]


def test_every_optimizer_class_has_its_entry():
    assert [info.name for info in RULES] == optimizer_classes()
    for info in RULES:
        assert hasattr(fusedopt.reference, info.name), info.name


@pytest.mark.parametrize("info", RULES, ids=[info.name for info in RULES])
def test_entry_matches_the_class(info):
    """The table's default lr is the class's; each entry has cases (the
    defaults first) and bad hyperparameters, and every case runs somewhere."""
    assert inspect.signature(getattr(fusedopt, info.name)).parameters["lr"].default == info.default_lr
    assert info.cases[0].kwargs == {} and info.cases[0].reference
    assert info.bad_hyperparameters and info.full_state and info.state_keys
    assert all(case.reference or (info.torch_name and case.torch) for case in info.cases)


@pytest.mark.parametrize("ids", [CASE_IDS, TORCH_CASE_IDS, FULL_STATE_CASE_IDS, BAD_HYPERPARAMETER_IDS],
                         ids=["cases", "torch cases", "full-state cases", "bad hyperparameters"])
def test_ids_are_unique(ids):
    """pytest would silently number a repeated id: a repeated case would run twice under two names."""
    assert len(set(ids)) == len(ids)
