"""The report's pictures, as PNG bytes: a run's loss curves, and where each speaker's style falls
between the floor of other people and the ceiling of the person themselves.

matplotlib is imported only here, when a picture is drawn, with its file-only Agg backend (no display).
"""

import io
import json
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from fidelity.calibration import Placement
from fidelity.report import LIKE_THEM

SHOWN_POSITIONS = (-2.0, 3.0)  # positions beyond are drawn at these edges: a scale that fits 0 to 1 well
MODEL_MARKS = {"base": ("o", "tab:gray"), "tuned": ("D", "tab:blue")}
REASON_WIDTH = 80  # characters a line of a row's reason for having no position: what a panel holds at 8 points


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


def loss_curves_png(records: list[dict], base_loss: float | None = None) -> bytes | None:
    """Training loss per step and held-out loss at each evaluation, with the base model's held-out loss
    as a line where it is known; None when the records hold neither curve."""
    curves = {
        label: [(record["step"], record[key]) for record in records if _is_number(record.get(key))]
        for label, key in (("training", "loss"), ("held-out", "eval_loss"))
    }
    if not any(curves.values()):
        return None
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 3.5))
    for (label, points), style in zip(curves.items(), ("-", "o-")):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, style, label=f"{label} loss", markersize=4)
    if base_loss is not None:
        axes.axhline(
            base_loss,
            color="tab:gray",
            linestyle="--",
            label=f"base model's held-out loss ({base_loss:.2f}, the report's speakers)",
        )
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy per token")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


@dataclass
class StyleRowShown:
    """One row of the style picture: a label, the raw values beside it, and each model's placement."""

    label: str
    values: str  # "real 58% · base 99% · tuned 97%"
    placements: dict[str, Placement]  # model -> placement; positions None where the row has none


@dataclass
class PersonShown:
    title: str
    mean: dict[str, Placement] | None  # model -> mean position; None with `no_position`
    no_position: str  # why there is no position, or ""
    rows: list[StyleRowShown]


def style_positions_png(people: list[PersonShown]) -> bytes | None:
    """The style picture: first one point per person (the mean position of each model, with its 95%
    interval), then each person's statistics, their raw values (real, base, tuned) written beside their
    positions. Positions run from the floor of other people (0) to the person's own other turns (1); one
    beyond the drawn scale stands at its edge as a triangle with its value written beside it. None when no
    person has a position."""
    placed = [person for person in people if person.mean]
    if not placed:
        return None
    pyplot = _pyplot()
    heights = [len(people) + 0.6] + [len(person.rows) + 0.6 for person in placed]
    figure, panels = pyplot.subplots(
        len(heights),
        1,
        figsize=(8.5, 0.5 * sum(heights) + 1.2),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    summary = [(person.title, person.mean, person.no_position) for person in people]
    _position_panel(
        panels[0, 0],
        [title for title, _, _ in summary],
        [mean for _, mean, _ in summary],
        [reason for _, _, reason in summary],
    )
    panels[0, 0].axvline(LIKE_THEM, color="tab:green", linestyle="--", linewidth=0.8)
    panels[0, 0].set_title(
        f"each person: mean position over the statistics (95% interval); dashed: {LIKE_THEM}, the verdict's line",
        loc="left",
        fontsize=10,
    )
    panels[0, 0].legend(loc="lower right", fontsize=8)
    for axes, person in zip(panels[1:, 0], placed):
        _position_panel(
            axes,
            [f"{row.label}\n{row.values}" for row in person.rows],
            [row.placements for row in person.rows],
            [
                "" if row.placements["tuned"].position is not None else "does not tell them from others"
                for row in person.rows
            ],
        )
        axes.set_title(person.title, loc="left", fontsize=10, parse_math=False)  # a name is text, even with $ in it
    low, high = SHOWN_POSITIONS
    panels[-1, 0].set_xlabel(
        f"position: 0 = other people (floor), 1 = the person's own other turns (ceiling); "
        f"▶ ◀ beyond {low:g}..{high:g}, value beside"
    )
    return _png(figure)


def _clipped_mark(axes, edge: float, values: list[float], y: float, color: str, size: float) -> None:
    """Values beyond the drawn scale: a triangle at its edge, pointing out, the values written above."""
    low = edge == SHOWN_POSITIONS[0]
    axes.plot(edge, y, "<" if low else ">", color=color, markersize=size)
    axes.annotate(
        " / ".join(f"{value:.1f}" for value in values),
        (edge, y),
        xytext=(4 if low else -4, 4),
        textcoords="offset points",
        fontsize=7,
        color=color,
        ha="left" if low else "right",
    )


def _position_panel(axes, labels: list[str], rows: list[dict[str, Placement] | None], reasons: list[str]) -> None:
    """Rows of positions with intervals; a row without a position shows its reason instead."""
    low_edge, high_edge = SHOWN_POSITIONS
    axes.axvspan(0, 1, color="tab:green", alpha=0.08)
    for edge in (0, 1):
        axes.axvline(edge, color="tab:green", linewidth=0.8)
    labelled = set()  # models already in the legend
    for offset, (name, (marker, color)) in zip((-0.15, 0.15), MODEL_MARKS.items()):
        for row, placements in enumerate(rows):
            placement = placements and placements.get(name)
            if not placement or placement.position is None:
                continue
            y = row + offset
            low, high = (max(low_edge, min(high_edge, value)) for value in (placement.low, placement.high))
            axes.plot([low, high], [y, y], color=color, linewidth=1.2)
            for beyond, edge in (
                (lambda value: value < low_edge, low_edge),
                (lambda value: value > high_edge, high_edge),
            ):
                values = [value for value in (placement.position, placement.low, placement.high) if beyond(value)]
                if values:
                    _clipped_mark(axes, edge, values, y, color, size=8 if beyond(placement.position) else 4)
            if low_edge <= placement.position <= high_edge:
                axes.plot(
                    placement.position, y, marker, color=color, markersize=5, label=None if name in labelled else name
                )
                labelled.add(name)
    for row, reason in enumerate(reasons):
        if reason:
            # centred in the panel (x in the axes' width), in lines that fit it
            axes.text(
                0.5,
                row,
                textwrap.fill(reason, REASON_WIDTH),
                transform=axes.get_yaxis_transform(),
                ha="center",
                va="center",
                fontsize=8,
                color="tab:gray",
                style="italic",
            )
    axes.set_yticks(range(len(labels)), labels, fontsize=8, parse_math=False)  # names are text, even with $
    axes.set_ylim(len(labels) - 0.5, -0.5)
    axes.set_xlim(low_edge - 0.1, high_edge + 0.1)
    axes.grid(axis="x", alpha=0.3)
