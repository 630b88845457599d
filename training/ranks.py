"""The processes of a torchrun job: joining and leaving its process group, rank 0 going first, and the
sums and gathers of figures across ranks.

Apart from training.distributed (FSDP2 and distributed checkpoints, a second of imports that only an
--fsdp run needs), so that a LoRA run, --help and the programs that load a run start without them.
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process is a rank of a torchrun job (which describes it in the environment)."""
    return "RANK" in os.environ


def start(timeout_minutes: float = 30) -> World:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if not launched():
        raise RuntimeError("--fsdp runs under torchrun: torchrun --nproc-per-node N train.py --fsdp ...")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(minutes=timeout_minutes), device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
    world = World(dist.get_rank(), dist.get_world_size(), device)
    if not world.is_main:
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar per job, not one per rank
    return world


def stop(exit_code: int = 0) -> None:
    """Leave the process group and exit.

    Tearing down gloo while its background threads still run aborted about one run in six with
    "terminate called without an active exception". After a barrier no collective is in flight, and
    `os._exit` ends the process without running the C++ destructors that raced; everything of ours
    is flushed and closed by then.
    """
    if dist.is_initialized():
        if exit_code == 0:
            dist.barrier()
        if dist.get_backend() == "nccl":
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def lost_a_rank(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank went away: gloo finds its connection reset,
    NCCL reports a distributed error."""
    return isinstance(error, dist.DistError) or "gloo/transport" in str(error)


class MainRankFailed(Exception):
    """Rank 0 failed in work that the other ranks wait for; it reports the error, they just stop."""


def main_first(world: World, work):
    """Run `work` on rank 0, then on the other ranks (which may use what it cached); when it fails on
    rank 0 the others stop too instead of waiting for it."""
    failed = [False]
    if world.is_main:
        try:
            result = work()
        except BaseException:
            failed = [True]
            dist.broadcast_object_list(failed, src=0)
            raise
    dist.broadcast_object_list(failed, src=0)
    if world.is_main:
        return result
    if failed[0]:
        raise MainRankFailed()
    return work()


def gather(value: float) -> list[float]:
    """This value from every rank, in rank order."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
