"""A sharded (ZeRO stage 1) step over MPI, for NumPy users.

    # mpiexec -n 4 python train.py         (pip install "fusedopt[mpi]")
    opt = fusedopt.distributed.ZeroRedundancyOptimizer(params, fusedopt.AdamW, lr=1e-3)
    opt.step(local_grads)                  # every rank: its own grads; the params end equal

Every rank holds the same params. ``step(grads)`` averages the ranks' grads,
each rank steps only its shard (about 1/N of every state array lives on each
rank), and the updated params are gathered back onto every rank. The result
is bitwise the params and state of one unsharded optimizer stepping on the
averaged grads, whatever the world size. docs/distributed.md has the
guarantees, the layout, the failure behaviour and a cost model.

The average is defined, not left to MPI: rank 0's grad plus rank 1's plus
..., in that order, then divided by the world size, in the grads' dtype
(float32 for 16-bit grads, stored back rounded to nearest even). The grads
travel as raw bytes (an Alltoallv: each rank receives every rank's copy of
its own shard) and each rank sums its shard in rank order.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import _core, optimizers
from .optimizer import Optimizer
from .precision import absmax_key
from .rule import NonFiniteGradError

__all__ = ["ZeroRedundancyOptimizer", "BLOCK", "shard_layout"]

# Shard boundaries inside a param fall on multiples of BLOCK elements from
# the param's start: a whole number of SIMD vectors and of 8-bit state blocks
# (256 elements), so no block is ever split between ranks.
BLOCK = 256

# The private group key (csrc/rules.hpp, StorageOptions::random_index) that
# gives each shard piece the full param's position and its element offset,
# so stochastic rounding draws the same random bits as the unsharded step.
_RANDOM_INDEX = "_random_index"


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of param ``param`` (its position in the full
    optimizer), owned by rank ``rank``."""

    param: int
    start: int
    stop: int
    rank: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def shard_layout(sizes: Sequence[int], world_size: int, block: int = BLOCK) -> list[Piece]:
    """The params (``sizes`` in elements, in optimizer order) laid end to end
    and cut into ``world_size`` contiguous shards of about equal size: each
    cut snapped to the nearest param end or multiple of ``block`` (BLOCK, or
    a multiple of it that 8-bit state's blocks divide) inside a param.
    Returns the pieces in flat order (so rank by rank); every param has at
    least one piece (an empty param one of size 0)."""
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    total = offsets[-1]
    cuts = [0]
    for r in range(1, world_size):
        target = (r * total) // world_size
        p = max(0, np.searchsorted(offsets, target, side="right") - 1)
        p = min(p, len(sizes) - 1)
        inside = target - offsets[p]
        cut = offsets[p] + min(int(round(inside / block)) * block, sizes[p])
        cuts.append(max(cut, cuts[-1]))
    cuts.append(total)

    pieces = []
    for p, size in enumerate(sizes):
        begin, end = offsets[p], offsets[p] + size
        if size == 0:  # an empty param belongs to the shard its position falls in
            rank = max(r for r in range(world_size) if cuts[r] <= begin)
            pieces.append(Piece(p, 0, 0, rank))
            continue
        for r in range(world_size):
            lo, hi = max(begin, cuts[r]), min(end, cuts[r + 1])
            if lo < hi:
                pieces.append(Piece(p, lo - begin, hi - begin, r))
    return pieces


@dataclass(frozen=True)
class _Segment:
    """A piece cut at bucket boundaries: the unit a message carries."""

    piece: int  # index into the layout
    param: int
    start: int
    stop: int
    rank: int
    nbytes: int


class ZeroRedundancyOptimizer:
    """ZeRO stage 1 over MPI: ``optimizer_class`` (any fusedopt optimizer) run
    on this rank's shard of the params, with torch's
    ``torch.distributed.optim.ZeroRedundancyOptimizer`` names.

    ``params`` (arrays or param-group dicts, as for any fusedopt optimizer)
    must be the same on every rank: the same count, order, shapes, dtypes and
    hyperparameters; construction compares them across the ranks and raises
    the same ValueError on every rank when they differ. ``comm`` is an
    mpi4py communicator (default ``MPI.COMM_WORLD``); ``defaults`` go to
    ``optimizer_class`` (``nonfinite``, the storage options included).

    ``step(grads)`` takes this rank's grads (one per param, none may be
    None), averages them over the ranks (docs/distributed.md defines the
    average), steps this rank's shard and all-gathers the params. Every call
    is collective: every rank must call it. ``param_groups`` are the full
    groups; a schedule edits them as on an unsharded optimizer, and every
    step copies their hyperparameters into the shard optimizer ``optim``.

    Failures never leave a rank waiting: ``step`` checks its inputs on each
    rank, then the ranks agree (one small collective) before any data moves;
    if any rank's check failed, every rank raises (that rank its own error,
    the others a RuntimeError naming it) and nothing changes anywhere. With
    ``nonfinite="skip"`` or ``"raise"`` the averaged grads are checked and
    the ranks agree again: a NaN or infinity on one rank skips (or raises
    on) every rank.
    """

    # Elements per communication bucket (a window of the flat layout): one
    # Alltoallv and one Allgatherv each; the two buffers a rank keeps are
    # about bucket_elements * itemsize each. Set it before construction.
    bucket_elements = 1 << 23

    def __init__(self, params: Iterable, optimizer_class: type = optimizers.AdamW, comm: Any = None,
                 **defaults: Any):
        if comm is None:
            comm = _mpi().COMM_WORLD
        self.comm = comm
        self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
        self._lock = threading.RLock()
        self._consolidated: dict | None = None
        self.bytes_sent = 0  # by this rank's last step: grads and params, to the other ranks

        error, description = None, None
        try:
            description = self._build(params, optimizer_class, defaults)
        except Exception as caught:  # noqa: BLE001 -- reported to every rank below
            error = caught
        # One collective before anything else: every rank learns of every
        # rank's error and description, so all raise together or none does.
        reports = comm.allgather((_describe_error(error), description))
        if error is not None:
            raise error
        failed = [(r, message) for r, (message, _) in enumerate(reports) if message is not None]
        if failed:
            r, message = failed[0]
            raise RuntimeError(f"ZeroRedundancyOptimizer: rank {r} could not build its shard ({message}); "
                               "no rank built one")
        difference = _first_difference([d for _, d in reports])
        if difference:
            raise ValueError(f"the ranks were given different params or options: {difference}. Every rank "
                             "must build the optimizer over the same params (count, order, shapes, dtypes) "
                             "and hyperparameters")

    # ---------------------------------------------------------- construction
    def _build(self, params: Iterable, optimizer_class: type, defaults: Mapping[str, Any]) -> list:
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"optimizer_class must be a fusedopt optimizer class, got {optimizer_class!r}")
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param-group dicts, got a bare "
                            "numpy.ndarray: pass [array]")
        groups = list(params)
        if not groups:
            raise ValueError("params is empty: the optimizer has nothing to update")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        user_groups, flat = [], []
        for g, group in enumerate(groups):
            if not isinstance(group, Mapping) or "params" not in group:
                raise TypeError(f"params[{g}] must be a param-group dict with 'params'")
            members = group["params"]
            members = [members] if isinstance(members, np.ndarray) else list(members)
            for p in members:
                where = f"params[{len(flat)}]"
                if not isinstance(p, np.ndarray):
                    raise TypeError(f"{where} must be a numpy.ndarray, got {type(p).__name__}")
                if not p.flags.c_contiguous:  # reshape(-1) would copy it: the shard would update a copy
                    raise ValueError(f"{where} must be C-contiguous (its shard pieces are views of it)")
                flat.append(p)
            user_groups.append(({k: v for k, v in group.items() if k != "params"}, len(members)))

        self.optimizer_class = optimizer_class
        self.rule = optimizer_class.rule
        self._params = flat
        # Cuts never split a block of 8-bit state: the group's options as the
        # class fills them in (AdamW8bit's state_bits=8), read from a probe.
        firsts = np.cumsum([0] + [count for _, count in user_groups]).tolist()
        probe = optimizer_class([{**options, "params": [np.zeros(1, flat[first].dtype if count else np.float32)]}
                                 for (options, count), first in zip(user_groups, firsts)], **defaults)
        block = math.lcm(BLOCK, *(g["block_size"] for g in probe.param_groups if g.get("state_bits") == 8))
        self.layout = shard_layout([p.size for p in flat], self.world_size, block)
        self._my_pieces = [k for k, piece in enumerate(self.layout) if piece.rank == self.rank]

        # The shard optimizer: group g holds this rank's pieces of group g's
        # params (1-d views of slices of them), keyed for stochastic rounding
        # by the full param's position and the piece's offset.
        self._group_of = []  # param -> group
        for g, (_, count) in enumerate(user_groups):
            self._group_of.extend([g] * count)
        shard_groups = []
        for g, (options, _) in enumerate(user_groups):
            mine = [self.layout[k] for k in self._my_pieces if self._group_of[self.layout[k].param] == g]
            shard_groups.append({
                **options,
                "params": [flat[piece.param].reshape(-1)[piece.start:piece.stop] for piece in mine],
                _RANDOM_INDEX: [(piece.param, piece.start, flat[piece.param].size) for piece in mine],
            })
        self.optim = optimizer_class(shard_groups, **defaults)
        # The ranks check the averaged grads and agree (step); the shard step need not check again.
        self.nonfinite, self.optim.nonfinite = self.optim.nonfinite, "apply"
        self.skipped_steps = 0

        # The full groups: the shard optimizer's hyperparameters over the full params.
        self.param_groups: list[dict[str, Any]] = []
        start = 0
        for shard_group, (_, count) in zip(self.optim.param_groups, user_groups):
            full = {k: v for k, v in shard_group.items() if k != _RANDOM_INDEX}
            full["params"] = flat[start:start + count]
            self.param_groups.append(full)
            start += count

        self._plan_buckets()
        # The averaged grads of this rank's pieces: the shard step's grads.
        if self.world_size == 1:
            self._averaged = None  # the average of one rank is its grads: views of them
        else:
            self._averaged = [np.empty(self.layout[k].size, flat[self.layout[k].param].dtype)
                              for k in self._my_pieces]

        return [
            [(tuple(p.shape), str(p.dtype)) for p in flat],
            [count for _, count in user_groups],
            f"{optimizer_class.__module__}.{optimizer_class.__qualname__}",
            repr([{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]),
            repr({k: v for k, v in defaults.items()}),
        ]

    def _plan_buckets(self) -> None:
        """Cuts the layout's pieces at multiples of bucket_elements of the flat
        layout: each bucket is one Alltoallv and one Allgatherv."""
        buckets: list[list[_Segment]] = []
        flat_position = 0
        size = max(1, int(self.bucket_elements))
        for k, piece in enumerate(self.layout):
            itemsize = self._params[piece.param].itemsize
            start = piece.start
            while True:
                b = flat_position // size
                room = (b + 1) * size - flat_position
                stop = min(piece.stop, start + room)
                while len(buckets) <= b:
                    buckets.append([])
                if stop > start or piece.size == 0:
                    buckets[b].append(_Segment(k, piece.param, start, stop, piece.rank, (stop - start) * itemsize))
                flat_position += stop - start
                start = stop
                if start >= piece.stop:
                    break
        self._buckets = [b for b in buckets if b]
        # Two byte buffers, made on the first step and kept (a fresh buffer
        # per bucket would pay its page faults every step): a whole bucket
        # (the reduce's send, the gather's receive) and N copies of this
        # rank's part of one (the reduce's receive, the gather's send).
        self._bucket_bytes = max((sum(s.nbytes for s in b) for b in self._buckets), default=0)
        self._shard_bytes = max((sum(s.nbytes for s in b if s.rank == self.rank) for b in self._buckets), default=0)
        self._whole_buffer = self._part_buffer = None

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        if self._whole_buffer is None:
            self._whole_buffer = np.empty(self._bucket_bytes, np.uint8)
            self._part_buffer = np.empty(self._shard_bytes * self.world_size, np.uint8)
        return self._whole_buffer, self._part_buffer

    # ------------------------------------------------------------------ step
    def step(self, grads: Sequence[np.ndarray], grad_scale: float | None = None) -> bool:
        """Average ``grads`` over the ranks, step this rank's shard, gather the
        params. Collective. Returns False when ``nonfinite="skip"`` skipped
        the step (on every rank)."""
        with self._lock:
            self._consolidated = None
            error = None
            try:
                self._check_step(grads, grad_scale)
            except Exception as caught:  # noqa: BLE001 -- every rank raises below
                error = caught
            self._agree(error, "checking its grads and hyperparameters")

            self.bytes_sent = 0
            averaged = self._reduce_scatter(grads)
            if self.nonfinite != "apply":
                bad = self._agree_nonfinite(averaged)
                if bad is not None:
                    self.skipped_steps += 1
                    if self.nonfinite == "raise":
                        raise NonFiniteGradError(
                            f"grads[{bad}] averaged over the {self.world_size} ranks holds a NaN or an "
                            "infinity; the step was skipped on every rank and nothing changed "
                            "(nonfinite='raise')", bad)
                    return False

            error = None
            try:
                self.optim.step(averaged, grad_scale)
            except Exception as caught:  # noqa: BLE001
                error = caught
            # Unreachable from bad input (checked above); if the shard step
            # itself fails, the ranks' shards now differ: all raise.
            self._agree(error, "stepping its shard (the other shards were stepped: restore a checkpoint)")
            self._all_gather()
            return True

    def _check_step(self, grads: Sequence[np.ndarray], grad_scale: float | None) -> None:
        """Everything the step will need, checked on this rank, changing nothing."""
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list of arrays aligned with the params, got {type(grads).__name__}")
        if len(grads) != len(self._params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(self._params)} params")
        for i, (grad, param) in enumerate(zip(grads, self._params)):
            if grad is None:
                raise ValueError(f"grads[{i}] is None: a sharded step needs every param's grad on every rank "
                                 "(pass zeros for a param this rank did not touch)")
            if not isinstance(grad, np.ndarray):
                raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {type(grad).__name__}")
            if grad.dtype != param.dtype:
                raise TypeError(f"grads[{i}] has dtype {grad.dtype}, params[{i}] has {param.dtype} "
                                "(fusedopt never converts dtypes)")
            if grad.shape != param.shape:
                raise ValueError(f"grads[{i}] has shape {grad.shape}, params[{i}] has {param.shape}")
            if not grad.flags.c_contiguous:
                raise ValueError(f"grads[{i}] must be C-contiguous")
        if grad_scale is not None:
            if isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float, np.floating, np.integer)):
                raise TypeError(f"grad_scale must be a number, got {type(grad_scale).__name__}")
            if not (math.isfinite(grad_scale) and grad_scale > 0):
                raise ValueError(f"grad_scale must be a finite number > 0, got {grad_scale!r}")
        # The full groups' hyperparameters (a schedule edits them) into the shard groups.
        for g, (full, shard) in enumerate(zip(self.param_groups, self.optim.param_groups)):
            random_index = shard[_RANDOM_INDEX]
            updated = {k: v for k, v in full.items() if k != "params"}
            updated[_RANDOM_INDEX] = random_index
            updated["params"] = shard["params"]
            self.rule.check_group(updated, g)
            shard.clear()
            shard.update(updated)

    def _agree(self, error: BaseException | None, doing: str) -> None:
        """One small collective: raise on every rank if any rank failed."""
        mpi = _mpi()
        flag = np.array([0 if error is None else 1], np.int32)
        total = np.zeros(1, np.int32)
        self.comm.Allreduce(flag, total, op=mpi.SUM)
        if total[0] == 0:
            return
        messages = self.comm.allgather(_describe_error(error))
        if error is not None:
            raise error
        r, message = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise RuntimeError(f"rank {r} failed {doing}: {message}; every rank raised")

    def _agree_nonfinite(self, averaged: list[np.ndarray]) -> int | None:
        """The first param (in optimizer order) whose averaged grad holds a NaN
        or an infinity on any rank, or None."""
        mine = _core.first_nonfinite(averaged)
        first = np.array([len(self._params) if mine is None else self.layout[self._my_pieces[mine]].param],
                         np.int64)
        least = np.zeros(1, np.int64)
        self.comm.Allreduce(first, least, op=_mpi().MIN)
        return None if least[0] == len(self._params) else int(least[0])

    # ------------------------------------------------------- communication
    def _reduce_scatter(self, grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """This rank's pieces of the averaged grads (sum in rank order, then
        divided by the world size)."""
        if self.world_size == 1:
            return [grads[self.layout[k].param].reshape(-1)[self.layout[k].start:self.layout[k].stop]
                    for k in self._my_pieces]
        mpi = _mpi()
        n = self.world_size
        where = {k: j for j, k in enumerate(self._my_pieces)}
        whole, part = self._buffers()
        for bucket in self._buckets:
            send_counts = [0] * n
            for s in bucket:
                send_counts[s.rank] += s.nbytes
            send = whole[:sum(send_counts)]
            offset = 0
            for s in bucket:  # in flat order: grouped by destination rank
                send[offset:offset + s.nbytes] = _bytes(grads[s.param], s.start, s.stop)
                offset += s.nbytes
            mine = [s for s in bucket if s.rank == self.rank]
            block = sum(s.nbytes for s in mine)
            receive = part[:block * n]
            self.comm.Alltoallv([send, (send_counts, _displacements(send_counts)), mpi.BYTE],
                                [receive, ([block] * n, [block * r for r in range(n)]), mpi.BYTE])
            self.bytes_sent += sum(send_counts) - send_counts[self.rank]
            offset = 0
            for s in mine:
                dtype = self._params[s.param].dtype
                parts = [receive[r * block + offset:r * block + offset + s.nbytes].view(dtype) for r in range(n)]
                piece = self.layout[s.piece]
                out = self._averaged[where[s.piece]][s.start - piece.start:s.stop - piece.start]
                _ordered_mean(parts, out)
                offset += s.nbytes
        return self._averaged

    def _all_gather(self) -> None:
        """Every rank's stepped pieces to every rank, as raw bytes."""
        if self.world_size == 1:
            return
        mpi = _mpi()
        n = self.world_size
        whole, part = self._buffers()
        for bucket in self._buckets:
            counts = [0] * n
            for s in bucket:
                counts[s.rank] += s.nbytes
            mine = [s for s in bucket if s.rank == self.rank]
            send = part[:counts[self.rank]]
            offset = 0
            for s in mine:
                send[offset:offset + s.nbytes] = _bytes(self._params[s.param], s.start, s.stop)
                offset += s.nbytes
            receive = whole[:sum(counts)]
            self.comm.Allgatherv(send, [receive, (counts, _displacements(counts)), mpi.BYTE])
            self.bytes_sent += counts[self.rank] * (n - 1)
            offset = 0
            for s in bucket:
                if s.rank != self.rank:
                    _bytes(self._params[s.param], s.start, s.stop)[...] = receive[offset:offset + s.nbytes]
                offset += s.nbytes

    # ------------------------------------------------------------ state_dict
    def consolidate_state_dict(self, to: int = 0) -> None:
        """Collect the full optimizer's state on rank ``to`` (collective);
        then ``state_dict()`` there returns it. Every rank must pass the same
        ``to``; the ranks compare it first, and all raise if one differs."""
        with self._lock:
            error = None
            if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < self.world_size:
                error = ValueError(f"to must be a rank in [0, {self.world_size}), got {to!r}")
            self._agree(error, "consolidate_state_dict")
            targets = self.comm.allgather(to)
            if len(set(targets)) > 1:
                raise ValueError(f"consolidate_state_dict: the ranks passed different to: {targets}")
            local = [(self.layout[k].param, self.layout[k].start, entry)
                     for k, entry in zip(self._my_pieces, self.optim.state)]
            gathered = self.comm.gather(local, root=to)
            if self.rank != to:
                self._consolidated = None
                return
            pieces: list[list] = [[] for _ in self._params]
            for part in gathered:
                for param, start, entry in part:
                    pieces[param].append((start, entry))
            state = {}
            for i, (param, found) in enumerate(zip(self._params, pieces)):
                found.sort(key=lambda item: item[0])
                first = found[0][1]
                entry = {}
                for key, value in first.items():
                    if isinstance(value, np.ndarray):
                        joined = np.concatenate([e[key] for _, e in found])
                        # 8-bit state's block scales stay 1-D; no block spans two pieces
                        entry[key] = joined if _is_scale(key, first) else joined.reshape(param.shape)
                    else:
                        entry[key] = value
                state[i] = entry
            groups, index = [], 0
            for group in self.param_groups:
                count = len(group["params"])
                saved = {k: v for k, v in group.items() if k != "params"}
                groups.append({**saved, "params": list(range(index, index + count))})
                index += count
            # Copies of the hyperparameters, as the unsharded state_dict gives.
            self._consolidated = {"state": state, "param_groups": copy.deepcopy(groups)}

    def state_dict(self) -> dict[str, Any]:
        """The unsharded optimizer's state_dict, on the rank that
        ``consolidate_state_dict(to=...)`` sent it to (RuntimeError elsewhere,
        or before it, or after a step made it stale)."""
        if self._consolidated is None:
            raise RuntimeError(
                "this rank holds no consolidated state: call consolidate_state_dict(to=rank) on every rank "
                "first, then state_dict() on that rank (after the last step)")
        return self._consolidated

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load the full (unsharded) state_dict; this rank keeps its shard.
        Local (no communication): every rank calls it with the same dict. It
        checks everything before it changes anything."""
        with self._lock:
            if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
                raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
            saved_groups, saved_state = list(state_dict["param_groups"]), state_dict["state"]
            if len(saved_groups) != len(self.param_groups):
                raise ValueError(f"state_dict has {len(saved_groups)} param groups, the optimizer has "
                                 f"{len(self.param_groups)}")
            if not isinstance(saved_state, Mapping):
                raise TypeError("state_dict['state'] must be a dict")
            first_of_group = np.cumsum([0] + [len(g["params"]) for g in self.param_groups]).tolist()
            shard_groups, shard_state = [], {}
            for g, (saved, shard) in enumerate(zip(saved_groups, self.optim.param_groups)):
                if not isinstance(saved, Mapping):
                    raise TypeError(f"state_dict['param_groups'][{g}] must be a dict")
                ids = list(saved.get("params", ()))
                if len(ids) != len(self.param_groups[g]["params"]):
                    raise ValueError(f"state_dict['param_groups'][{g}] has {len(ids)} params, the optimizer's "
                                     f"group {g} has {len(self.param_groups[g]['params'])}")
                shard_ids = []
                for piece, (position, first, _) in zip(shard["params"], shard[_RANDOM_INDEX]):
                    saved_id = ids[position - first_of_group[g]]
                    if saved_id not in saved_state:
                        raise ValueError(f"state_dict['state'] has no entry {saved_id} for params[{position}]")
                    shard_ids.append(len(shard_state))
                    shard_state[len(shard_state)] = _piece_of(saved_state[saved_id], self._params[position],
                                                              position, first, piece.size,
                                                              self._block_size(saved, position))
                shard_groups.append({**{k: v for k, v in saved.items() if k != "params"},
                                     "params": shard_ids, _RANDOM_INDEX: shard[_RANDOM_INDEX]})
            self.optim.load_state_dict({"state": shard_state, "param_groups": shard_groups})
            for full, shard in zip(self.param_groups, self.optim.param_groups):
                params = full["params"]
                full.clear()
                full.update({k: v for k, v in shard.items() if k not in ("params", _RANDOM_INDEX)})
                full["params"] = params
            self._consolidated = None

    def _block_size(self, group: Mapping[str, Any], position: int) -> int | None:
        """The block size of params[position]'s 8-bit state in ``group``, None if it keeps float state."""
        return group["block_size"] if _core.keeps_8bit_state(group, self._params[position].size) else None

    # ------------------------------------------------------------- reports
    @property
    def state(self) -> list[dict[str, Any]]:
        """This rank's shard state: ``optim.state``, one entry per piece."""
        return self.optim.state

    def state_bytes(self) -> int:
        """Bytes of the state arrays this rank keeps (its shard)."""
        return sum(v.nbytes for entry in self.optim.state for v in entry.values() if isinstance(v, np.ndarray))

    def __repr__(self) -> str:
        return (f"ZeroRedundancyOptimizer(rank {self.rank} of {self.world_size}, "
                f"{len(self._my_pieces)} pieces, optim={self.optim!r})")


# ---------------------------------------------------------------- helpers
def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError('fusedopt.distributed needs mpi4py: pip install "fusedopt[mpi]"') from error
    return MPI


def _describe_error(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _first_difference(descriptions: list) -> str | None:
    """The first way a rank's description differs from rank 0's, in words."""
    base = descriptions[0]
    for r, other in enumerate(descriptions[1:], 1):
        if other == base:
            continue
        shapes, their = base[0], other[0]
        if len(shapes) != len(their):
            return f"rank 0 has {len(shapes)} params, rank {r} has {len(their)}"
        for i, (a, b) in enumerate(zip(shapes, their)):
            if a != b:
                return (f"params[{i}] is shape {a[0]} {a[1]} on rank 0 but shape {b[0]} {b[1]} on rank {r} "
                        "(the params in another order?)")
        names = ("group sizes", "optimizer class", "param groups' hyperparameters", "options")
        for name, a, b in zip(names, base[1:], other[1:]):
            if a != b:
                return f"the {name} differ: {a} on rank 0, {b} on rank {r}"
    return None


def _bytes(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of a contiguous array as a writeable uint8 view."""
    return array.reshape(-1)[start:stop].view(np.uint8)


def _displacements(counts: list[int]) -> list[int]:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()


def _ordered_mean(parts: list[np.ndarray], out: np.ndarray) -> None:
    """out <- (((parts[0] + parts[1]) + parts[2]) + ...) / len(parts), in
    out's dtype (float32 for 16-bit, then rounded to nearest even)."""
    if out.dtype.itemsize == 2:
        total = parts[0].astype(np.float32)
        for part in parts[1:]:
            np.add(total, part.astype(np.float32), out=total)
        np.divide(total, np.float32(len(parts)), out=total)
        out[...] = total.astype(out.dtype)
    else:  # len(parts) >= 2 here: one rank's mean is its grads, never summed
        np.add(parts[0], parts[1], out=out)
        for part in parts[2:]:
            np.add(out, part, out=out)
        np.divide(out, out.dtype.type(len(parts)), out=out)


def _is_scale(key: str, entry: Mapping[str, Any]) -> bool:
    """Whether ``key`` holds the block scales of another array of ``entry`` (8-bit state)."""
    return any(key == absmax_key(other) for other in entry)


def _piece_of(entry: Any, param: np.ndarray, position: int, first: int, size: int,
              block_size: int | None = None) -> Any:
    """A full state entry's slice for one shard piece (arrays sliced, the rest
    as saved; with 8-bit state, the scales of the piece's blocks: a piece
    starts on a block boundary); the shard optimizer's load_state_dict checks
    what is left."""
    if not isinstance(entry, Mapping):
        return entry
    out = {}
    for key, value in entry.items():
        if isinstance(value, np.ndarray) and block_size is not None and _is_scale(key, entry):
            out[key] = value.reshape(-1)[first // block_size:-(-(first + size) // block_size)]
            continue
        if isinstance(value, np.ndarray):
            if value.shape != param.shape:
                raise ValueError(f"state_dict['state'] entry for params[{position}][{key!r}] has shape "
                                 f"{value.shape}, the param has {param.shape}")
            value = value.reshape(-1)[first:first + size]
        out[key] = value
    return out
