"""Where a program computes, and in which dtype: the --device and --dtype flags resolved."""
import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(args) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
    except RuntimeError as error:
        raise ValueError(f"--device {args.device}: {error}") from None
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype
