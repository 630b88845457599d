"""data.json_stream: Telegram Desktop's \\xHH escapes become JSON's \\u00HH, and nothing else changes. Reading
whole exports through it, chunk boundaries included, is tested in test_telegram.py."""

import pytest

from data.json_stream import repair_hex_escapes


@pytest.mark.parametrize(
    "raw, repaired",
    [
        (r"\x0B", r"\u000B"),
        (r"a\x1fb\x07", r"a\u001fb\u0007"),
        (r"\\x41", r"\\x41"),  # an escaped backslash, then a plain "x41"
        (r"\\\x41", r"\\\u0041"),  # an escaped backslash, then \x41
        (r"\"\x41", r"\"\u0041"),
        (r"\xZZ \x4", r"\xZZ \x4"),  # not an escape: left for the JSON parser to reject
        ("no escapes", "no escapes"),
    ],
)
def test_repair_hex_escapes(raw, repaired):
    assert repair_hex_escapes(raw) == repaired
