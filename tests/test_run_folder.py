"""training.run_folder: one record per run, OUT/run.json, running then finished; runs of the earlier layout
(run_args.json, and run.json without a status) read too. Whole runs against damaged folders:
tests/test_hostile_runs.py."""
import json
from pathlib import Path

import pytest

from model.checkpoint import CheckpointError
from training.run_folder import find_record, read_finished_record, read_record, write_finished, write_started

SETTINGS = {"model": "base", "data": "export/", "seq_len": 256, "lora_targets": "q,v"}
FIGURES = {"steps": 3, "target": "Ann", "partners": {"Ann": "Bob", "Bob": "Ann"}}


def test_a_run_is_recorded_running_then_finished(tmp_path):
    write_started(tmp_path, SETTINGS)
    started = read_record(tmp_path)
    assert not started.finished and started.settings == SETTINGS and started.file == tmp_path / "run.json"
    assert started.args.seq_len == 256 and started.args.lora_r == 32  # today's default for what is not recorded
    write_finished(tmp_path, "lora", SETTINGS, FIGURES)
    finished = read_finished_record(tmp_path)
    assert finished.finished and finished.figures == FIGURES
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]


def test_an_unfinished_run_is_not_read_as_finished(tmp_path):
    write_started(tmp_path, SETTINGS)
    with pytest.raises(CheckpointError, match="run.json: the run has not finished; continue it with: python train.py "
                                              f"--resume {tmp_path}"):
        read_finished_record(tmp_path)


def test_a_folder_without_a_record(tmp_path):
    assert find_record(tmp_path) is None
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'run.json'}: missing; is {tmp_path} a train.py run"):
        read_record(tmp_path)


def write(path: Path, content) -> None:
    path.write_text(json.dumps(content))


def test_a_finished_run_of_the_earlier_layout(tmp_path):
    write(tmp_path / "run_args.json", SETTINGS)
    write(tmp_path / "run.json", {"mode": "lora", "settings": SETTINGS, "figures": FIGURES})
    record = read_finished_record(tmp_path)
    assert record.file == tmp_path / "run.json" and record.figures == FIGURES and record.args.model == "base"


def test_an_unfinished_run_of_the_earlier_layout(tmp_path):
    write(tmp_path / "run_args.json", SETTINGS)
    record = read_record(tmp_path)
    assert not record.finished and record.file == tmp_path / "run_args.json" and record.args.data == "export/"
    write_finished(tmp_path, "lora", SETTINGS, FIGURES)  # the resumed run finishes in the one record
    assert read_finished_record(tmp_path).file == tmp_path / "run.json"


@pytest.mark.parametrize("record, message", [
    ({"status": "running"}, "not a train.py run record"),
    ({"status": "done", "settings": SETTINGS}, "not a train.py run record"),
    ({"status": "finished", "settings": SETTINGS, "figures": {"partners": {"Ann": 1}}}, "not a train.py run record"),
    ({"status": "running", "settings": {**SETTINGS, "seq_len": "long"}}, "--seq-len"),
    ({"status": "running", "settings": {"model": "base"}}, "records no --data"),
])
def test_a_damaged_record_names_its_file(tmp_path, record, message):
    write(tmp_path / "run.json", record)
    with pytest.raises(CheckpointError) as error:
        find_record(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'run.json'}: ") and message in str(error.value)
