"""fidelity/plots.py: PNGs of loss curves and style positions; hostile names and metrics lines break nothing."""

from fidelity.calibration import Placement
from fidelity.plots import PersonShown, StyleRowShown, loss_curves_png, read_metrics, style_positions_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_loss_curves_from_a_metrics_file_with_a_torn_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 2, "eval_loss": 2.7}\n'
        '[1, 2]\n{"step": "x", "loss": 1}\n{"step": 3, "loss": NaN}\n{"step": 3, "lo'
    )
    records = read_metrics(metrics)
    assert [record["step"] for record in records] == [1, 2, 2, 3]
    assert loss_curves_png(records).startswith(PNG) and loss_curves_png(records, base_loss=3.2).startswith(PNG)
    assert loss_curves_png([{"step": 1, "lr": 0.1}]) is None


def test_style_positions_with_hostile_names_and_positions_off_the_scale():
    both = {
        "base": Placement(0.5, -7.0, -9.0, 1.0),
        "tuned": Placement(0.1, 1.2, 1.3, 40.0),
    }  # interval beside the point
    unplaced = {"base": Placement(0.0, None, None, None), "tuned": Placement(0.0, None, None, None)}
    rows = [
        StyleRowShown("messages per turn", "real 1.00 · base 2.00 · tuned 1.10", both),
        StyleRowShown("turns with a link", "real 0% · base 0% · tuned 0%", unplaced),
    ]
    png = style_positions_png(
        [
            PersonShown("$\\frac{1}{0 $ 🙂 (target)", both, "", rows),
            PersonShown("Катя", None, "only 3 held-out contexts, and a position needs 8", []),
        ]
    )
    assert png.startswith(PNG)
    assert style_positions_png([PersonShown("Катя", None, "only 3 held-out contexts", [])]) is None
