"""fidelity/markdown.py: names and message text cannot change the structure of report.md."""

from data.sessions import Turn
from fidelity.markdown import cell, example_block
from fidelity.report import Example


def test_a_name_is_one_table_cell_on_one_line():
    assert cell("Misha | admin\n# Owned") == "Misha / admin # Owned"


def test_no_message_closes_the_fence_of_its_example():
    example = Example(earlier_turns=4, context=[Turn("Olga", ["look: ```", "````text"])], real=["ok"], tuned=["`````"])
    block = example_block(example, "Misha")
    fence = block[0].removesuffix("text")
    assert set(fence) == {"`"} and len(fence) == 6 and block[-1] == fence
    assert all(fence not in line for line in block[1:-1])
    assert block[1:-1] == [
        "(4 earlier turns)",
        "Olga:",
        "  look: ```",
        "  ````text",
        "Misha, real:",
        "  ok",
        "Misha, tuned:",
        "  `````",
    ]


def test_an_empty_turn_is_shown_as_nothing():
    block = example_block(Example(0, [], real=["hi"], tuned=[]), "Misha")
    assert block[1:-1] == ["Misha, real:", "  hi", "Misha, tuned:", "  (nothing)"]
