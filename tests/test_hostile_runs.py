"""Damaged and hostile run folders: each ends in one `error: ...` line naming the file, or in the
documented recovery, never in a traceback, and nothing of them runs or writes outside the run folder.

One tiny finished LoRA run (checkpoints at steps 1 and 2 of 2) is built per module; each case copies
it, damages the copy, and runs train.py (or sample.py, evaluate.py) on it in-process.
"""

import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import evaluate
import export as gguf_program
import lora
import sample
import train
from core.flags import flag_values, from_dict
from core.run_folder import RunFolder
from tests.helpers import exit_status
from training import distributed
from training.checkpointer import DamagedCheckpoint, resume_from
from training.loop import TrainingError
from training.settings import TrainSettings

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "telegram_export"
FAST = [
    "--seq-len",
    "256",
    "--micro-batch",
    "2",
    "--batch",
    "4",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--no-eval-report",
    "--eval-every",
    "0",
]
STEP_1, STEP_2 = "checkpoints/step-00000001", "checkpoints/step-00000002"


class CreatesAFile:
    """Unpickled, it creates the file at `path`: what a crafted checkpoint would do, harmlessly."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    train.main(
        [
            "--lora",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(SAMPLE),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--save-every",
            "1",
            "--keep-checkpoints",
            "2",
            *FAST,
        ]
    )
    return out


# Damages: each gets the copied run and a folder outside it; `pwned` there must never appear.


def unfinished(run: Path, outside: Path) -> None:
    """Killed after the checkpoint of the final step, before the results were written."""
    settings = json.loads((run / "run.json").read_text())["settings"]
    (run / "run.json").write_text(json.dumps({"status": "running", "settings": settings}))
    shutil.rmtree(run / "adapter")


def trained(run: Path, outside: Path) -> None:
    """Killed in its report or merge: the adapter final and recorded so, the loss curves not yet drawn."""
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "status": "trained"}))
    (run / "loss_curves.png").unlink(missing_ok=True)


def an_adapter_of_a_running_run(run: Path, outside: Path) -> None:
    """An adapter a fresh run would replace, in a folder whose record says running (a twin of before)."""
    settings = json.loads((run / "run.json").read_text())["settings"]
    (run / "run.json").write_text(json.dumps({"status": "running", "settings": settings}))
    shutil.rmtree(run / "checkpoints")


def earlier_layout(run: Path, outside: Path) -> None:
    """A finished run as twin wrote them before one record: the settings in run_args.json, and a run.json
    without a status."""
    record = json.loads((run / "run.json").read_text())
    del record["status"]
    flat = flag_values(from_dict(TrainSettings, record["settings"]))  # every flag in one dict, as then
    (run / "run.json").write_text(json.dumps({**record, "settings": flat}))
    (run / "run_args.json").write_text(json.dumps(flat))


def then(*damages: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        for each in damages:
            each(run, outside)

    return damage


def write(name: str, content: str | bytes) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        path = run / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return damage


def truncate(name: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        path = run / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def crafted(name: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        (run / name).write_bytes(pickle.dumps(CreatesAFile(outside / "pwned")))

    return damage


def settings(section: str, **changes) -> Callable[[Path, Path], None]:
    """Values of one section of the recorded settings tree changed."""

    def damage(run: Path, outside: Path) -> None:
        path = run / "run.json"
        record = json.loads(path.read_text())
        record["settings"][section] = {**record["settings"].get(section, {}), **changes}
        path.write_text(json.dumps(record))

    return damage


def training_state(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        path = run / STEP_2 / "training_state.pt"
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return damage


def link(name: str, target: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        (outside / target).mkdir(exist_ok=True) if not target.endswith(".jsonl") else (outside / target).write_text("")
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        path.symlink_to(outside / target)

    return damage


def copy(name: str, to: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        shutil.copytree(run / name, run / to) if (run / name).is_dir() else shutil.copy(run / name, run / to)

    return damage


def remove(name: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()

    return damage


def truncated_cache(run: Path, outside: Path) -> None:
    for cache_file in (run / "cache").iterdir():
        truncate(str(cache_file.relative_to(run)))(run, outside)


def move(name: str, to: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, outside: Path) -> None:
        os.replace(run / name, run / to)

    return damage


def run_json(content) -> Callable[[Path, Path], None]:
    return write("run.json", content if isinstance(content, str) else json.dumps(content))


@dataclass
class Case:
    damage: Callable[[Path, Path], None]
    says: str  # in the error line when status is 2, else in what the program printed; {run}: the run folder
    status: int = 0
    command: str = "resume"  # resume | fresh (train.py into the run's --out) | sample | evaluate


RESUMED_FROM_1 = "resumed from {run}/checkpoints/step-00000001 at step 1 of 2"
CASES = {
    # A run that can never finish, and finished ones.
    "final checkpoint, no results": Case(unfinished, "resumed from {run}/checkpoints/step-00000002 at step 2 of 2"),
    "finished, resumed": Case(lambda run, outside: None, "{run} is a finished run"),
    "finished, trained into": Case(lambda run, outside: None, "--out {run} holds a finished run", 2, "fresh"),
    "checkpoints only, trained into": Case(unfinished, "continue it with --resume {run}", 2, "fresh"),
    # Stopped after the adapter was final (in the report, in --merge): only what follows is written again.
    "trained, resumed": Case(trained, "{run}/adapter is final; writing what the run had not written yet"),
    "trained, sampled": Case(trained, "Misha", command="sample"),
    "trained, trained into": Case(
        trained, "--out {run} holds an unfinished run; continue it with --resume {run}", 2, "fresh"
    ),
    "an adapter, trained into": Case(
        an_adapter_of_a_running_run, "--out {run} holds {run}/adapter, which a fresh run would replace", 2, "fresh"
    ),
    # run.json, as --resume reads it
    "record missing": Case(then(unfinished, remove("run.json")), "{run}/run.json not found", 2),
    "record not JSON": Case(
        then(unfinished, write("run.json", '{"seq_len": 2')), "{run}/run.json: not readable as JSON", 2
    ),
    "record not UTF-8": Case(
        then(unfinished, write("run.json", b"\xff\xfe{}")), "{run}/run.json: not readable as JSON", 2
    ),
    "record nested too deep": Case(
        then(unfinished, write("run.json", "[" * 100_000)), "{run}/run.json: not readable as JSON", 2
    ),
    "record a list": Case(
        then(unfinished, write("run.json", "[1, 2]")), "{run}/run.json: not a train.py run record", 2
    ),
    "record of an unknown status": Case(
        then(unfinished, run_json({"status": "paused", "settings": {}})), "{run}/run.json: not a train.py run record", 2
    ),
    "settings text for a number": Case(
        then(unfinished, settings("data", seq_len="long")), "{run}/run.json: --seq-len", 2
    ),
    "settings zero rows a batch": Case(
        then(unfinished, settings("optimization", micro_batch=0)), "{run}/run.json: --micro-batch", 2
    ),
    "settings a number for a flag": Case(then(unfinished, settings("lora", merge=1)), "{run}/run.json: --merge", 2),
    "settings no model": Case(then(unfinished, settings("job", model=None)), "{run}/run.json: records no --model", 2),
    "settings unknown choice": Case(
        then(unfinished, settings("data", train_on="nobody")), "{run}/run.json: --train-on", 2
    ),
    "settings ask for torchrun": Case(then(unfinished, settings("recipe", fsdp=True)), "--fsdp runs under torchrun", 2),
    "settings keys that are no flag": Case(
        then(unfinished, settings("job", __class__="x", __dict__={}), settings("invocation", stop_at=1)),
        "resumed from {run}/checkpoints/step-00000002",
    ),
    # Runs of the earlier layout: settings in run_args.json, and run.json (no status) once finished.
    "earlier layout, unfinished": Case(
        then(earlier_layout, remove("run.json"), remove("adapter")), "resumed from {run}/checkpoints/step-00000002"
    ),
    "earlier layout, finished, resumed": Case(earlier_layout, "{run} is a finished run"),
    "earlier layout, finished, trained into": Case(earlier_layout, "--out {run} holds a finished run", 2, "fresh"),
    "earlier layout, finished, sampled": Case(earlier_layout, "Misha", command="sample"),
    "earlier layout, finished, evaluated": Case(
        earlier_layout, "report written to {run}/report/report.md", command="evaluate"
    ),
    "earlier layout, settings not JSON": Case(
        then(earlier_layout, remove("run.json"), write("run_args.json", "{")),
        "{run}/run_args.json: not readable as JSON",
        2,
    ),
    "earlier layout, settings a list": Case(
        then(earlier_layout, remove("run.json"), write("run_args.json", "[1]")),
        "{run}/run_args.json: holds a JSON list",
        2,
    ),
    # Checkpoints: damaged ones fall back to the one before, with a warning.
    "training state truncated": Case(then(unfinished, truncate(f"{STEP_2}/training_state.pt")), RESUMED_FROM_1),
    "training state empty": Case(then(unfinished, write(f"{STEP_2}/training_state.pt", b"")), RESUMED_FROM_1),
    "training state crafted": Case(then(unfinished, crafted(f"{STEP_2}/training_state.pt")), RESUMED_FROM_1),
    "training state of another step": Case(
        then(unfinished, copy(f"{STEP_1}/training_state.pt", f"{STEP_2}/training_state.pt")), RESUMED_FROM_1
    ),
    "optimizer moments of another shape": Case(
        then(
            unfinished, training_state(lambda state: state["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3)))
        ),
        RESUMED_FROM_1,
    ),
    "scheduler state with foreign attributes": Case(
        then(unfinished, training_state(lambda state: state["scheduler"].update(optimizer="x"))), RESUMED_FROM_1
    ),
    "adapter truncated": Case(
        then(unfinished, truncate(f"{STEP_2}/adapter/adapter_model.safetensors")), RESUMED_FROM_1
    ),
    "every checkpoint damaged": Case(
        then(unfinished, truncate(f"{STEP_2}/training_state.pt"), truncate(f"{STEP_1}/training_state.pt")),
        "{run}/checkpoints: no checkpoint to resume from is intact",
        2,
    ),
    "no checkpoint": Case(then(unfinished, remove("checkpoints")), "{run}: no checkpoint to resume from", 2),
    "a file for the checkpoints": Case(
        then(unfinished, remove("checkpoints"), write("checkpoints", "x")), "{run}: no checkpoint to resume from", 2
    ),
    "a crafted .metadata in a LoRA checkpoint": Case(
        then(unfinished, crafted(f"{STEP_2}/.metadata")), "resumed from {run}/checkpoints/step-00000002"
    ),
    "a crafted .metadata, sampled": Case(crafted(f"{STEP_2}/.metadata"), "Misha", command="sample"),
    "a crafted .metadata, evaluated": Case(
        crafted(f"{STEP_2}/.metadata"), "report written to {run}/report/report.md", command="evaluate"
    ),
    # Writes cut short: removed at start, or put back when they were complete.
    "unfinished writes": Case(
        then(
            unfinished,
            copy(STEP_1, "checkpoints/.step-00000003.k2_x.tmp"),
            copy(STEP_1, "checkpoints/.step-00000002.tmp"),
            copy("cache", ".adapter.x9.tmp"),
            write(".run.json.k2_x.tmp", "{"),
            copy("cache", ".report.x1.tmp"),
        ),
        "removed {run}/.adapter.x9.tmp",
    ),
    "a checkpoint swapped out and not back": Case(
        then(unfinished, move(STEP_2, "checkpoints/.step-00000002.old")), "resumed from {run}/checkpoints/step-00000002"
    ),
    "token cache damaged": Case(then(unfinished, truncated_cache), "damaged token cache"),
    "metrics with garbage lines": Case(
        then(unfinished, write("metrics.jsonl", b'{"step": "x"}\n\xff\x00\n{"step": 1}\n' + b"[" * 100_000)),
        "resumed from {run}/checkpoints/step-00000002",
    ),
    # Links out of the run folder.
    "checkpoints a link": Case(
        then(unfinished, link("checkpoints", "elsewhere")), "{run}/checkpoints: a symbolic link", 2
    ),
    "metrics a link": Case(
        then(unfinished, link("metrics.jsonl", "metrics.jsonl")), "{run}/metrics.jsonl: a symbolic link", 2
    ),
    "cache a link, trained into": Case(link("cache", "cache"), "{run}/cache: a symbolic link", 2, "fresh"),
    "the lock a link": Case(then(unfinished, link(".lock", "lock.jsonl")), "{run}/.lock: a symbolic link", 2),
    "report a link, evaluated": Case(link("report", "report"), "{run}/report: a symbolic link", 2, "evaluate"),
    "report cut short, evaluated": Case(
        copy("cache", ".report.x1.tmp"), "removed {run}/.report.x1.tmp", command="evaluate"
    ),
    "a checkpoint a link": Case(then(unfinished, link(STEP_2, "step")), RESUMED_FROM_1),
    "the run a file": Case(lambda run, _: (shutil.rmtree(run), run.write_text("x")), "--resume {run}: not a folder", 2),
    # run.json, as sample.py and evaluate.py read it.
    "run.json not JSON, sampled": Case(run_json("{"), "{run}/run.json: not readable as JSON", 2, "sample"),
    "run.json nested too deep, sampled": Case(
        run_json("[" * 100_000), "{run}/run.json: not readable as JSON", 2, "sample"
    ),
    "run.json a list, evaluated": Case(run_json([]), "{run}/run.json: not a train.py run record", 2, "evaluate"),
    "run.json partners not names": Case(
        run_json({"settings": {"model": "m", "data": "d"}, "figures": {"partners": [1]}}),
        "{run}/run.json: not a train.py run record",
        2,
        "sample",
    ),
    "run.json settings of wrong types": Case(
        run_json({"settings": {"model": "m", "data": "d", "seq_len": [1]}}), "{run}/run.json: --seq-len", 2, "evaluate"
    ),
    "run.json without data": Case(
        run_json({"settings": {"model": "m"}}), "{run}/run.json: records no --data", 2, "sample"
    ),
    "unfinished, sampled": Case(
        unfinished,
        "{run}/run.json: the run has not finished; continue it with: python train.py --resume {run}",
        2,
        "sample",
    ),
    "unfinished, evaluated": Case(unfinished, "{run}/run.json: the run has not finished", 2, "evaluate"),
}


def run_command(case: Case, run: Path, tiny_checkpoint: Path) -> int:
    argv = {
        "resume": ["--resume", str(run)],
        "fresh": ["--lora", "--model", str(tiny_checkpoint), "--data", str(SAMPLE), "--out", str(run), *FAST],
        "sample": ["--checkpoint", str(run), "--speaker", "Misha", "--prompt", "hi", "--max-new-tokens", "2"],
        "evaluate": ["--checkpoint", str(run), "--contexts", "0"],
    }[case.command]
    main = {"sample": sample.main, "evaluate": evaluate.main}.get(case.command, train.main)
    try:
        main(argv)  # any exception but SystemExit fails the test with its traceback
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def files_under(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.slow  # each case runs a program end to end on its copy: the whole suite runs them
@pytest.mark.parametrize("name", CASES)
def test_a_hostile_run_folder(name, finished_run, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    run, outside = tmp_path / "run", tmp_path / "outside"
    shutil.copytree(finished_run, run, symlinks=True)
    outside.mkdir()
    case.damage(run, outside)
    monkeypatch.chdir(outside)  # whatever a program writes by a relative path lands in sight
    before = files_under(outside)
    capsys.readouterr()

    status = run_command(case, run, tiny_checkpoint)

    printed = capsys.readouterr()
    says = case.says.format(run=run)
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in printed.err
    assert status == case.status, printed.err[-2000:]
    if status == 2:
        assert len(errors) == 1 and says in errors[0], printed.err[-2000:]
    else:
        assert not errors and says in printed.out + printed.err, printed.out[-2000:] + printed.err[-2000:]
    if status == 0 and case.command == "resume":
        record = json.loads((run / "run.json").read_text())
        assert record["figures"]["steps"] == 2 and record.get("status", "finished") == "finished"  # none: before
        assert not [
            p
            for p in [*run.iterdir(), *(run / "checkpoints").iterdir()]
            if p.name.startswith(".") and p.name != ".lock"
        ]
    assert files_under(outside) == before and not (outside / "pwned").exists()


def test_falling_back_warns_about_the_damaged_checkpoint(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    unfinished(run, tmp_path)
    truncate(f"{STEP_2}/adapter/adapter_model.safetensors")(run, tmp_path)
    train.main(["--resume", str(run)])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: cannot resume from step-00000002: {run / STEP_2}/adapter/adapter_model.safetensors: "
        "not a safetensors file"
    )


def test_a_second_writer_is_refused_naming_the_first(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    unfinished(run, tmp_path)
    before = files_under(run)
    with RunFolder(run).locked():  # as another train.py, resuming, holds it
        assert exit_status(train.main, ["--resume", run]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {run}: in use by process {os.getpid()}, which writes there; wait for it to end, or "
        "choose another folder"
    ]
    assert files_under(run) == before


def test_a_report_into_a_run_in_use_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with RunFolder(run).locked():
        assert exit_status(evaluate.main, ["--checkpoint", run, "--contexts", "0"]) == 2
    assert f"error: {run}: in use by process {os.getpid()}" in capsys.readouterr().err
    assert not (run / "report").exists()


@pytest.mark.parametrize("folder", ["new", "empty"])
def test_a_failed_start_leaves_nothing(tmp_path, folder, capsys):
    out = tmp_path / "runs" / "me"
    if folder == "empty":
        out.mkdir(parents=True)
    status = exit_status(
        train.main, ["--lora", "--model", tmp_path / "no-such-model", "--data", SAMPLE, "--out", out, *FAST]
    )
    assert status == 2 and "no-such-model" in capsys.readouterr().err
    assert list(out.iterdir()) == [] if folder == "empty" else not out.exists()


def test_a_run_stopped_in_its_merge_resumes_only_the_merge(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The demo's case: no checkpoint (--save-every above the steps), stopped once the adapter was written."""
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lora, "save_model", killed)
    argv = ["--lora", "--model", tiny_checkpoint, "--data", SAMPLE, "--out", out, "--max-steps", "1", "--merge", *FAST]
    assert exit_status(train.main, argv) == 130
    assert json.loads((out / "run.json").read_text())["status"] == "trained"
    assert (
        exit_status(sample.main, ["--checkpoint", out, "--speaker", "Misha", "--prompt", "hi", "--max-new-tokens", "2"])
        == 0
    )
    adapter = files_under(out / "adapter")
    monkeypatch.undo()
    capsys.readouterr()
    assert exit_status(train.main, ["--resume", out]) == 0
    assert f"{out / 'adapter'} is final" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert (out / "merged" / "config.json").is_file() and files_under(out / "adapter") == adapter


def test_an_export_removes_what_a_killed_export_left(finished_run, tmp_path, capsys):
    leftover = tmp_path / ".me.gguf.k2_x9.tmp"
    leftover.write_bytes(b"half a model")
    assert exit_status(gguf_program.main, ["gguf", finished_run, tmp_path / "me.gguf", "--speaker", "Nobody"]) == 2
    assert not leftover.exists() and f"removed {leftover}" in capsys.readouterr().err


# The checkpoints of sharded runs (torch.distributed.checkpoint), checked without torchrun: their
# index, `.metadata`, is a pickle, and so are the optimizer's settings in the data files.


@pytest.fixture
def sharded_checkpoint(tmp_path) -> Path:
    """A checkpoint as distributed.save_checkpoint writes it, of a plain model, at step 2."""
    directory = tmp_path / "run" / STEP_2
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=directory, no_dist=True)
    torch.save(
        {"step": 2, "loss": 1.0, "scheduler": {}, "loader": {"epoch": 0, "step": 4}}, directory / "training_state.pt"
    )
    torch.save({"torch": torch.get_rng_state()}, directory / "rng-rank0.pt")
    (tmp_path / "outside").mkdir()
    return directory


def test_a_sharded_checkpoint_passes_the_checks_and_loads_through_them(sharded_checkpoint):
    distributed.check_checkpoint(sharded_checkpoint, world_size=1)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    dcp.load(
        state,
        storage_reader=distributed._CheckedReader(sharded_checkpoint),
        planner=distributed._CheckedLoadPlanner(),
        no_dist=True,
    )
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.001  # the saved settings, read back


def test_a_crafted_index_is_refused_by_name_and_runs_nothing(sharded_checkpoint):
    pwned = sharded_checkpoint.parents[2] / "outside" / "pwned"
    older = shutil.copytree(sharded_checkpoint, sharded_checkpoint.with_name("step-00000001"))
    torch.save({"step": 1, "scheduler": {}, "loader": {"epoch": 0, "step": 2}}, older / "training_state.pt")
    (sharded_checkpoint / ".metadata").write_bytes(pickle.dumps(CreatesAFile(pwned)))
    with pytest.raises(TrainingError) as refused:
        distributed.check_checkpoint(sharded_checkpoint, world_size=1)
    assert not isinstance(refused.value, DamagedCheckpoint)  # not skipped for an older one: refused
    assert str(refused.value).startswith(f"{sharded_checkpoint / '.metadata'}: refused: it names io.open")
    with pytest.raises(dcp.CheckpointException):  # nor does loading unpickle it
        dcp.load({}, storage_reader=distributed._CheckedReader(sharded_checkpoint), no_dist=True)
    assert not pwned.exists()
    # Resuming does not go on from the intact older checkpoint past a crafted one: it stops.
    distributed.check_checkpoint(older, world_size=1)
    with pytest.raises(TrainingError, match="refused"):
        resume_from(sharded_checkpoint.parents[1], lambda directory: distributed.check_checkpoint(directory, 1), print)
    assert not pwned.exists()


def test_crafted_optimizer_settings_in_the_data_files_run_nothing(sharded_checkpoint):
    pwned = sharded_checkpoint.parents[2] / "outside" / "pwned"
    metadata = distributed.read_checkpoint_metadata(sharded_checkpoint / ".metadata")
    [entry] = [info for index, info in metadata.storage_data.items() if index.fqn == "optimizer.param_groups.0.lr"]
    payload = pickle.dumps(CreatesAFile(pwned))
    data_file = sharded_checkpoint / entry.relative_path
    content = bytearray(data_file.read_bytes())
    content[entry.offset : entry.offset + entry.length] = payload.ljust(entry.length, b".")
    data_file.write_bytes(content)
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict()}
    with pytest.raises(dcp.CheckpointException, match="Weights only load failed"):
        dcp.load(
            state,
            storage_reader=distributed._CheckedReader(sharded_checkpoint),
            planner=distributed._CheckedLoadPlanner(),
            no_dist=True,
        )
    assert not pwned.exists()


SHARDED_DAMAGE = {
    "index truncated": (".metadata", lambda path: path.write_bytes(path.read_bytes()[:100]), "unreadable"),
    "index of another kind": (
        ".metadata",
        lambda path: path.write_bytes(pickle.dumps([1, 2])),
        "not a checkpoint index",
    ),
    "data file truncated": ("__0_0.distcp", lambda path: path.write_bytes(path.read_bytes()[:50]), "shorter than"),
    "data file missing": ("__0_0.distcp", lambda path: path.unlink(), "not a data file beside it"),
    "data file a link": (
        "__0_0.distcp",
        lambda path: (path.rename(path.with_name("moved")), path.symlink_to(path.with_name("moved"))),
        "not a data file",
    ),
    "rng state missing": ("rng-rank0.pt", lambda path: path.unlink(), "rng-rank0.pt: unreadable"),
    "training state of another step": (
        "training_state.pt",
        lambda path: torch.save({"step": 1, "scheduler": {}, "loader": {"epoch": 0, "step": 0}}, path),
        "not the training state of step 2",
    ),
}


@pytest.mark.parametrize("name", SHARDED_DAMAGE)
def test_a_damaged_sharded_checkpoint_is_named(name, sharded_checkpoint):
    file, damage, says = SHARDED_DAMAGE[name]
    damage(sharded_checkpoint / file)
    with pytest.raises(DamagedCheckpoint, match=says):
        distributed.check_checkpoint(sharded_checkpoint, world_size=1)


def test_an_index_naming_files_outside_its_folder_is_refused(sharded_checkpoint):
    metadata = distributed.read_checkpoint_metadata(sharded_checkpoint / ".metadata")
    for info in metadata.storage_data.values():
        info.relative_path = "../../../outside/secret"
    (sharded_checkpoint.parents[2] / "outside" / "secret").write_bytes(b"x" * 100_000)
    (sharded_checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(DamagedCheckpoint, match="not a data file beside it"):
        distributed.check_checkpoint(sharded_checkpoint, world_size=1)
