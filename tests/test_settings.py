"""training.settings: train.py's settings tree, its checks across flags, and a run's record read back on
--resume with the flags given over it."""

import dataclasses

import pytest

from core.flags import SettingsError, from_args, to_dict
from core.run_folder import RUNNING, RunFolder
from training.run_folder import parse_args
from training.settings import TrainSettings, build_parser


def parsed(*argv: str) -> TrainSettings:
    return from_args(TrainSettings, build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv, torchrun, message",
    [
        (["--fsdp"], False, "--fsdp runs under torchrun"),
        (["--fsdp", "--model", "m.gguf"], True, "--model m.gguf: --fsdp reads Hugging Face model folders"),
        (["--quantize", "nf4", "--merge"], False, "--quantize nf4 goes with --lora, without --merge"),
        (["--fsdp", "--quantize", "nf4"], True, "--quantize nf4 goes with --lora"),
        (["--model", "m.gguf"], True, "--model m.gguf: LoRA under torchrun reads Hugging Face model folders"),
        (["--merge"], True, "--merge runs on one device, not under torchrun"),
    ],
)
def test_settings_that_do_not_go_together_are_refused_naming_the_flags(argv, torchrun, message, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    if torchrun:
        monkeypatch.setenv("RANK", "0")
    with pytest.raises(SettingsError, match=f"^{message}"):
        parsed(*argv).check()


def test_the_learning_rate_is_the_recipe_s_unless_given(monkeypatch):
    assert parsed().lr == 2e-4 and parsed("--fsdp").lr == 2e-5 and parsed("--fsdp", "--lr", "1e-3").lr == 1e-3
    assert parsed().optimization.lr is None  # nothing patched into the settings: the record keeps "not given"


def test_a_resumed_run_has_its_recorded_settings_with_the_flags_given_over_them(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    recorded = parsed("--data", "export/", "--seq-len", "256", "--lora-targets", "q,v", "--epochs", "2")
    RunFolder(tmp_path).write_record(RUNNING, recorded.mode, to_dict(recorded))
    resumed = parse_args(["--resume", str(tmp_path), "--epochs", "5", "--stop-at", "3"])
    assert resumed.optimization.epochs == 5 and resumed.invocation.stop_at == 3  # given here
    assert resumed.data.seq_len == 256 and resumed.lora.adapter.targets == ("q_proj", "v_proj")  # recorded
    assert resumed.job.out == str(tmp_path) and resumed.invocation.resume == str(tmp_path)
    unchanged = dataclasses.replace(resumed, optimization=recorded.optimization, invocation=recorded.invocation)
    assert unchanged == dataclasses.replace(recorded, job=dataclasses.replace(recorded.job, out=str(tmp_path)))
