"""training/tracking.py: --log-to sends metrics.jsonl's records and the final figures to TensorBoard or
Trackio; a tracker that is not installed is refused in one line naming its package."""

import importlib.util
import sys
from types import SimpleNamespace

import pytest

from training import tracking
from training.loop import MetricsLog
from training.settings import build_parser


def test_numbers_are_flattened_by_path_without_text_steps_or_slashes_from_names():
    record = {"step": 3, "loss": 2.5, "target": "Ann", "ok": True, "report": {"loss": {"A/B": 1.0, "C": None}}}
    assert tracking.numbers_of(record) == {"loss": 2.5, "report/loss/A\u2215B": 1.0}


def test_a_tracker_not_installed_is_refused_naming_its_package_and_an_unknown_one_by_argparse(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        tracking.TrackerMissing,
        match=r"^--log-to trackio: needs the package trackio, which is "
        r"not installed \(pip install trackio\)$",
    ):
        tracking.check_installed("trackio")
    assert build_parser().parse_args(["--log-to", "tensorboard, trackio"]).log_to == "tensorboard,trackio"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-to", "mlflow"])
    assert "choose from tensorboard, trackio" in capsys.readouterr().err


def test_tensorboard_gets_every_record_and_a_resumed_run_drops_what_came_after_its_step(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for after_step, steps in [(0, [1, 2, 3]), (1, [2])]:  # the second attempt resumes from step 1
        metrics = MetricsLog(tmp_path / "metrics.jsonl", after_step, [tracking.TensorBoard(tmp_path, after_step)])
        for step in steps:
            metrics.write({"step": step, "loss": 4.0 - step, "lr": 1e-3})
        metrics.track({"run": {"eval_loss": 1.5}}, steps[-1])
        metrics.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss")] == [(1, 3.0), (2, 2.0)]
    assert {"lr", "run/eval_loss"} <= set(events.Tags()["scalars"])
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_trackio_gets_the_settings_that_name_no_one_and_every_record(tmp_path, monkeypatch):
    calls = []
    run = SimpleNamespace(log=lambda numbers, step: calls.append((step, numbers)))
    fake = SimpleNamespace(init=lambda **options: calls.append(options) or run, finish=lambda: calls.append("end"))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    settings = {"lr": 1e-3, "target": "Ann", "data": "/home/ann/export", "exclude_speakers": "Bob", "seed": 1}
    metrics = MetricsLog(tmp_path / "metrics.jsonl", 0, tracking.open_trackers("trackio", tmp_path / "me", settings, 0))
    metrics.write({"step": 1, "loss": 2.0})
    metrics.close()
    assert calls == [
        {"project": "twin", "name": "me", "config": {"lr": 1e-3, "seed": 1}, "resume": "allow", "embed": False},
        (1, {"loss": 2.0}),
        "end",
    ]
