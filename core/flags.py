"""Command-line flags built from dataclasses: a setting's default, help text and type are written once,
on its dataclass field, and the flag follows from them.

    @dataclass
    class SamplingConfig:
        temperature: float = setting(0.7, "0: greedy")

    add_arguments(parser.add_argument_group("sampling"), SamplingConfig)   # --temperature, with its default
    config = from_args(SamplingConfig, parser.parse_args())

A field is a flag named after it (`top_p` is --top-p, after an optional prefix) unless it is marked
`not_a_flag()`. The help text is required: a field with neither fails at once, when a parser is built.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any


def positive_int(text: str) -> int:
    """A flag's value of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A flag's value of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def setting(
    default: Any,
    help: str,
    *,
    choices: typing.Sequence | None = None,
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    text: Callable[[Any], str] | None = None,
) -> Any:
    """A dataclass field that is also a flag.

    help: what the setting does; "(default: ...)" is added unless the text speaks of its default itself.
    type: the flag's converter, where the field's type is not one (default: the annotation: int, float, str).
    parse, text: for a field whose value is not what the command line says (a tuple given as "q,k,v"):
    text turns the default into the flag's words, parse turns the flag's words into the value."""
    options = {"help": help, "choices": choices, "type": type, "metavar": metavar, "parse": parse, "text": text}
    return dataclasses.field(default=default, metadata={"flag": {k: v for k, v in options.items() if v is not None}})


def not_a_flag(**field_options) -> Any:
    """A dataclass field set in code, never on the command line (field_options: as dataclasses.field's)."""
    return dataclasses.field(**field_options, metadata={"flag": None})


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    prefix: str = "",
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per field of the dataclass `settings`, named --PREFIX-FIELD-NAME; `defaults` overrides some
    fields' defaults, for a program whose defaults differ. Raises TypeError for a field without a help text."""
    hints = typing.get_type_hints(settings)
    for field in flag_fields(settings):
        flag = field.metadata["flag"]
        default = (defaults or {}).get(field.name, field.default)
        if "text" in flag and default is not None:
            default = flag["text"](default)
        kind = _plain_type(hints[field.name])
        name = "--" + (prefix + field.name).replace("_", "-")
        options = {key: flag[key] for key in ("choices", "metavar") if key in flag}
        help = flag["help"]
        if kind is bool:
            off = default is False
            action = "store_true" if off else argparse.BooleanOptionalAction
            help += " (default: off)" if off and "default" not in help else ""
            parser.add_argument(name, action=action, default=default, help=help, **options)
            continue
        if "default" not in help and default is not None:
            help += " (default: %(default)s)"
        converter = flag.get("type", kind if kind in (int, float) else None)
        parser.add_argument(name, type=converter, default=default, help=help, **options)


def from_args(settings: type, args: argparse.Namespace, prefix: str = "", **given: Any) -> Any:
    """The dataclass `settings` from parsed flags (those add_arguments made with the same prefix); `given`
    sets the fields that are no flag."""
    values = {}
    for field in flag_fields(settings):
        value = getattr(args, prefix + field.name)
        parse = field.metadata["flag"].get("parse")
        values[field.name] = parse(value) if parse and value is not None else value
    return settings(**values, **given)


def flag_fields(settings: type) -> list[dataclasses.Field]:
    """The fields of `settings` that are flags; TypeError names a field that is neither a flag with a help
    text nor marked not_a_flag()."""
    fields = []
    for field in dataclasses.fields(settings):
        flag = field.metadata.get("flag", {})
        if flag is not None and not flag.get("help"):
            raise TypeError(
                f"{settings.__name__}.{field.name}: a setting needs a help text: declare it with "
                "core.flags.setting(default, help), or not_a_flag()"
            )
        if flag is not None:
            fields.append(field)
    return fields


def _plain_type(hint: Any) -> Any:
    """int for `int | None`, and so on: what a flag's words are converted to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return hint
