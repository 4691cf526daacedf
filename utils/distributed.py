"""Process-group set-up for torchrun, slurm or a single process, and small rank-aware helpers.

`init_distributed` writes the ``os.environ`` variables ``torch.distributed``'s ``env://`` initialisation reads;
only the entry points call it.
"""
from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank and the torch device it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_slurm_host(nodelist: str) -> str:
    """First host name of a slurm node list, through ``scontrol show hostnames``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"cannot expand SLURM_NODELIST={nodelist!r} with scontrol: {err}") from err
    return out.stdout.split()[0]


def launcher_env(openmpi: bool = False) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from OpenMPI (``openmpi``: the official ``--dist_on_itp``), torchrun or
    slurm variables, or None for a plain single process."""
    env = os.environ
    if openmpi:
        names = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")
        missing = [n for n in names if n not in env]
        if missing:
            raise UsageError(f"--dist_on_itp takes rank and world size from OpenMPI, but {', '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set: launch with mpirun, or leave "
                             "--dist_on_itp out (torchrun and slurm are detected without it)")
        return int(env[names[0]]), int(env[names[1]]), int(env[names[2]])
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def init_distributed(device: str = "cuda", dist_url: str = "env://", need_group: bool = False,
                     openmpi: bool = False) -> DistInfo:
    """Initialise the default process group when launched by torchrun, slurm or (``openmpi``) mpirun; otherwise
    one process.

    ``device`` is ``cuda`` (NCCL backend, one GPU per local rank) or ``cpu`` (gloo). A single process
    (nothing set by a launcher) gets no process group unless ``need_group`` (DeepSpeed needs one); it then
    uses ``MASTER_ADDR`` (default 127.0.0.1) and ``MASTER_PORT`` (default 29500).
    """
    use_cuda = device.startswith("cuda")
    if not use_cuda and device != "cpu":
        raise UsageError(f"--device {device}: expected cuda or cpu")
    if use_cuda and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; pass --device cpu (the default "
                         "is cuda, as in the official scripts)")
    found = launcher_env(openmpi)
    rank, world_size, local_rank = found if found is not None else (0, 1, 0)
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    info = DistInfo(rank, world_size, local_rank, torch_device)
    if found is None and not need_group:
        logger.info("single process on %s (no torchrun/slurm variables)", torch_device)
        return info
    if openmpi or ("SLURM_PROCID" in os.environ and "RANK" not in os.environ):
        os.environ["RANK"] = str(rank)
        os.environ["WORLD_SIZE"] = str(world_size)
        os.environ["LOCAL_RANK"] = str(local_rank)
        os.environ.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = "127.0.0.1" if openmpi else _first_slurm_host(os.environ["SLURM_NODELIST"])
    else:
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, init_method=dist_url, rank=rank, world_size=world_size)
        logger.info("process group %s: rank %d of %d on %s", backend, rank, world_size, torch_device)
    return info


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (identity in a single process)."""
    if get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` in a single process)."""
    if get_world_size() == 1:
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
