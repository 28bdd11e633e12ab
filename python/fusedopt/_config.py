"""Build and runtime configuration: SIMD target, OpenMP, threads."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from . import _core

__all__ = ["cpu_features", "show_config", "get_num_threads", "set_num_threads", "threads"]


def cpu_features() -> dict[str, Any]:
    """What was built and what runs: ``isa`` (the chosen target, spelled as
    ``FUSEDOPT_ISA`` spells it), ``compiled_targets``, ``supported_targets``,
    ``cpu``, ``cpu_flags``, ``openmp``, ``compiler``, ``version``,
    ``num_threads`` and ``serial_cutoff_bytes``."""
    return dict(_core.build_info())


def show_config() -> None:
    """Print the version, compiler, OpenMP runtime, SIMD targets and threads."""
    info = cpu_features()
    rows = [
        ("fusedopt", info["version"]),
        ("compiler", info["compiler"]),
        ("OpenMP", info["openmp"]),
        ("CPU", info["cpu"]),
        ("CPU features", " ".join(info["cpu_flags"]) or "-"),
        ("compiled targets", ", ".join(info["compiled_targets"])),
        ("supported here", ", ".join(info["supported_targets"])),
        ("chosen target", info["isa"]),
        ("threads", str(info["num_threads"]) + (" (forked child: serial)" if info["forked_child"] else "")),
        ("serial below", f"{info['serial_cutoff_bytes']:,} bytes moved per step"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:>{width}}: {value}")


def get_num_threads() -> int:
    """The number of threads a large step runs on."""
    return _core.num_threads()


def _checked_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return n


def set_num_threads(n: int) -> int:
    """Fix the number of threads (overriding OMP_NUM_THREADS and
    threadpoolctl); returns the previous count."""
    previous = get_num_threads()
    _core.set_thread_override(_checked_count(n))
    return previous


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the steps inside the ``with`` block on ``n`` threads."""
    previous_override = _core.set_thread_override(_checked_count(n))
    try:
        yield
    finally:
        _core.set_thread_override(previous_override)
