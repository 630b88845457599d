"""Where a program computes, in which dtype and on how many CPU threads: --device, --dtype, --threads."""
import argparse
import os
import sys
from typing import TextIO

import torch

from core.errors import TwinError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(args) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
    except RuntimeError as error:
        raise TwinError(f"--device {args.device}: {error}") from None
    # --dtype auto keeps fp32 on a CPU even where it has AVX-512 BF16: there a SmolLM2 LoRA step measured
    # twice as slow in bf16 as in fp32 (torch 2.13, 2 cores), at the same first-step loss.
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The --dtype name of a torch dtype: bf16, fp16 or fp32."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def available_cores() -> int:
    """The cores this process may run on: fewer than the machine's under a container's or taskset's limit."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def add_threads_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=int, help="CPU threads torch computes with; on a machine busy with "
                        "other work, fewer can be faster (default: the cores this process may run on, "
                        f"{available_cores()} here)")


def set_threads(args, file: TextIO | None = None) -> int:
    """Compute on --threads CPU threads, by default as many as the cores available, and say how many (on
    stderr by default, which keeps a script's stdout to replies)."""
    threads = available_cores() if args.threads is None else args.threads
    if threads < 1:
        raise TwinError(f"--threads: must be 1 or more, got {threads}")
    torch.set_num_threads(threads)
    why = "--threads" if args.threads is not None else "the cores available; --threads to change"
    print(f"computing on {threads} CPU thread{'s' if threads > 1 else ''} ({why})", file=file or sys.stderr, flush=True)
    return threads
