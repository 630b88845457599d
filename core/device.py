"""A program's computing set up as its settings say (core.compute): the torch device and dtype, and the CPU threads."""

import sys
from typing import TextIO

import torch

from core.compute import DTYPE_NAMES, Compute, Threads, available_cores, default_threads, local_ranks
from core.errors import TwinError

DTYPES = dict(zip(DTYPE_NAMES, (torch.bfloat16, torch.float16, torch.float32)))


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
