"""core.run_folder and training.run_folder: one record per run, OUT/run.json, running, trained, then
finished; runs of the earlier layout (run_args.json, and run.json without a status) read too; one writer
at a time. Whole runs against damaged folders: tests/test_hostile_runs.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.run_folder import FINISHED, RUNNING, TRAINED, RunFolder, RunFolderError
from training.settings import TrainSettings

SETTINGS = {"model": "base", "data": "export/", "seq_len": 256, "lora_targets": "q,v"}
FIGURES = {"steps": 3, "target": "Ann", "partners": {"Ann": "Bob", "Bob": "Ann"}}


def test_a_run_is_recorded_running_then_trained_then_finished(tmp_path):
    run = RunFolder(tmp_path)
    run.write_record(RUNNING, "lora", SETTINGS)
    started = run.read_record()
    assert started.status == RUNNING and not started.trained and started.settings == SETTINGS
    assert started.file == tmp_path / "run.json" and started.mode == "lora" and started.model == "base"
    settings = TrainSettings.of_run(started)  # a record of before the tree: every flag in one dict
    assert settings.data.seq_len == 256 and settings.lora.adapter.targets == ("q_proj", "v_proj")
    assert settings.lora.adapter.r == 32  # today's default for what is not recorded
    run.write_record(TRAINED, "lora", SETTINGS, FIGURES)
    assert run.read_trained_record().figures == FIGURES  # a twin opens from it: its adapter is final
    run.write_record(FINISHED, "lora", SETTINGS, FIGURES)
    assert run.read_trained_record().status == FINISHED
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]


def test_the_mode_is_read_from_the_record_not_guessed_from_the_files(tmp_path):
    run = RunFolder(tmp_path)
    run.write_record(TRAINED, "fsdp", SETTINGS, FIGURES)
    run.adapter.mkdir()  # whatever else lies there
    assert run.read_record().mode == "fsdp"
    run.write_record(TRAINED, "lora", SETTINGS, FIGURES)
    run.model.mkdir()
    assert run.read_record().mode == "lora"


def test_typed_paths(tmp_path):
    run = RunFolder(tmp_path)
    assert (
        run.adapter,
        run.model,
        run.merged,
        run.metrics,
        run.loss_curves,
        run.report,
        run.checkpoints,
        run.cache,
    ) == (
        tmp_path / "adapter",
        tmp_path / "model",
        tmp_path / "merged",
        tmp_path / "metrics.jsonl",
        tmp_path / "loss_curves.png",
        tmp_path / "report",
        tmp_path / "checkpoints",
        tmp_path / "cache",
    )


def test_an_unfinished_run_is_not_read_as_trained(tmp_path):
    RunFolder(tmp_path).write_record(RUNNING, "lora", SETTINGS)
    with pytest.raises(
        RunFolderError,
        match=f"run.json: the run has not finished; continue it with: python train.py --resume {tmp_path}",
    ):
        RunFolder(tmp_path).read_trained_record()


def test_a_folder_without_a_record(tmp_path):
    assert RunFolder(tmp_path).find_record() is None
    with pytest.raises(RunFolderError, match=f"{tmp_path / 'run.json'}: missing; is {tmp_path} a train.py run"):
        RunFolder(tmp_path).read_record()


def write(path: Path, content) -> None:
    path.write_text(json.dumps(content))


def test_a_finished_run_of_the_earlier_layout(tmp_path):
    write(tmp_path / "run_args.json", SETTINGS)
    write(tmp_path / "run.json", {"mode": "lora", "settings": SETTINGS, "figures": FIGURES})
    record = RunFolder(tmp_path).read_trained_record()
    assert record.file == tmp_path / "run.json" and record.figures == FIGURES and record.model == "base"


def test_an_unfinished_run_of_the_earlier_layout(tmp_path):
    write(tmp_path / "run_args.json", {**SETTINGS, "fsdp": True})
    record = RunFolder(tmp_path).read_record()
    assert not record.trained and record.file == tmp_path / "run_args.json" and record.settings["data"] == "export/"
    assert record.mode == "fsdp"  # from its settings, as it recorded no mode
    RunFolder(tmp_path).write_record(FINISHED, "fsdp", SETTINGS, FIGURES)  # the resumed run finishes in the one record
    assert RunFolder(tmp_path).read_trained_record().file == tmp_path / "run.json"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"status": "running"}, "not a train.py run record"),
        ({"status": "done", "settings": SETTINGS}, "not a train.py run record"),
        ({"status": "finished", "mode": "qlora", "settings": SETTINGS}, "not a train.py run record"),
        (
            {"status": "finished", "settings": SETTINGS, "figures": {"partners": {"Ann": 1}}},
            "not a train.py run record",
        ),
        ({"status": "running", "settings": {"model": "base"}}, "records no --data"),
        ({"status": "running", "settings": {"model": ["base"], "data": "d"}}, "records no --model"),
    ],
)
def test_a_damaged_record_names_its_file(tmp_path, record, message):
    write(tmp_path / "run.json", record)
    with pytest.raises(RunFolderError) as error:
        RunFolder(tmp_path).find_record()
    assert str(error.value).startswith(f"{tmp_path / 'run.json'}: ") and message in str(error.value)


def test_settings_of_the_wrong_type_name_the_record_and_the_flag(tmp_path):
    write(tmp_path / "run.json", {"status": "running", "settings": {**SETTINGS, "seq_len": "long"}})
    with pytest.raises(RunFolderError, match=f"^{tmp_path / 'run.json'}: --seq-len"):
        TrainSettings.of_run(RunFolder(tmp_path).read_record())


def test_links_out_of_the_folder_are_refused(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.check_links()
    (tmp_path / "elsewhere").mkdir()
    run.report.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match=f"^{run.report}: a symbolic link"):
        run.check_links()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match=f"^--out {tmp_path / 'file'}: not a folder"):
        RunFolder(tmp_path / "file").check_links("--out")


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    run = RunFolder(tmp_path)
    with run.locked():
        with pytest.raises(RunFolderError, match=rf"^{tmp_path}: in use by process {os.getpid()}, which writes"):
            with RunFolder(tmp_path).locked():  # a lock of its own, as another process takes it
                pass
    with run.locked():  # let go of at the end of the block
        pass


def test_a_lock_is_let_go_of_when_its_process_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from core.run_folder import RunFolder\n"
            f"with RunFolder({str(tmp_path)!r}).locked():\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            with RunFolder(tmp_path).locked():
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(tmp_path).locked():  # killed, it holds nothing
        pass


def test_a_linked_lock_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match=r"\.lock: cannot be opened as the run's lock"):
        with RunFolder(tmp_path).locked():
            pass
    assert (tmp_path / "elsewhere").read_text() == "keep"
