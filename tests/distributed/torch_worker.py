"""One process of the torch.distributed test: fusedopt.torch's optimizers as
``optimizer_class`` of ``torch.distributed.optim.ZeroRedundancyOptimizer``
under ``DistributedDataParallel`` (gloo on 127.0.0.1), side by side with
torch.optim's own.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python torch_worker.py OUT_DIR

Two copies of one float64 MLP train on the same per-rank batches, one with
fusedopt.torch's rule, one with torch.optim's (foreach=False); the losses,
the params after every step and, after consolidate_state_dict, every state
tensor are compared with tests/test_against_torch.py's bound (rtol 1e-12,
atol 1e-13 of the array's largest magnitude). Writes
``OUT_DIR/torch.rankR.json``; gloo may abort at interpreter exit, so the
test reads this file, never the exit code.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fusedopt.torch

STEPS = 8
RULES = {
    "AdamW": dict(lr=1e-2, weight_decay=0.01),
    "SGD": dict(lr=5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
}


def worst_excess(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """How far past test_against_torch's bound the difference is: <= 1 passes."""
    a, b = ours.detach().numpy(), theirs.detach().numpy()
    scale = float(np.max(np.abs(b), initial=0.0))
    bound = 1e-12 * np.abs(b) + 1e-13 * scale
    return float(np.max(np.abs(a - b) / np.where(bound > 0, bound, np.inf), initial=0.0))


def train(rule: str, options: dict, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32),
                               torch.nn.Tanh(), torch.nn.Linear(32, 3))
    models = {"fusedopt": copy.deepcopy(base), "torch": copy.deepcopy(base)}
    ddp = {name: DistributedDataParallel(model) for name, model in models.items()}
    optimizers = {
        "fusedopt": ZeroRedundancyOptimizer(ddp["fusedopt"].parameters(),
                                            optimizer_class=getattr(fusedopt.torch, rule), **options),
        "torch": ZeroRedundancyOptimizer(ddp["torch"].parameters(),
                                         optimizer_class=getattr(torch.optim, rule), foreach=False, **options),
    }
    losses = {name: [] for name in models}
    worst = 0.0
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(16, 20, generator=generator)
        y = torch.randn(16, 3, generator=generator)
        for name in models:
            optimizers[name].zero_grad()
            loss = torch.nn.functional.mse_loss(ddp[name](x), y)
            loss.backward()
            optimizers[name].step()
            losses[name].append(loss.item())
        for mine, theirs in zip(models["fusedopt"].parameters(), models["torch"].parameters()):
            worst = max(worst, worst_excess(mine, theirs))
    for name in optimizers:
        optimizers[name].consolidate_state_dict(to=0)
    state_worst, state_keys = 0.0, []
    if rank == 0:
        ours, theirs = optimizers["fusedopt"].state_dict(), optimizers["torch"].state_dict()
        for index, entry in theirs["state"].items():
            for key, value in entry.items():
                state_keys.append(f"{index}/{key}")
                mine = ours["state"][index][key]
                if key == "step":
                    assert float(mine) == float(value), (index, float(mine), float(value))
                else:
                    state_worst = max(state_worst, worst_excess(mine, value))
    with torch.no_grad():
        moved = max(float((p - q).abs().max()) for p, q in zip(models["torch"].parameters(), base.parameters()))
    return {"losses": losses, "param_worst_excess": worst, "state_worst_excess": state_worst,
            "state_keys": state_keys, "moved": moved}


def main() -> None:
    out = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    report: dict = {"rank": rank, "world": world}
    try:
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        report["rules"] = {rule: train(rule, options, rank, world) for rule, options in RULES.items()}
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 -- the test reads it
        report["error"] = traceback.format_exc()
    path = os.path.join(out, f"torch.rank{rank}.json")
    with open(path + ".tmp", "w") as file:
        json.dump(report, file, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
