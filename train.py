"""Fine-tune an open chat model on a Telegram export, so that it writes as the people in it.

    python train.py --lora --data ~/Downloads/Telegram\\ Desktop/DataExport/ --out runs/me
    torchrun --nproc-per-node 8 train.py --fsdp --data EXPORT --out runs/me-full

LoRA adapters (`--lora`, the lora.py recipe) on one device, or sharded over the ranks of a torchrun
job; or every weight sharded over the ranks (`--fsdp` under torchrun, the fsdp.py recipe).
"""

import sys

from core.cli import program
from training.run_folder import claimed, parse_args


@program
def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv, __doc__)
    # torch loads only now, once the flags are good: --help and a mistyped flag answer at once, not after
    # the second and a half torch takes to import.
    import torch

    from training import ranks

    world = ranks.start() if settings.recipe.fsdp or ranks.launched() else None
    exit_code = 0
    try:
        with claimed(settings):  # locked while it runs; a run that fails before its first step leaves nothing
            if settings.recipe.fsdp:
                import fsdp  # FSDP2 and distributed checkpoints take a second to import: only a run needs them

                fsdp.train(settings, world)
            else:
                import lora

                lora.train(settings, world)
    except ValueError as error:
        # A TwinError (a file or flag the user can fix), or torch refusing a setting, such as a negative --lr.
        # Caught here rather than by `program`: a sharded job must end on every rank with the same status.
        print(f"error: {error}", file=sys.stderr)
        exit_code = 2
    except OSError as error:  # a run folder that cannot be written, a full disk
        print(f"error: {error.filename}: {error.strerror}" if error.filename else f"error: {error}", file=sys.stderr)
        exit_code = 2
    except ranks.MainRankFailed:  # rank 0 has printed the error
        exit_code = 2
    except torch.cuda.OutOfMemoryError:
        print(
            f"error: the GPU ran out of memory at --micro-batch {settings.optimization.micro_batch}, "
            f"--seq-len {settings.data.seq_len}. "
            "Lower --micro-batch (keeping --batch: more accumulation), lower --seq-len, or turn on "
            "--activation-checkpointing.",
            file=sys.stderr,
        )
        exit_code = 2
    except RuntimeError as error:  # after its subclass, the GPU's out of memory
        if not (world and ranks.lost_a_rank(error)):
            raise
        # Another rank died (killed, out of memory): torchrun stops this one too in a moment, and its
        # report names the rank; the run goes on from its newest intact checkpoint.
        if world.is_main:
            print(
                f"error: another rank of the job stopped, so every rank stops; continue from the newest "
                f"checkpoint with: torchrun ... train.py --resume {settings.job.out}",
                file=sys.stderr,
            )
        exit_code = 2
    if world is not None:
        ranks.stop(exit_code)  # the whole job ends: torchrun stops the other ranks when one fails
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
