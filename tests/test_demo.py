"""examples/demo.sh, shortened: LoRA on SmolLM2 and the sample export teaches every persona's style.

The held-out loss of the target and of each partner falls below the base model's, as the demo's report
shows, and sample.py answers as the run's target. Skips where the SmolLM2 GGUF cannot be fetched.
"""
import json

import pytest

import sample
import train
from tests.test_sample import ROOT

SAMPLE = ROOT / "examples" / "telegram_export"
PERSONAS = {"Alexander Smirnov", "Катя Морозова", "Eleanor Whitfield", "Dmitry Volkov"}
# The demo's schedule, fewer steps: enough for the held-out loss of each persona to fall.
SHORT_DEMO = ["--seq-len", "256", "--micro-batch", "4", "--batch", "4", "--max-steps", "10", "--lr", "2e-3",
              "--warmup-ratio", "0.1", "--eval-every", "0", "--save-every", "0", "--lora-r", "16", "--lora-alpha", "32",
              "--lora-targets", "q,k,v,o,gate,up,down", "--eval-contexts", "0"]


@pytest.mark.slow
def test_the_demo_s_lora_run_lowers_every_persona_s_held_out_loss(smollm2_gguf, tmp_path, capsys):
    out = tmp_path / "demo"
    train.main(["--lora", "--model", str(smollm2_gguf), "--data", str(SAMPLE), "--out", str(out), *SHORT_DEMO])
    report = json.loads((out / "report" / "report.json").read_text())
    losses = {speaker["speaker"]: speaker["loss"] for speaker in report["speakers"]}
    assert PERSONAS <= set(losses)
    for persona in PERSONAS:
        assert losses[persona]["tuned"] < losses[persona]["base"], (persona, losses[persona])

    capsys.readouterr()
    sample.main(["--checkpoint", str(out), "--prompt", "привет! как дела?", "--seed", "0", "--max-new-tokens", "16"])
    assert "\nAlexander Smirnov:\n" in capsys.readouterr().out
