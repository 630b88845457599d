"""examples/demo.sh, shortened: LoRA on SmolLM2 and the sample export teaches every persona's style.

The held-out loss of the target and of each partner falls below the base model's, as the demo's report
shows, and sample.py answers as the run's target. Skips where the SmolLM2 GGUF cannot be fetched.
"""
import json
import subprocess
import sys

import pytest

import train
from tests.test_sample import ROOT

SAMPLE = ROOT / "examples" / "telegram_export"
PERSONAS = {"Alexander Smirnov", "Катя Морозова", "Eleanor Whitfield", "Dmitry Volkov"}
# The demo's schedule, fewer steps: enough for the held-out loss of each persona to fall.
SHORT_DEMO = ["--seq-len", "256", "--micro-batch", "4", "--batch", "4", "--max-steps", "10", "--lr", "2e-3",
              "--warmup-ratio", "0.1", "--eval-every", "0", "--save-every", "0", "--lora-r", "16", "--lora-alpha", "32",
              "--lora-targets", "q,k,v,o,gate,up,down", "--eval-contexts", "0"]


@pytest.mark.slow
def test_the_demo_s_lora_run_lowers_every_persona_s_held_out_loss_and_chats_from_anywhere(smollm2_gguf, tmp_path):
    out = tmp_path / "demo"
    train.main(["--lora", "--model", str(smollm2_gguf), "--data", str(SAMPLE), "--out", str(out), *SHORT_DEMO])
    report = json.loads((out / "report" / "report.json").read_text())
    losses = {speaker["speaker"]: speaker["loss"] for speaker in report["speakers"]}
    assert PERSONAS <= set(losses)
    for persona in PERSONAS:
        assert losses[persona]["tuned"] < losses[persona]["base"], (persona, losses[persona])

    # The run records where its base is, so sample.py finds it from any folder, with the adapter's tokenizer.
    assert json.loads((out / "run.json").read_text())["settings"]["model"] == str(smollm2_gguf.resolve())
    assert {"tokenizer.json", "tokenizer_config.json"} <= {path.name for path in (out / "adapter").iterdir()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(out), "--prompt",
                             "привет! как дела?", "--seed", "0", "--max-new-tokens", "16"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=600)
    assert result.returncode == 0, result.stderr
    header, _, reply = result.stdout.partition("Alexander Smirnov:\n")
    assert header.strip() == "" and reply.strip()
