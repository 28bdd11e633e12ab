"""The rules the benchmark measures: one line each.

A rule is a fusedopt optimizer class with constructor arguments, and the
``torch.optim`` class and arguments that make the same update (None where
torch has no such optimizer). The memory streams, and so the roof and the
minimal traffic, follow from the state the rule keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

import fusedopt

__all__ = ["BenchRule", "RULES", "QUICK_RULES", "rule_named"]


@dataclass(frozen=True)
class BenchRule:
    key: str                                   # the name on the command line
    optimizer: str                             # a class of fusedopt (and of fusedopt.reference)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    torch: tuple[str, Mapping[str, Any]] | None = None   # torch.optim class name, kwargs

    @cached_property
    def state_keys(self) -> list[str]:
        """The state arrays the rule reads and writes for each param."""
        probe = getattr(fusedopt, self.optimizer)([np.zeros(1)], **self.kwargs)
        return probe.rule.state_keys(probe.param_groups[0])

    @property
    def streams(self) -> int:
        """Arrays per param: the param, its grad and the state arrays."""
        return 2 + len(self.state_keys)

    def bytes_per_element(self, dtype: np.dtype) -> int:
        """Minimal traffic with params, grads and state in ``dtype``
        (precisions.py counts every precision mode)."""
        from .precisions import PRECISIONS
        return PRECISIONS[np.dtype(dtype).name].bytes_per_element(self)

    def describe(self) -> str:
        arguments = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.optimizer}({arguments})"

    def streams_text(self) -> str:
        written = ["w", *self.state_keys]
        return f"reads {', '.join(['w', 'g', *self.state_keys])}; writes {', '.join(written)}"


def _frozen(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


# Momentum (the course's heavy ball) is torch's SGD with momentum and
# dampening 0 up to the scale of the buffer: the same streams and work.
# A rule gets a second row only where an option changes its streams or its
# code path: SGD with momentum (3 streams, not 2), RMSprop centered with
# momentum (5 streams, the most any rule has, and two more terms).
RULES: list[BenchRule] = [
    BenchRule("momentum", "Momentum", _frozen(lr=1e-3, momentum=0.9), ("SGD", _frozen(lr=1e-3, momentum=0.9))),
    BenchRule("sgd", "SGD", _frozen(lr=1e-3), ("SGD", _frozen(lr=1e-3))),
    BenchRule("sgd_momentum", "SGD", _frozen(lr=1e-3, momentum=0.9), ("SGD", _frozen(lr=1e-3, momentum=0.9))),
    BenchRule("adadelta", "Adadelta", _frozen(), ("Adadelta", _frozen())),
    BenchRule("adam", "Adam", _frozen(), ("Adam", _frozen())),
    BenchRule("adamw", "AdamW", _frozen(), ("AdamW", _frozen())),
    BenchRule("rmsprop", "RMSprop", _frozen(), ("RMSprop", _frozen())),
    BenchRule("rmsprop_centered_momentum", "RMSprop", _frozen(momentum=0.9, centered=True),
              ("RMSprop", _frozen(momentum=0.9, centered=True))),
    BenchRule("adagrad", "Adagrad", _frozen(), ("Adagrad", _frozen())),
    BenchRule("nadam", "NAdam", _frozen(), ("NAdam", _frozen())),
    BenchRule("radam", "RAdam", _frozen(), ("RAdam", _frozen())),
    BenchRule("adamax", "Adamax", _frozen(), ("Adamax", _frozen())),
    BenchRule("lion", "Lion", _frozen()),   # not in torch.optim
]

# What --quick measures: a rule of each stream count from 3 to 5, SGD with
# momentum, Adam (the most used) and Adadelta (4 streams, no fused torch
# version) and RMSprop centered with momentum (5 streams).
QUICK_RULES: list[str] = ["sgd_momentum", "adadelta", "adam", "rmsprop_centered_momentum"]


def rule_named(key: str) -> BenchRule:
    for rule in RULES:
        if rule.key == key:
            return rule
    raise ValueError(f"unknown rule {key!r}; the rules are {', '.join(r.key for r in RULES)}")
