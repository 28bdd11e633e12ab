"""Build and runtime configuration: SIMD target, OpenMP, threads."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from . import _core

__all__ = ["cpu_features", "show_config", "get_num_threads", "set_num_threads", "threads"]

_MAX_THREADS = _core.build_info()["max_threads"]


def cpu_features() -> dict[str, Any]:
    """What was built and what runs: ``isa`` (the chosen target, spelled as
    ``FUSEDOPT_ISA`` spells it), ``compiled_targets``, ``supported_targets``,
    ``cpu``, ``cpu_flags``, ``openmp``, ``compiler``, ``version``,
    ``num_threads``, ``max_threads`` and ``serial_cutoff_bytes``."""
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
    """The number of threads a large step on this Python thread runs on (at
    most: with the default count, a step runs on the calling thread while
    the machine is too busy for the others; see the README)."""
    return _core.num_threads()


def _checked_count(n: Any) -> int:
    """n as a thread count, in the range FUSEDOPT_NUM_THREADS accepts (more
    threads than that overflow the OpenMP runtime's stack)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"n must be from 1 to {_MAX_THREADS}, as FUSEDOPT_NUM_THREADS, got {n}")
    return n


def set_num_threads(n: int) -> int:
    """Fix the number of threads for every Python thread (overriding
    OMP_NUM_THREADS and threadpoolctl); returns the previous count."""
    previous = get_num_threads()
    _core.set_thread_override(_checked_count(n))
    return previous


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the steps that this Python thread makes inside the ``with`` block
    on ``n`` threads. The count belongs to the calling thread: other Python
    threads keep theirs, and blocks on different threads may interleave."""
    previous = _core.set_scoped_thread_override(_checked_count(n))
    try:
        yield
    finally:
        _core.set_scoped_thread_override(previous)
