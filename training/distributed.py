"""A training process's place among its peers under torchrun: rank, world size, device, and the few collectives used.

torchrun (``torch.distributed.run``) starts one process per GPU (or per CPU share) and tells each its place through
the environment: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. This module is the one place that reads
them; the trainer asks the ``Distributed`` object it returns and never the environment. A process started without
torchrun, or by ``torchrun --nproc_per_node=1`` on one machine, is a world of one: no process group, no
DistributedDataParallel, exactly the single-process trainer.

Backends follow PyTorch's advice: NCCL between GPUs, gloo between CPU processes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def choose_device(name: str) -> torch.device:
    """``auto`` is the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)


@dataclass
class Distributed:
    """Where this process stands: rank 0 of a world of one unless torchrun started several."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` concatenated along dim 0 in rank order; the same shape on every rank is required.

        Differentiable: the gradient of each rank's slice, summed over all ranks' losses, flows back to the rank that
        owns it (``torch.distributed.nn.functional.all_gather``, whose backward is a reduce-scatter with SUM). That
        is what lets SCL and ACL compare an utterance with the whole global batch.
        """
        if not self.enabled:
            return tensor
        if not tensor.requires_grad:
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.cat(parts)
        with warnings.catch_warnings():
            # torch 2.13 marks torch.distributed.nn.functional.all_gather deprecated in favour of the private
            # torch.distributed._functional_collectives.all_gather_single; the public one is kept until it goes.
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_gather

            return torch.cat(all_gather(tensor))

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the ranks (not differentiable; for logging global figures)."""
        if not self.enabled:
            return tensor
        reduced = tensor.detach().to(self.device, copy=True)  # NCCL reduces GPU tensors only
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's picklable ``value``, in rank order."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank, so that a decision (stop now, this epoch was the best) is taken once."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str = "auto") -> Distributed:
    """Join the process group torchrun describes in the environment, or return a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=choose_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()}; "
                             "start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(device=device, rank=rank, local_rank=local_rank, world_size=world_size)


def rank_batches(global_batches: Sequence[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's equal, contiguous part of each global batch.

    Every rank takes the same number of batches of the same size, which the gathers of SCL and ACL need. A global
    batch whose size is not a multiple of the world size (the last one of an epoch) leaves out its remainder: at most
    ``world_size - 1`` utterances an epoch, a different few each epoch since the batches are reshuffled. A world of
    one takes every batch whole.
    """
    shares = []
    for batch in global_batches:
        per_rank = len(batch) // world_size
        if per_rank:
            shares.append(list(batch[rank * per_rank: (rank + 1) * per_rank]))
    return shares
