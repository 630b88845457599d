"""train.py --fsdp under torchrun with 2 CPU ranks (gloo) on a tiny model."""

import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import load_model, save_model
from tests.helpers import random_model, tiny_config
from tests.test_hostile_runs import CreatesAFile

pytestmark = pytest.mark.slow  # every test here starts torchrun

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "telegram_export"
FAST = [
    "--seq-len",
    "256",
    "--micro-batch",
    "2",
    "--batch",
    "8",
    "--lr",
    "1e-3",
    "--dtype",
    "fp32",
    "--export-dtype",
    "fp32",
    "--eval-every",
    "0",
    "--save-every",
    "0",
    "--no-eval-report",
]


def torchrun(
    ranks: int, *args, script: str = "train.py", check: bool = True, mode: str = "--fsdp", nodes: int = 1
) -> subprocess.CompletedProcess:
    """train.py (or `script`) on `ranks` processes; with `nodes`, as that many "nodes" on this machine:
    one torchrun launch each, meeting at a c10d rendezvous on localhost, as on several machines."""
    if nodes == 1:
        launch = [["--standalone", f"--nproc-per-node={ranks}"]]
    else:
        with socket.socket() as free:  # a port free now, for the rendezvous
            free.bind(("localhost", 0))
            port = free.getsockname()[1]
        launch = [
            [
                f"--nnodes={nodes}",
                f"--nproc-per-node={ranks // nodes}",
                f"--node-rank={node}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=localhost:{port}",
                "--rdzv-id=twin-test",
            ]
            for node in range(nodes)
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *flags, script, mode, *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for flags in launch
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in started]
    finally:
        for process in started:
            process.kill()  # those still running past the timeout
    # The job fails where any node's launch does; their outputs one after the other, node 0's first.
    result = subprocess.CompletedProcess(
        started[0].args,
        next((process.returncode for process in started if process.returncode), 0),
        "".join(out for out, _ in outputs),
        "".join(err for _, err in outputs),
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def exported(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((out / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def stopped_on_two_ranks(tmp_path_factory, tiny_checkpoint) -> Path:
    """A run of 3 steps that 2 ranks stopped after step 2, with activation checkpointing (which must not change
    a single number), under an ordinary umask (which the ranks inherit: train.py makes its files private),
    and a checkpoint write killed at step 3. Tests resume copies of it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    previous = os.umask(0o022)
    try:
        torchrun(
            2,
            "--model",
            tiny_checkpoint,
            "--data",
            SAMPLE,
            "--out",
            out,
            "--max-steps",
            3,
            *FAST,
            "--activation-checkpointing",
            "--stop-at",
            2,
        )
    finally:
        os.umask(previous)
    assert not (out / "model").exists()
    (out / "checkpoints" / ".step-00000003.tmp").mkdir()
    return out


def resumable_copy(stopped: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped, copy)
    return copy


def test_two_ranks_follow_one_and_their_checkpoint_resumes_on_one_exactly(
    stopped_on_two_ranks, tmp_path, tiny_checkpoint
):
    # 3 steps of 8 rows stay inside the first epoch, where both runs see the same rows per step. One rank takes
    # the two ranks' checkpoint on from step 2: resharded, at the same rows, to the straight run's numbers.
    two = resumable_copy(stopped_on_two_ranks, tmp_path)
    assert {".metadata", "__0_0.distcp", "training_state.pt", "rng-rank1.pt"} <= {p.name for p in two.rglob("*")}
    resumed = torchrun(1, "--resume", two)
    assert "step-00000002 was saved by 2 ranks and resumes on 1: the data continues where it stopped" in resumed.stderr
    assert not (two / "checkpoints" / ".step-00000003.tmp").exists()
    assert {
        str(p): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [two, *two.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    } == {}
    torchrun(1, "--model", tiny_checkpoint, "--data", SAMPLE, "--out", tmp_path / "one", "--max-steps", 3, *FAST)
    after_resume, straight = losses(two), losses(tmp_path / "one")
    assert len(after_resume) == 3 and after_resume[-1] < after_resume[0]
    assert after_resume == pytest.approx(straight, rel=1e-5)
    record = json.loads((two / "run.json").read_text())
    assert record["mode"] == "fsdp" and len(record["figures"]["peak_memory_mb_per_rank"]) == 1
    assert (two / "model" / "config.json").is_file()
    for name, tensor in exported(tmp_path / "one").items():
        torch.testing.assert_close(exported(two)[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_export_loads_in_transformers_and_chatml_rows_start_at_the_mean(tmp_path, mistral_tokenizer_dir):
    import transformers

    from model.sentencepiece_tokenizer import SentencePieceTokenizer

    base = tmp_path / "base"
    original = random_model(tiny_config(vocab_size=32000, hidden_size=32, intermediate_size=64, sliding_window=48))
    save_model(original, base, tokenizer=SentencePieceTokenizer.from_dir(mistral_tokenizer_dir))
    torchrun(
        2,
        "--model",
        base,
        "--data",
        SAMPLE,
        "--out",
        tmp_path / "run",
        "--max-steps",
        1,
        *FAST[: FAST.index("--lr")],
        "--lr",
        0.0,
        *FAST[FAST.index("--lr") + 2 :],
    )
    out = tmp_path / "run" / "model"
    tokenizer = SentencePieceTokenizer.from_dir(out)
    assert (tokenizer.im_end_id, tokenizer.im_start_id) == (32000, 32001)
    ours = load_model(out, dtype=torch.float32)
    assert ours.config.vocab_size == 32002
    old_rows = original.model.embed_tokens.weight.detach()
    for weight, old in [
        (ours.model.embed_tokens.weight, old_rows),
        (ours.lm_head.weight, original.lm_head.weight.detach()),
    ]:
        torch.testing.assert_close(weight[:32000], old)  # lr 0: nothing moved
        torch.testing.assert_close(weight[32000:], old.mean(0).expand(2, -1))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 32002, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)
    # From the tokenizer files alone: beside a config.json of model_type mistral, transformers 5.23
    # picks a generic tokenizer class that drops SentencePiece's dummy prefix for any Mistral tokenizer.
    tokenizer_only = tmp_path / "tokenizer"
    tokenizer.save(tokenizer_only)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_only)
    text = "<|im_start|>Катя\n>>> привет<|im_end|>"
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text)


FAILING_RANK = """
import sys
import torch.distributed as dist
import train
from training import run

real_step = run.train_step
def train_step(*args, **kwargs):
    if dist.get_rank() == 1:
        raise RuntimeError("injected failure on rank 1")
    return real_step(*args, **kwargs)
run.train_step = train_step
train.main(sys.argv[1:])
"""


def test_a_failing_rank_brings_the_job_down_with_its_error(tmp_path, tiny_checkpoint):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RANK)
    result = torchrun(
        2,
        "--model",
        tiny_checkpoint,
        "--data",
        SAMPLE,
        "--out",
        tmp_path / "run",
        "--max-steps",
        3,
        *FAST,
        script=script,
        check=False,
    )
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr


def test_a_bad_data_path_ends_every_rank_with_one_error_line(tmp_path, tiny_checkpoint):
    result = torchrun(
        2,
        "--model",
        tiny_checkpoint,
        "--data",
        tmp_path / "nowhere.json",
        "--out",
        tmp_path / "run",
        *FAST,
        check=False,
    )
    assert result.returncode != 0
    # One line from rank 0, none from rank 1; the launcher's own failure report follows it.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nowhere.json: no such file or directory" in errors[0]
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def test_resuming_past_a_crafted_index_runs_nothing_and_says_so_once(stopped_on_two_ranks, tmp_path):
    out = resumable_copy(stopped_on_two_ranks, tmp_path)
    index = out / "checkpoints" / "step-00000002" / ".metadata"
    index.write_bytes(pickle.dumps(CreatesAFile(tmp_path / "pwned")))
    result = torchrun(2, "--resume", out, check=False)
    assert result.returncode != 0 and not (tmp_path / "pwned").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {index}: refused: it names io.open, which no checkpoint index holds (a file made to "
        "run code when read)"
    ]
    # The ranks end without a traceback; the launcher's own failure report follows the error line.
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
