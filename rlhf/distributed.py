"""Data-parallel PPO: the processes `accelerate launch` (or `torchrun`) starts, as one group.

Each process generates and scores its shard of the step's batch; `PPOTrainer.step` then gathers the shards'
rollout rows, so every process holds the whole batch and computes its statistics (score moments, KL, GAE and the
advantage whitening) exactly as one process would. Each mini-batch is split across the processes, every process
back-propagates its part weighted by its share of the mini-batch's tokens, and the gradients of the trainable
parameters (LoRA and value head) are summed across processes: the sum is the one-process mini-batch gradient, so
clipping, the ratio guard and Adam take the same step everywhere and the weights stay equal.

The all-reduce is DDP's own collective, called once per mini-batch on the flattened gradients rather than through
`DistributedDataParallel`'s hooks: the micro-batch accumulation and the ratio guard decide per mini-batch, and
some processes may hold no sample of a small mini-batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch


class Group:
    """One process alone: every collective is the identity."""

    rank = 0
    world = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, rows: list[Any]) -> list[Any]:
        """Every process's `rows`, concatenated in rank order (the same list in every process)."""
        return list(rows)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` in place across processes."""
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor`, in place, in every process."""
        return tensor

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous share of `items` (whose length the world size divides)."""
        return list(items)


SINGLE = Group()


class TorchGroup(Group):
    """The default torch.distributed process group (gloo on CPU, NCCL on GPUs)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def gather(self, rows: list[Any]) -> list[Any]:
        parts: list[Any] = [None] * self.world
        self.dist.all_gather_object(parts, [_to_cpu(r) for r in rows])
        return [r for part in parts for r in part]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.dist.broadcast(tensor, src=0)
        return tensor

    def shard(self, items: Sequence[Any]) -> list[Any]:
        if len(items) % self.world:
            raise ValueError(
                f"{len(items)} samples do not split evenly over {self.world} processes; pick a ppo.batch_size "
                "the number of processes divides"
            )
        size = len(items) // self.world
        return list(items[self.rank * size : (self.rank + 1) * size])


def _to_cpu(row: Any) -> Any:
    if isinstance(row, torch.Tensor):
        return row.detach().cpu()
    if isinstance(row, (list, tuple)):
        return type(row)(_to_cpu(x) for x in row)
    return row


def launched() -> bool:
    """Whether this process was started by a distributed launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join() -> tuple[Group, torch.device | None]:
    """Join the launcher's process group through accelerate; -> the group and this process's device (None when
    not launched, so the run's own --device applies)."""
    if not launched():
        return SINGLE, None
    from accelerate import PartialState

    state = PartialState()  # init_process_group from the launcher's environment: gloo on CPU, NCCL on GPUs
    return TorchGroup(), state.device


def sum_gradients(group: Group, params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the parameters' gradients across processes in one flat all-reduce (a missing gradient counts as
    zero: a process that held no sample of the mini-batch)."""
    if group.world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    group.sum_(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def broadcast_parameters(group: Group, params: Sequence[torch.nn.Parameter]) -> None:
    """Start every process from rank 0's trainable weights, as DDP does at construction."""
    if group.world == 1:
        return
    with torch.no_grad():
        for p in params:
            group.broadcast_(p.data)
