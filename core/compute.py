"""Where a program computes, in which dtype and on how many CPU threads: the --device, --dtype, --threads and
--quantize settings. Without torch, so that a program's --help answers before torch loads (core.device acts
on them)."""

import os
from dataclasses import dataclass

from core.flags import setting

DTYPE_NAMES = ("bf16", "fp16", "fp32")


def available_cores() -> int:
    """The cores this process may run on: fewer than the machine's under a container's or taskset's limit."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def local_ranks() -> int:
    """The processes torchrun started on this machine (LOCAL_WORLD_SIZE); 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """The cores available, shared out among torchrun's ranks on this machine (at least one each): ranks
    that each take every core fight over them. torchrun's own OMP_NUM_THREADS=1 is not followed (nor is
    any OMP_NUM_THREADS: torchrun sets it whenever it is unset, so it cannot say what a user chose);
    --threads is the one override."""
    return max(1, available_cores() // local_ranks())


@dataclass
class Threads:
    """--threads, for every program that computes with torch."""

    threads: int | None = setting(
        None,
        "CPU threads torch computes with (per rank under torchrun); on a machine busy with other work, fewer "
        f"can be faster (default: the cores this process may run on, {available_cores()} here, divided among "
        "torchrun's ranks on the machine)",
    )


@dataclass
class Compute(Threads):
    """Where and in which dtype a program computes with a model: --device, --dtype and --threads."""

    device: str = setting("auto", "cuda, cuda:N, cpu or auto (default: %(default)s: cuda when available)")
    dtype: str = setting(
        "auto",
        "weight and compute dtype (default: %(default)s: bf16 on cuda; fp32 on cpu, where bf16 measured slower, "
        "AVX-512 BF16 or not)",
        choices=["auto", *DTYPE_NAMES],
    )


@dataclass
class Quantization:
    """--quantize, for the programs that compute with a LoRA run's base (sample.py, serve.py, evaluate.py)."""

    quantize: str | None = setting(
        None,
        "keep the base's linear weights in 4 bits (NF4), the adapter unmerged beside them: a 7B model in about "
        "4 GiB (default: off)",
        choices=["nf4"],
    )
