"""Worker for ``test_train.py::test_ddp_two_processes_agree``; run as
``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_worker.py OUT_DIR``.

Every rank trains the same tiny regressor through :func:`paperlab.train.train` (which starts the gloo
process group itself) on data that depends on the rank, then the ranks compare, by ``all_gather``:

- the flattened parameter vectors ``theta_r: (n_params,)``: equal across ranks (DDP averaged the
  gradients) and moved away from the initial ones;
- the first batch each rank saw: different (each replica really got its own data);
- the logged loss: the mean over ranks of each rank's own loss, and the same on every rank.

Rank 0 writes ``OUT_DIR/ddp_result.json`` for the test to assert on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from paperlab.train import TrainConfig, distributed_info, is_main_process, train

STEPS, BATCH, FEATURES = 8, 16, 6


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 12), nn.Tanh(), nn.Linear(12, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self(x), y)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def main(out_dir: Path) -> None:
    _, world_size, _ = distributed_info()
    assert world_size == 2, f"expected 2 processes, got WORLD_SIZE={world_size}"
    assert not dist.is_initialized()

    # Deliberately different initial weights per rank: DDP must broadcast rank 0's.
    torch.manual_seed(1234 + distributed_info()[0])
    model = Regressor()
    first_batches: list[torch.Tensor] = []
    local_losses: list[float] = []
    true_w = torch.linspace(-1, 1, FEATURES)

    def get_batch(step: int, rank: int, world_size: int):
        g = torch.Generator().manual_seed(10_000 * step + rank)
        x = torch.randn(BATCH, FEATURES, generator=g)
        if not first_batches:
            first_batches.append(x.clone())
        return x, x @ true_w

    def loss_fn(m: Regressor, batch) -> torch.Tensor:
        loss = m.loss(*batch)
        local_losses.append(loss.item())
        return loss

    config = TrainConfig(steps=STEPS, batch_size=BATCH, lr=1e-2, warmup_steps=2)
    eval_fn = lambda m: {"w0": m.net[0].weight[0, 0]}
    result = train(model, get_batch, loss_fn, config, device="cpu", eval_fn=eval_fn)
    assert dist.is_initialized(), "train should keep the process group it started"

    # Parameters: equal across replicas, and trained. The initial vector is rank 0's (DDP broadcasts it).
    params = gather(flat(model))
    difference = max((params[0] - p).abs().max().item() for p in params)
    torch.manual_seed(1234)
    moved = (params[0] - flat(Regressor())).norm().item()

    batches = gather(first_batches[0])
    data_differs = not torch.equal(batches[0], batches[1])

    losses = torch.stack(gather(torch.tensor(local_losses, dtype=torch.float64)))  # (world, steps)
    rank_mean = losses.mean(0).tolist()
    loss_ok = all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(result.loss, rank_mean))

    results: list[dict | None] = [None] * world_size
    dist.all_gather_object(results, result.to_dict())
    keys = ("steps", "loss", "lr", "grad_norm", "evals", "examples_seen")
    results_equal = all(all(r[k] == results[0][k] for k in keys) for r in results)

    if is_main_process():
        report = {
            "world_size": world_size,
            "backend": dist.get_backend(),
            "steps": STEPS,
            "batch_size": BATCH,
            "max_param_difference_across_ranks": difference,
            "moved_from_init": moved,
            "data_differs_across_ranks": data_differs,
            "logged_loss_is_rank_mean": loss_ok,
            "results_equal_across_ranks": results_equal,
            "examples_seen": result.examples_seen,
            "process_group_kept_after_train": dist.is_initialized(),
            "loss": result.loss,
        }
        (out_dir / "ddp_result.json").write_text(json.dumps(report, indent=1))
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
