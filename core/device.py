"""Where a program computes, in which dtype and on how many CPU threads: --device, --dtype, --threads."""

import os
import sys
from dataclasses import dataclass
from typing import TextIO

import torch

from core.errors import TwinError
from core.flags import setting

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
        choices=["auto", *DTYPES],
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


def resolve_device(args: Compute) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else "cpu"
            if args.device == "auto"
            else args.device
        )
    except RuntimeError as error:
        raise TwinError(f"--device {args.device}: {error}") from None
    # --dtype auto keeps fp32 on a CPU even where it has AVX-512 BF16: there a SmolLM2 LoRA step measured
    # twice as slow in bf16 as in fp32 (torch 2.13, 2 cores), at the same first-step loss.
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The --dtype name of a torch dtype: bf16, fp16 or fp32."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def set_threads(args: Threads, file: TextIO | None = None, quiet: bool = False) -> int:
    """Compute on --threads CPU threads, by default default_threads(), and say how many (on stderr by
    default, which keeps a script's stdout to replies; `quiet` for all but one rank of a job)."""
    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise TwinError(f"--threads: must be 1 or more, got {threads}")
    torch.set_num_threads(threads)
    ranks = local_ranks()
    why = (
        "--threads"
        if args.threads is not None
        else "the cores available; --threads to change"
        if ranks == 1
        else f"{available_cores()} cores available shared by {ranks} ranks; --threads to change"
    )
    per_rank = " per rank" if ranks > 1 else ""
    if not quiet:
        print(
            f"computing on {threads} CPU thread{'s' if threads > 1 else ''}{per_rank} ({why})",
            file=file or sys.stderr,
            flush=True,
        )
    return threads
