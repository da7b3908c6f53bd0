"""Data-parallel training through ``torchrun``: the same :func:`~bastion.train.fit`, N processes.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set), ``fit``
joins the process group (creating it when nobody has: ``gloo`` on CPU, ``nccl`` on CUDA, and
destroying the one it created at the end), wraps the model in ``DistributedDataParallel`` and
splits every batch across the processes:

- every rank draws the *same* seeded permutation of the data (the data-order generator is seeded
  from ``config.seed`` alone) and cuts the same global batches of ``batch_size`` samples; rank r
  takes its share ``torch.tensor_split(batch, world_size)[r]`` -- ``batch_size // world_size``
  samples each when it divides evenly. Random starts and noise are drawn for the whole global
  batch and sliced the same way, so N processes see exactly the samples and randomness that one
  process with ``batch_size`` would see;
- each rank's loss is its sum over its rows divided by the *global* batch size times
  ``world_size``; DDP averages gradients over ranks, so the update is the global batch mean even
  for an uneven last batch;
- epoch metrics and the monitor batch (clean and PGD accuracy, evaluated sharded) are summed
  with ``all_reduce``, so every rank takes the same guard decisions;
- only rank 0 writes files, metrics and the progress bar.

Weights match single-process training up to float reduction order (the all-reduce sums
per-rank gradients in a different order than one backward pass over the whole batch), not
bitwise; with batch norm, statistics are per rank (as with plain DDP).
"""

from __future__ import annotations

import dataclasses
import gc
import os

import torch
import torch.distributed as dist
from torch import nn

from bastion.core.errors import ConfigurationError

__all__ = ["DistContext", "env_world_size", "setup"]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigurationError(
            f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


@dataclasses.dataclass
class DistContext:
    """Where this process stands: rank, world size, device, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False

    @property
    def enabled(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's share of ``n`` consecutive positions."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64, on the group's device)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.enabled:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as trained: DDP-wrapped in a group, itself otherwise."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        """Destroy the process group if :func:`setup` created it."""
        if self.created_group and dist.is_initialized():
            gc.collect()  # DDP wrappers' reference cycles go while the group exists: freed later,
            dist.destroy_process_group()  # at exit, a gloo group's threads may abort the process
            self.created_group = False


def setup(device: torch.device | str | None, model_device: torch.device) -> DistContext:
    """Detect ``torchrun``'s environment and join (or create) the process group.

    Args:
        device: the device asked for; None keeps the model's device in one process and picks
            ``cuda:LOCAL_RANK`` (when CUDA is available, else the CPU) under DDP.
        model_device: where the model's parameters are now.

    Returns:
        The context; ``world_size == 1`` without torchrun.

    Raises:
        ConfigurationError: ``WORLD_SIZE`` > 1 but torch has no distributed support, or
            ``RANK`` is missing.
    """
    world = env_world_size()
    if world <= 1:
        chosen = torch.device(device) if device is not None else model_device
        return DistContext(device=chosen)
    if not dist.is_available():
        raise ConfigurationError(
            f"WORLD_SIZE={world} asks for distributed training but this torch build has no "
            "torch.distributed")
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigurationError(
            "WORLD_SIZE is set but RANK is missing or invalid: launch with torchrun") from None
    if device is not None:
        chosen = torch.device(device)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local)
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        created = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen,
                       created_group=created)
