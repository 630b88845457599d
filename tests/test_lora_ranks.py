"""train.py --lora (and --quantize nf4) under torchrun with 2 CPU ranks (gloo) on a tiny model: the
frozen base and the adapters sharded with FSDP2, held to the one-device run number for number."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from model.checkpoint import save_model
from model.lora_config import LoRAConfig
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from tests.helpers import random_model, tiny_config
from tests.test_distributed import SAMPLE, losses, torchrun
from training import run as runs

# No dropout: its masks come from each process's own random stream, which 2 ranks draw differently.
FAST = [
    "--seq-len",
    "256",
    "--micro-batch",
    "2",
    "--batch",
    "8",
    "--lr",
    "1e-2",
    "--dtype",
    "fp32",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--lora-dropout",
    "0",
    "--lora-targets",
    "q,v,up,down",
    "--eval-every",
    "0",
    "--save-every",
    "0",
    "--no-eval-report",
    "--max-steps",
    "3",
]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def assert_same_run(run: Path, reference: Path) -> None:
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    theirs = adapter(reference)
    ours = adapter(run)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-6, rtol=1e-4, msg=name)


# The held-out losses of steps 1 to 3 (the last: the final evaluation), so that --keep-best ends with step 2.
HELD_OUT_LOSSES = """
import sys
import train
from training import run

losses = iter([3.0, 1.0, 2.0])
run.evaluate = lambda *args: (next(losses), 100)
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_nodes_train_the_one_device_adapter_and_chatml_rows_and_keep_the_best(
    tmp_path, mistral_tokenizer_dir, monkeypatch
):
    # A base without a chat format: the rows of the ChatML tokens added to it train too, sharded with the
    # embedding and the LM head, and start as the mean row there as on one device. With --keep-best both
    # end with step 2's adapter: the sharded run loads it back from its sharded checkpoint. The 2 ranks
    # run as 2 nodes of one rank each, launched apart, as on two machines.
    base = tmp_path / "base"
    save_model(
        random_model(tiny_config(vocab_size=32000, hidden_size=32, intermediate_size=64, sliding_window=48)),
        base,
        tokenizer=SentencePieceTokenizer.from_dir(mistral_tokenizer_dir),
    )
    script = tmp_path / "held_out.py"
    script.write_text(HELD_OUT_LOSSES)
    keep_best = ["--eval-every", 1, "--keep-checkpoints", 1, "--keep-best"]
    common = ["--model", base, "--data", SAMPLE, *FAST, *keep_best]
    torchrun(2, *common, "--out", tmp_path / "two", script=script, mode="--lora", nodes=2)
    held_out = iter([3.0, 1.0, 2.0])  # the same on one device
    monkeypatch.setattr(runs, "evaluate", lambda *args: (next(held_out), 100))
    train.main(["--lora", *map(str, common), "--out", str(tmp_path / "one")])
    assert_same_run(tmp_path / "two", tmp_path / "one")
    assert "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta" in adapter(tmp_path / "two")
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["mode"] == "lora" and record["figures"]["ranks"] == 2
    assert record["figures"]["best_step"] == 2 and record["figures"]["eval_loss"] == 1.0
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.is_dir()] == ["step-00000002"]
    assert {p.name for p in (tmp_path / "two" / "adapter").iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
    }


KILLED_RANK = """
import os
import signal
import sys
import torch.distributed as dist
import train
from training import run

real_step, steps = run.train_step, []
def train_step(*args, **kwargs):
    steps.append(1)
    if dist.get_rank() == 1 and len(steps) == 3:  # in step 3, after the checkpoint of step 2
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*args, **kwargs)
run.train_step = train_step
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_qlora_on_two_ranks_survives_a_killed_rank_and_resumes_on_one(tmp_path, tiny_checkpoint):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RANK)
    common = ["--model", tiny_checkpoint, "--data", SAMPLE, *FAST, "--quantize", "nf4"]
    killed = torchrun(
        2, *common, "--out", tmp_path / "two", "--save-every", 1, script=script, check=False, mode="--lora"
    )
    # Rank 0 finds rank 1 gone at once and says so in one line, without a traceback; torchrun's report follows
    # (naming whichever rank's end it saw first: the killed one's -9, or rank 0's own exit).
    assert killed.returncode != 0
    errors = [line for line in killed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: another rank of the job stopped, so every rank stops; continue from the newest "
        f"checkpoint with: torchrun ... train.py --resume {tmp_path / 'two'}"
    ]
    assert "[rank0]: Traceback" not in killed.stderr
    resumed = torchrun(1, "--resume", tmp_path / "two", mode="--lora")
    assert "step-00000002 was saved by 2 ranks and resumes on 1" in resumed.stderr
    train.main(["--lora", *map(str, common), "--out", str(tmp_path / "one")])
    assert_same_run(tmp_path / "two", tmp_path / "one")


def test_merge_and_gguf_under_torchrun_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")  # as under torchrun
    for flags, refusal in (
        (["--merge"], "--merge runs on one device, not under torchrun"),
        (["--model", tmp_path / "base.gguf"], "LoRA under torchrun reads Hugging Face model folders"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--lora", *map(str, flags), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.count("\n") == 1 and refusal in error, error


@pytest.fixture
def two_rank_world():
    """Rank 0 of a world of 2 in this process, on torch's fake process group (its collectives do nothing):
    enough to shard a model with FSDP2 and look at one rank's shares."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from training.ranks import World

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield World(0, 2, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_a_rank_holds_half_of_the_packed_nf4_bytes_and_scales(tiny_checkpoint, two_rank_world):
    from training.distributed import load_sharded_lora_model

    model, _ = load_sharded_lora_model(
        str(tiny_checkpoint), two_rank_world, torch.float32, LoRAConfig(r=4), quantization="nf4"
    )
    packed = [
        param
        for name, param in model.named_parameters()
        if name.rpartition(".")[2] in ("codes", "scale_codes", "scale_factors")
    ]
    assert {param.dtype for param in packed} == {torch.uint8, torch.int8, torch.float32}
    full = sum(param.numel() for param in packed)
    held = sum(param.to_local().numel() for param in packed)
    # Each part split in two rows-wise (the first rank takes the odd row), nothing kept whole but the scale means.
    assert full // 2 <= held <= full // 2 + len(packed)
    assert all(buffer.numel() == 1 for name, buffer in model.named_buffers() if name.endswith("scale_mean"))


def test_a_rank_gathers_the_untied_embedding_only_for_its_forward_pass(tiny_checkpoint, two_rank_world):
    # The root (norm, LM head) stays gathered from the forward pass through the backward; the embedding, a unit
    # of its own, is back to its share once it has run: at 70B that is 2 GiB less on every rank.
    from torch.distributed.tensor import DTensor

    from training.distributed import load_sharded_lora_model

    model, _ = load_sharded_lora_model(str(tiny_checkpoint), two_rank_world, torch.float32, LoRAConfig(r=4), None)
    assert not model.config.tie_word_embeddings
    model.hidden_states(torch.tensor([[1, 2, 3]]))
    assert isinstance(model.model.embed_tokens.weight, DTensor)
    assert not isinstance(model.lm_head.weight, DTensor)
