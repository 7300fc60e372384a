"""Data-parallel training on ``torch.distributed`` (DDP), one process per device.

``torchrun`` starts the processes and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a
stage whose ``nproc`` param is above 1 starts ``torchrun`` itself (:func:`relaunch`), so
``dvc repro`` runs the same command either way. The global batch (``batch_size``) is
split over the processes, each iteration's images and their crops/flips depending on
the iteration only (:class:`cellpipe.training.engine.Batches`), so N processes see the same
images as one; DDP averages the gradients, so the learning rate needs no change for the
same global batch. Rank 0 alone evaluates, writes checkpoints and logs; the others wait
for it. The backend follows the device: ``nccl`` on GPUs, ``gloo`` on CPUs. Batch norm
statistics stay per process (as in torchvision's references without ``--sync-bn``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The world ``torchrun`` describes in the environment (one process when it did not start us)."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    return World(
        rank=int(env.get("RANK", "0")),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))),
    )


def launched() -> bool:
    """True inside processes started by ``torchrun`` (or any launcher setting ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


def setup(world: World, device_type: str) -> torch.device:
    """Join the process group (``nccl`` on GPUs, ``gloo`` on CPUs) and return this process's device."""
    if world.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    if world.active:  # N processes on one CPU share its cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    return torch.device(device_type)


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The model as DDP trains it (the model itself with one process).

    ``find_unused_parameters``: a batch without positive RoIs leaves the mask head unused.
    """
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def mean(value: float, world: World, device: torch.device) -> float:
    """``value`` averaged over the processes (for logging the loss of the global batch)."""
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def cleanup(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run this very command again as ``nproc`` processes under ``torchrun`` (one node); its exit code.

    ``argv``: the command line after the program name (``finetune --train …``). For several
    nodes, run ``torchrun --nnodes …`` yourself: inside it this is not called again.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "stages", *argv]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except BaseException:  # interrupted: stop the workers too, then report the interruption
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
