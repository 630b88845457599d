"""A whole fidelity report: plan, measure base and tuned, compare, write. `run_evaluation` is what train.py
calls at the end of a LoRA run; `evaluate_full_fine_tune` compares two checkpoints."""

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch

from data.dataset import PreparedData
from fidelity import EvaluationError
from fidelity.markdown import write_report
from fidelity.measure import Measurement, measure, turn_length_caps
from fidelity.plan import EvalSettings, Plan, plan_evaluation
from fidelity.remembering import MemoryFigures, measure_memory
from fidelity.report import Report, compare
from fidelity.verdict import PersonVerdict
from memory.context import Memory
from memory.settings import MemoryConfig
from memory.store import Conversations
from model.checkpoint import check_finite, load_model
from model.lora import adapters_merged, adapters_off, lora_layers
from model.tokenizer import Tokenizer
from model.transformer import Transformer


def run_evaluation(
    model: Transformer,
    tokenizer: Tokenizer,
    data: PreparedData,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
    device: torch.device = torch.device("cpu"),
    about: dict | None = None,
    metrics_file: Path | None = None,
    verdict: list[PersonVerdict] | None = None,
    memory: MemoryConfig | None = None,
) -> Report:
    """Evaluate a model carrying LoRA adapters against itself with them switched off; write the report.

    `about` says what the report is about: "base", "tuned", "data" (strings for the reader).
    `metrics_file`: the run's metrics.jsonl, for the loss curves. `verdict`: the blind test's, if judged.
    `memory`: the run's, for the report's memory section (the tuned model without and with it).
    The model is left as it came: adapters on and unmerged (its weights to within rounding), same training mode.
    """
    settings = settings or EvalSettings()
    if not lora_layers(model):
        raise EvaluationError("the model carries no LoRA adapters, so there is no base model to switch to")
    # A run with memory is written as it trained and as sample.py chats: each context after its memory.
    remembered = (
        Memory(Conversations(data.train_sessions + data.val_sessions), memory, tokenizer).for_session
        if memory and memory.on
        else None
    )
    plan = plan_evaluation(data, settings, remembered)
    with adapters_off(model):
        base = measure(model, tokenizer, data, plan, settings, device, "base")
    with adapters_merged(model):  # as sample.py chats, and faster
        figures = (
            measure_memory(
                model,
                tokenizer,
                data,
                plan.speakers,
                memory,
                settings,
                device,
                turn_length_caps(plan, tokenizer, settings.sampling.max_new_tokens),
            )
            if remembered
            else None
        )
        # The memory section's pass without memory gives the tuned model's held-out losses: not run twice.
        tuned = measure(
            model,
            tokenizer,
            data,
            plan,
            settings,
            device,
            "tuned",
            losses=figures.without_memory() if figures else None,
        )
    return compare_and_write(plan, data, base, tuned, settings, out_dir, about or {}, metrics_file, verdict, figures)


def evaluate_full_fine_tune(
    base_source: str | Path,
    tuned_source: str | Path,
    tokenizer: Tokenizer,
    data: PreparedData,
    out_dir: str | Path,
    settings: EvalSettings,
    device: torch.device,
    dtype: torch.dtype,
    about: dict,
    metrics_file: Path | None = None,
    verdict: list[PersonVerdict] | None = None,
) -> Report:
    """Evaluate a fully fine-tuned checkpoint against its base; write the report. The two models are
    loaded one after the other, as two 7B models rarely fit in memory at once."""
    plan = plan_evaluation(data, settings)
    base = measure_checkpoint(base_source, tokenizer, data, plan, settings, device, dtype, "base")
    tuned = measure_checkpoint(tuned_source, tokenizer, data, plan, settings, device, dtype, "tuned")
    return compare_and_write(plan, data, base, tuned, settings, out_dir, about, metrics_file, verdict)


def compare_and_write(
    plan: Plan,
    data: PreparedData,
    base: Measurement,
    tuned: Measurement,
    settings: EvalSettings,
    out_dir: str | Path,
    about: dict,
    metrics_file: Path | None = None,
    verdict: list[PersonVerdict] | None = None,
    memory: MemoryFigures | None = None,
) -> Report:
    about = {
        "base": "base model",
        "tuned": "tuned model",
        "data": "held-out sessions",
        **about,
        "speakers": plan.speakers,
        "contexts": settings.contexts,
        "seed": settings.seed,
        "sampling": asdict(settings.sampling),
    }
    report = dataclasses.replace(compare(plan, data, base, tuned, settings, about, verdict), memory=memory)
    write_report(report, out_dir, metrics_file)
    return report


def measure_checkpoint(
    source: str | Path,
    tokenizer: Tokenizer,
    data: PreparedData,
    plan: Plan,
    settings: EvalSettings,
    device: torch.device,
    dtype: torch.dtype,
    name: str,
) -> Measurement:
    """Load a model, measure it, and let it go (it is freed when this returns)."""
    model = load_model(source, dtype=dtype, device=device)
    check_finite(model, source)
    measurement = measure(model, tokenizer, data, plan, settings, device, name)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measurement
