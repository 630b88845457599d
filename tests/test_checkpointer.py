"""training/checkpointer.py: --keep-best keeps the checkpoint of the lowest held-out loss, across a resume."""

import json
import math

from core.run_folder import checkpoint_path, checkpoints
from training.checkpointer import Checkpointer


class FolderBackend:
    """Checkpoints as empty folders; remembers which one's weights were loaded."""

    def __init__(self):
        self.loaded = None

    def save(self, directory, state):
        directory.mkdir(parents=True)

    def resume(self, out, warn):
        return checkpoints(out)[-1], {"step": int(checkpoints(out)[-1].name[5:])}

    def load_weights(self, directory):
        self.loaded = directory


def evaluation(step: int, loss: float) -> dict:
    return {"step": step, "eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_tokens": 10}


def test_keep_best_saves_better_evaluations_spares_the_best_from_pruning_and_ends_with_it(tmp_path):
    checkpointer = Checkpointer(tmp_path, FolderBackend(), every=2, keep=1, keep_best=True)
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 1.5)]:
        if checkpointer.due(step, evaluation(step, loss)):
            checkpointer.save(step, {"step": step}, evaluation(step, loss))
    assert [path.name for path in checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    assert json.loads((tmp_path / "checkpoints" / "best.json").read_text())["step"] == 2

    resumed = Checkpointer(tmp_path, FolderBackend(), every=2, keep=1, keep_best=True)
    resumed.resume(print)
    assert resumed.best == evaluation(2, 1.0) and not resumed.due(5, evaluation(5, 1.5))
    assert resumed.load_best(evaluation(6, 1.2)) == evaluation(2, 1.0)
    assert resumed.backend.loaded == checkpoint_path(tmp_path, 2)
    better_last = Checkpointer(tmp_path, FolderBackend(), every=2, keep=1, keep_best=True)
    better_last.resume(print)
    assert better_last.load_best(evaluation(6, 0.5)) == evaluation(6, 0.5) and better_last.backend.loaded is None


def test_without_keep_best_evaluations_save_nothing_and_a_damaged_best_json_is_none(tmp_path):
    checkpointer = Checkpointer(tmp_path, FolderBackend(), every=0, keep=1)
    assert not checkpointer.due(1, evaluation(1, 1.0))
    keeping = Checkpointer(tmp_path, FolderBackend(), every=0, keep=1, keep_best=True)
    keeping.save(1, {"step": 1}, evaluation(1, 1.0))
    (tmp_path / "checkpoints" / "best.json").write_text('{"step": "../../etc", "eval_loss": 1.0}')
    keeping.resume(print)
    assert keeping.best is None
