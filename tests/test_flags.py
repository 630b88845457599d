"""core.flags: every field of a settings dataclass becomes a flag with its type, default and help; a field
without a help text fails as soon as a parser is built."""

import argparse
import json
from dataclasses import dataclass, fields, is_dataclass, make_dataclass

import pytest

import evaluate
import sample
from core.flags import (
    SettingsError,
    add_arguments,
    from_args,
    from_dict,
    not_a_flag,
    positive_int,
    section,
    setting,
    to_dict,
)
from core.run_folder import RUNNING, RunFolder
from data.settings import DataConfig
from fidelity.plan import REPLY_TOKENS
from model.generation import SamplingConfig
from model.lora_config import LoRAConfig
from training import settings


@dataclass
class Example:
    count: int = setting(3, "how many")
    share: float = setting(0.5, "a fraction")
    name: str | None = setting(None, "a name (default: none)")
    mode: str = setting("fast", "how", choices=("fast", "slow"))
    verbose: bool = setting(False, "say more")
    report: bool = setting(True, "write the report (default: on)")
    steps: int | None = setting(None, "at most this many (default: all)", type=positive_int)
    words: tuple[str, ...] = setting(
        ("a", "b"), "comma-separated words", parse=lambda text: tuple(text.split(",")), text=",".join
    )
    cache: dict = not_a_flag(default_factory=dict)


def parser_of(settings: type, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, settings, **options)
    return parser


def test_every_field_is_a_flag_with_its_default_in_help():
    text = parser_of(Example).format_help()
    for flag, default in (
        ("--count", "(default: 3)"),
        ("--share", "(default: 0.5)"),
        ("--mode", "(default: fast)"),
        ("--verbose", "(default: off)"),
        ("--report", "(default: on)"),
        ("--words", "(default: a,b)"),
    ):
        assert flag in text and default in text, flag
    assert "--cache" not in text
    args = parser_of(Example).parse_args([])
    assert from_args(Example, args) == Example()


def test_flags_parse_to_their_types_and_into_the_dataclass():
    argv = [
        "--count",
        "7",
        "--share",
        "0.25",
        "--name",
        "Misha",
        "--mode",
        "slow",
        "--verbose",
        "--no-report",
        "--steps",
        "4",
        "--words",
        "x,y,z",
    ]
    config = from_args(Example, parser_of(Example).parse_args(argv), cache={"k": 1})
    assert config == Example(
        count=7,
        share=0.25,
        name="Misha",
        mode="slow",
        verbose=True,
        report=False,
        steps=4,
        words=("x", "y", "z"),
        cache={"k": 1},
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--count", "many"], "argument --count: invalid int value: 'many'"),
        (["--mode", "medium"], "argument --mode: invalid choice: 'medium'"),
        (["--steps", "0"], "argument --steps: must be 1 or more, got 0"),
        (["--verbose", "1"], "unrecognized arguments: 1"),  # an on/off flag takes no value
    ],
)
def test_a_bad_value_is_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser_of(Example).parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_prefix_and_program_defaults():
    args = parser_of(Example, prefix="ex_", defaults={"count": 9}).parse_args(["--ex-share", "1"])
    assert args.ex_count == 9 and from_args(Example, args, prefix="ex_").share == 1.0


def test_a_field_without_help_fails_when_the_parser_is_built():
    @dataclass
    class Careless:
        documented: int = setting(1, "fine")
        forgotten: int = 2

    with pytest.raises(TypeError, match="Careless.forgotten: a setting needs a help text"):
        parser_of(Careless)


@pytest.mark.parametrize(
    "settings_type",
    [
        DataConfig,
        LoRAConfig,
        SamplingConfig,
        *[
            value
            for value in vars(settings).values()
            if isinstance(value, type) and is_dataclass(value) and value.__module__ == settings.__name__
        ],
    ],
)
def test_every_settings_dataclass_declares_its_fields(settings_type):
    assert all("flag" in field.metadata for field in fields(settings_type))
    parser_of(settings_type)


def test_the_programs_flags_are_the_dataclasses_defaults():
    trained = from_args(settings.TrainSettings, settings.build_parser().parse_args([]))
    assert trained == settings.TrainSettings()
    assert trained.data == DataConfig() and trained.lora.adapter == LoRAConfig()
    assert from_args(SamplingConfig, sample.build_parser().parse_args([])) == SamplingConfig()
    evaluated = from_args(SamplingConfig, evaluate.build_parser().parse_args([]))
    assert evaluated == SamplingConfig(max_new_tokens=REPLY_TOKENS)


@dataclass
class Inner:
    depth: int = setting(2, "how deep")
    once: bool = setting(False, "only this time", recorded=False)


@dataclass
class Tree:
    inner: Inner = section(Inner, "inner things", prefix="in_")
    example: Example = section(Example, "examples", defaults={"count": 9})
    top: str = setting("t", "at the top")


def test_a_tree_is_one_call_each_way_and_its_record_reads_back():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Tree)
    titles = [group.title for group in parser._action_groups]
    assert "inner things" in titles and "examples" in titles
    tree = from_args(Tree, parser.parse_args(["--in-depth", "5", "--in-once", "--words", "x,y", "--top", "u"]))
    assert tree == Tree(Inner(5, True), Example(count=9, words=("x", "y")), "u")
    recorded = json.loads(json.dumps(to_dict(tree)))  # as a file holds it
    assert recorded["inner"] == {"depth": 5} and recorded["example"]["words"] == "x,y"  # no one-time setting
    assert from_dict(Tree, recorded) == Tree(Inner(5, False), Example(count=9, words=("x", "y")), "u")
    assert from_dict(Tree, {}) == Tree()  # a record older than every setting: today's defaults
    assert from_dict(Tree, {"in_depth": 7, "top": "v"}, flat=True) == Tree(Inner(7), top="v")  # before the tree


@pytest.mark.parametrize(
    "recorded, message",
    [
        ({"inner": {"depth": "deep"}}, '--in-depth: "deep" is refused'),
        ({"example": {"mode": "medium"}}, '--mode: "medium" is not one of fast, slow'),
        ({"example": {"verbose": 1}}, "--verbose: 1 is not true or false"),
        ({"inner": [1]}, "inner: [1] is not a group of settings"),
    ],
)
def test_a_recorded_value_is_checked_as_its_flag_would_check_it(recorded, message):
    with pytest.raises(SettingsError) as error:
        from_dict(Tree, recorded)
    assert str(error.value).startswith(message)


def test_a_new_setting_is_one_field_of_one_dataclass(tmp_path):
    """A newcomer's setting: one field, written on the dataclass of its section (here a subclass stands for
    the edited training.settings.Cadence). Its flag, its place in the tree, in run.json and in a resumed run
    follow from it."""

    @dataclass
    class Cadence(settings.Cadence):
        eval_samples: int = setting(8, "replies written at each evaluation")

    tree_type = make_dataclass(
        "TrainSettings", [("cadence", Cadence, section(Cadence, "run"))], bases=(settings.TrainSettings,)
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser, tree_type)
    assert "--eval-samples EVAL_SAMPLES replies written at each evaluation (default: 8)" in " ".join(
        parser.format_help().split()
    )
    tree = from_args(tree_type, parser.parse_args(["--data", "d", "--eval-samples", "3"]))
    assert tree.cadence.eval_samples == 3 and tree.cadence.eval_every == 100
    run = RunFolder(tmp_path)
    run.write_record(RUNNING, tree.mode, to_dict(tree))
    assert json.loads(run.record_file.read_text())["settings"]["cadence"]["eval_samples"] == 3
    assert tree_type.of_run(run.read_record()) == tree
