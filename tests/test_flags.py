"""core.flags: every field of a settings dataclass becomes a flag with its type, default and help; a field
without a help text fails as soon as a parser is built."""

import argparse
from dataclasses import dataclass, fields, is_dataclass

import pytest

import evaluate
import sample
from core.flags import add_arguments, from_args, not_a_flag, positive_int, setting
from data.dataset import DataConfig
from fidelity.plan import REPLY_TOKENS
from model.generation import SamplingConfig
from model.lora import LoRAConfig
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
