"""Running a tool on several processes: each takes a share of the batches, and the per-image results are gathered
back in batch order, so every process holds exactly what one process would have computed.

Launch with `torchrun --nproc_per_node N -m ats_hf <command> ...` or `accelerate launch -m ats_hf <command> ...`
(they set RANK / WORLD_SIZE / LOCAL_RANK); `join_processes` then starts torch.distributed (gloo on the CPU, NCCL on
GPUs, where each process takes the GPU of its LOCAL_RANK) and a gloo group for exchanging Python objects. Without a
launcher it is one process and nothing is started.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place among `world_size` processes (rank 0 is the main one: it prints and writes)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # the gloo process group objects travel through (None: one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, num_batches: int) -> list[int]:
        """The batch numbers this process runs: every world_size-th, from its rank."""
        return list(range(self.rank, num_batches, self.world_size))

    def gather(self, value) -> list:
        """Every process's `value` (picklable), in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value, group=self.group)
        return gathered

    def broadcast(self, value):
        """The main process's `value` on every process (what only the main process measured, e.g. timings)."""
        if self.world_size == 1:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]


ONE_PROCESS = Processes()


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_processes(device: str | torch.device = "cpu") -> Processes:
    """This process's `Processes`; under a launcher, torch.distributed is started first (once) on `device`'s
    backend (gloo for the CPU, NCCL for CUDA)."""
    if launched_world_size() == 1 and not torch.distributed.is_initialized():
        return Processes()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    group = torch.distributed.new_group(backend="gloo")
    return Processes(torch.distributed.get_rank(), torch.distributed.get_world_size(), group)


def process_device(device: str) -> str:
    """The device this process runs on: under a launcher with several GPUs, `cuda` means the GPU of LOCAL_RANK."""
    if device == "cuda" and launched_world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


__all__ = ["ONE_PROCESS", "Processes", "join_processes", "launched_world_size", "process_device"]
