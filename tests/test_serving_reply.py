"""serving.reply: a client sees the turn's messages joined by newlines, cut at a stop string, never taken back."""

import pytest

from serving.reply import ReplyText, held_back


def feed(pieces: list[str], stop: list[str] = ()) -> tuple[ReplyText, list[str]]:
    text, shown = ReplyText(list(stop)), []
    for piece in pieces:
        shown.append(text.add(piece))
        if text.stopped:
            break
    shown.append(text.finish())
    return text, shown


def test_messages_are_joined_by_newlines_and_shown_only_when_final():
    text, shown = feed([">", ">> hi", " there\n", ">>", "> how", " are you?"])
    assert shown == ["", "hi", " there", "", "\nhow", " are you?", ""]
    assert text.messages == ["hi there", "how are you?"] and "".join(shown) == "hi there\nhow are you?"


def test_a_line_that_is_not_a_new_message_stays_in_its_message():
    text, shown = feed([">>> line one\n", "line two\n", ">> not a marker"])
    assert text.messages == ["line one\nline two\n>> not a marker"] and "".join(shown) == text.messages[0]


@pytest.mark.parametrize("pieces", [[">>> ok, bye!", "\n>>> more"], [">>> ok, b", "ye", "!\n>>> more"]])
def test_a_stop_string_ends_the_reply_before_it_even_across_pieces(pieces):
    text, shown = feed(pieces, stop=["bye!"])
    assert text.stopped and "".join(shown) == "ok, " and text.messages == ["ok, "]


def test_a_stop_string_can_end_a_message_and_drops_the_rest():
    text, shown = feed([">>> first\n>>> second\n>>> third"], stop=["\n"])
    assert "".join(shown) == "first" and text.messages == ["first"]


def test_a_held_start_of_a_stop_string_is_shown_when_it_turns_out_not_to_be_one():
    text, shown = feed([">>> en", "d of story? no, endless"], stop=["end."])
    assert shown[0] == "" and "".join(shown) == "end of story? no, endless" and not text.stopped


def test_held_back_counts_the_longest_start_of_a_marker():
    assert held_back("abc\n>>", ["\n>>> "]) == 3
    assert held_back("abc", ["\n>>> "]) == 0 and held_back("abc\n>>> ", ["\n>>> "]) == 0  # a whole marker is no start


@pytest.mark.parametrize(
    "pieces",
    [[">>> читал, едет, проверила\n>>>"], [">>> читал, едет, проверила\n>", ">>"], [">>> читал, едет, проверила\n"]],
)
def test_a_reply_cut_short_never_ends_in_a_part_of_the_marker(pieces):
    text, shown = feed(pieces)
    assert text.messages == ["читал, едет, проверила"] and "".join(shown) == "читал, едет, проверила"


def test_a_reply_cut_inside_its_first_marker_is_empty():
    text, shown = feed([">>"])
    assert text.messages == [] and "".join(shown) == ""


def test_held_back_takes_time_linear_in_a_long_marker():
    # Comparing every start of a 200,000-character marker with the text's end took minutes; this takes a blink.
    marker = "Ж" * 200_000
    assert held_back("a" + "Ж" * 199_999, [marker]) == 199_999
    assert held_back("Ж" * 300_000, [marker]) == 199_999 and held_back("Ж" * 1000 + "a", [marker]) == 0
    assert held_back("abab", ["ababc", "bx"]) == 4 and held_back("aab", ["aabaab"]) == 3
