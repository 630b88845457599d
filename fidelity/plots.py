"""The report's pictures, as PNG bytes: a run's loss curves, and where each speaker's style falls
between the floor of other people and the ceiling of the person themselves.

matplotlib is imported only here, when a picture is drawn, with its file-only Agg backend (no display).
"""
import io
import json
import math
import warnings
from pathlib import Path

from fidelity.calibration import Placement

SHOWN_POSITIONS = (-2.0, 3.0)  # positions beyond are drawn at these edges: a scale that fits 0 to 1 well
MODEL_MARKS = {"base": ("o", "tab:gray"), "tuned": ("D", "tab:blue")}


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl; a line that is not a JSON object (a torn last line) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and _is_number(record.get("step")):
            records.append(record)
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph the font lacks (an emoji in a name) is drawn as a box, not a warning
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _shown(position: float) -> float:
    low, high = SHOWN_POSITIONS
    return min(max(position, low), high)


def loss_curves_png(records: list[dict]) -> bytes | None:
    """Training loss per step and held-out loss at each evaluation; None when the records hold neither."""
    curves = {label: [(record["step"], record[key]) for record in records if _is_number(record.get(key))]
              for label, key in (("training", "loss"), ("held-out", "eval_loss"))}
    if not any(curves.values()):
        return None
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 3.5))
    for (label, points), style in zip(curves.items(), ("-", "o-")):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, style, label=f"{label} loss", markersize=4)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy per token")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def style_positions_png(speakers: dict[str, dict[str, dict[str, Placement]]]) -> bytes | None:
    """For each speaker (title -> statistic label -> model name -> placement), each statistic's position
    of each model with its 95% interval, on a scale from the floor (0) to the ceiling (1). Statistics
    without a position are left out; None when no speaker has any."""
    rows = {title: {label: models for label, models in statistics.items()
                    if all(placement.position is not None for placement in models.values())}
            for title, statistics in speakers.items()}
    rows = {title: statistics for title, statistics in rows.items() if statistics}
    if not rows:
        return None
    pyplot = _pyplot()
    heights = [len(statistics) + 1 for statistics in rows.values()]
    figure, panels = pyplot.subplots(len(rows), 1, figsize=(7.5, 0.42 * sum(heights) + 0.6), squeeze=False,
                                     gridspec_kw={"height_ratios": heights})
    low_edge, high_edge = SHOWN_POSITIONS
    for axes, (title, statistics) in zip(panels[:, 0], rows.items()):
        axes.axvspan(0, 1, color="tab:green", alpha=0.08)
        for edge in (0, 1):
            axes.axvline(edge, color="tab:green", linewidth=0.8)
        for offset, (name, (marker, color)) in zip((-0.15, 0.15), MODEL_MARKS.items()):
            placed = [(row + offset, models[name]) for row, models in enumerate(statistics.values()) if name in models]
            if not placed:
                continue
            y = [row for row, _ in placed]
            x = [_shown(placement.position) for _, placement in placed]
            errors = [[max(0.0, x_value - _shown(placement.low)) for x_value, (_, placement) in zip(x, placed)],
                      [max(0.0, _shown(placement.high) - x_value) for x_value, (_, placement) in zip(x, placed)]]
            axes.errorbar(x, y, xerr=errors, fmt=marker, color=color, label=name, capsize=2, markersize=5)
        axes.set_yticks(range(len(statistics)), list(statistics))
        axes.set_ylim(len(statistics) - 0.5, -0.5)
        axes.set_xlim(low_edge - 0.1, high_edge + 0.1)
        axes.set_title(title, loc="left", fontsize=10, parse_math=False)  # a name is text, even with $ in it
        axes.grid(axis="x", alpha=0.3)
    panels[0, 0].legend(loc="lower right", fontsize=8)
    panels[-1, 0].set_xlabel(f"position: 0 = other people (floor), 1 = the person's own other turns (ceiling); "
                             f"clipped to {low_edge:g}..{high_edge:g}")
    return _png(figure)
