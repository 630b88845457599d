"""Command-line flags built from dataclasses: a setting's default, help text and type are written once,
on its dataclass field, and the flag follows from them.

    @dataclass
    class SamplingConfig:
        temperature: float = setting(0.7, "0: greedy")

    add_arguments(parser.add_argument_group("sampling"), SamplingConfig)   # --temperature, with its default
    config = from_args(SamplingConfig, parser.parse_args())

A field is a flag named after it (`top_p` is --top-p, after an optional prefix) unless it is marked
`not_a_flag()`. The help text is required: a field with neither fails at once, when a parser is built.

A program's settings are one tree of such dataclasses: a field declared with `section()` holds a whole
dataclass, whose flags go into an argument group of its title. One call adds every flag of the tree
(add_arguments), one builds the tree from the parsed flags (from_args); to_dict and from_dict write it
into a file and read it back, each value checked as its flag would have checked it. So a new setting is
one field of one dataclass: its flag, its place in the tree and in the run's record follow from it.
"""

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from core.errors import TwinError


class SettingsError(TwinError):
    """A setting, or a combination of them, that cannot be used; the message names the flags."""


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
    flag: str | None = None,
    recorded: bool = True,
) -> Any:
    """A dataclass field that is also a flag.

    help: what the setting does; "(default: ...)" is added unless the text speaks of its default itself.
    type: the flag's converter, where the field's type is not one (default: the annotation: int, float, str).
    parse, text: for a field whose value is not what the command line says (a tuple given as "q,k,v"):
    text turns the default into the flag's words, parse turns the flag's words into the value.
    flag: the flag's name where it is not the field's ("--as" for the field `user`, "-n"); a name without
    dashes, the field's, makes it a positional argument, which the command line must give.
    recorded: False for a setting of one invocation only, which to_dict leaves out (train.py's --resume)."""
    options = {"help": help, "choices": choices, "type": type, "metavar": metavar, "parse": parse, "text": text}
    options = {k: v for k, v in options.items() if v is not None}
    return dataclasses.field(default=default, metadata={"flag": {**options, "name": flag, "recorded": recorded}})


def section(
    settings: type,
    title: str | None = None,
    *,
    prefix: str = "",
    exclusive: bool = False,
    recorded: bool = True,
    defaults: dict[str, Any] | None = None,
    flags: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field that holds the settings of the dataclass `settings`, a branch of a program's tree.

    title: the argument group its flags are shown under (sections of one title share it; none: the
    enclosing one). prefix: before each of its flags' names (--lora-r). exclusive: its on/off flags
    exclude each other. recorded: as setting()'s. defaults: this program's own defaults of some fields.
    flags: the only fields of it (and of its sections, by their names) that are flags of this program; the
    others keep their defaults."""
    options = {
        "title": title,
        "prefix": prefix,
        "exclusive": exclusive,
        "recorded": recorded,
        "defaults": defaults,
        "flags": flags,
    }
    return dataclasses.field(
        default_factory=lambda: settings(**(defaults or {})), metadata={"section": options, "flag": None}
    )


def not_a_flag(**field_options) -> Any:
    """A dataclass field set in code, never on the command line (field_options: as dataclasses.field's)."""
    return dataclasses.field(**field_options, metadata={"flag": None})


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    prefix: str = "",
    defaults: dict[str, Any] | None = None,
    _groups: dict[str, argparse._ArgumentGroup] | None = None,
    _only: tuple[str, ...] | None = None,
    _root: argparse.ArgumentParser | None = None,
) -> None:
    """One flag per field of the dataclass `settings`, named --PREFIX-FIELD-NAME, and those of each of its
    sections, in their groups; `defaults` overrides some fields' defaults, for a program whose defaults
    differ. Raises TypeError for a field without a help text."""
    groups = {} if _groups is None else _groups  # title -> its argument group, made by the first section of it
    root = _root or parser  # where groups are made: argparse nests none
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if "section" in field.metadata:
            options = field.metadata["section"]
            target = parser
            if options["exclusive"]:
                target = root.add_mutually_exclusive_group()
            elif options["title"]:
                if options["title"] not in groups:
                    groups[options["title"]] = root.add_argument_group(options["title"])
                target = groups[options["title"]]
            only = options["flags"] or _only
            add_arguments(
                target, hints[field.name], prefix + options["prefix"], options["defaults"], groups, only, root
            )
    for field in flag_fields(settings, _only):
        flag = field.metadata["flag"]
        default = (defaults or {}).get(field.name, field.default)
        if "text" in flag and default is not None:
            default = flag["text"](default)
        kind = _plain_type(hints[field.name])
        dest = prefix + field.name
        name = flag["name"] or "--" + dest.replace("_", "-")
        options = {key: flag[key] for key in ("choices", "metavar") if key in flag}
        help = flag["help"]
        if kind is bool:
            off = default is False
            action = "store_true" if off else argparse.BooleanOptionalAction
            help += " (default: off)" if off and "default" not in help else ""
            parser.add_argument(name, dest=dest, action=action, default=default, help=help, **options)
            continue
        converter = flag.get("type", kind if kind in (int, float) else None)
        if not name.startswith("-"):  # a positional argument, required, named as its field
            parser.add_argument(name, type=converter, help=help, **options)
            continue
        if "default" not in help and default is not None:
            help += " (default: %(default)s)"
        parser.add_argument(name, dest=dest, type=converter, default=default, help=help, **options)


def program_parser(settings: type, description: str) -> argparse.ArgumentParser:
    """A program's parser: every flag of its settings tree, under its docstring kept as written."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, settings)
    return parser


def from_args(
    settings: type, args: argparse.Namespace, prefix: str = "", _only: tuple[str, ...] | None = None, **given: Any
) -> Any:
    """The dataclass `settings`, its sections too, from parsed flags (those add_arguments made with the same
    prefix); `given` sets the fields that are no flag."""
    values = {}
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if "section" in field.metadata:
            options = field.metadata["section"]
            values[field.name] = from_args(
                hints[field.name], args, prefix + options["prefix"], options["flags"] or _only
            )
    for field in flag_fields(settings, _only):
        value = getattr(args, prefix + field.name)
        parse = field.metadata["flag"].get("parse")
        values[field.name] = parse(value) if parse and value is not None else value
    return settings(**values, **given)


def flag_values(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Each flag of a settings tree as argparse would have parsed it (its words where it has `text`), by
    its destination: what from_args builds the same tree from."""
    values = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if "section" in field.metadata:
            values.update(flag_values(value, prefix + field.metadata["section"]["prefix"]))
        elif field.metadata.get("flag") is not None:
            text = field.metadata["flag"].get("text")
            values[prefix + field.name] = text(value) if text and value is not None else value
    return values


def to_dict(settings: Any) -> dict[str, Any]:
    """A settings tree as JSON takes it, for a file: a dict per section, each flag's value as its words
    (from_dict reads it back). Settings of one invocation only (recorded=False) and fields that are no
    flag (set in code) are left out."""
    values = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if "section" in field.metadata:
            if field.metadata["section"]["recorded"]:
                values[field.name] = to_dict(value)
        elif field.metadata.get("flag") is not None and field.metadata["flag"]["recorded"]:
            text = field.metadata["flag"].get("text")
            values[field.name] = text(value) if text and value is not None else value
    return values


def from_dict(settings: type, values: dict, flat: bool = False) -> Any:
    """The settings tree `settings` from a dict that to_dict wrote, read back from a file: each value
    checked as its flag would have checked it on the command line; a setting missing (one newer than the
    file) gets its default, and keys that are no setting are left out, as are settings of one invocation.
    `flat`: every flag in one dict, by its destination (--lora-r's is lora_r), as run records were
    written before the tree. SettingsError names the first value refused."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, settings)
    actions = {action.dest: action for action in parser._actions}
    args = argparse.Namespace(**{dest: action.default for dest, action in actions.items()})
    for dest, value in _recorded_values(settings, values, flat):
        if dest in actions:
            setattr(args, dest, recorded_value(actions[dest], value))
    try:
        return from_args(settings, args)
    except ValueError as error:  # a dataclass's own check, such as a val_fraction of 5
        raise SettingsError(str(error)) from None


def _recorded_values(settings: type, values: dict, flat: bool, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """(destination, value) of each recorded setting in `values`, a dict of to_dict's form (or flat)."""
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if "section" in field.metadata:
            options = field.metadata["section"]
            inner = values if flat else values.get(field.name, {})
            if not isinstance(inner, dict):
                raise SettingsError(f"{field.name}: {json.dumps(inner)[:60]} is not a group of settings")
            if options["recorded"]:
                yield from _recorded_values(hints[field.name], inner, flat, prefix + options["prefix"])
        elif field.metadata.get("flag") is not None and field.metadata["flag"]["recorded"]:
            key = prefix + field.name if flat else field.name
            if key in values:
                yield prefix + field.name, values[key]


def recorded_value(action: argparse.Action, value: Any) -> Any:
    """`value` as the flag of `action` would have given it on the command line; SettingsError if it cannot."""
    flag, shown = max(action.option_strings, key=len), json.dumps(value)[:60]
    if value is None and action.default is None:
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # an on/off flag
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{flag}: {shown} is not true or false")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (isinstance(value, str) or action.type and number):
        raise SettingsError(f"{flag}: {shown} is not a {'number' if action.type else 'string'}")
    try:
        value = action.type(str(value)) if action.type else value
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise SettingsError(f"{flag}: {shown} is refused ({error})") from None
    if action.choices and value not in action.choices:
        raise SettingsError(f"{flag}: {shown} is not one of {', '.join(map(str, action.choices))}")
    return value


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """Only the flags given on this command line, by destination, none of the defaults."""
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return vars(parser.parse_args(argv))
    finally:
        for action, default in defaults.items():
            action.default = default


def flag_fields(settings: type, only: tuple[str, ...] | None = None) -> list[dataclasses.Field]:
    """The fields of `settings` that are flags (of those named in `only`, where given); TypeError names a
    field that is neither a flag with a help text nor marked not_a_flag()."""
    fields = []
    for field in dataclasses.fields(settings):
        flag = field.metadata.get("flag", {})
        if flag is not None and not flag.get("help"):
            raise TypeError(
                f"{settings.__name__}.{field.name}: a setting needs a help text: declare it with "
                "core.flags.setting(default, help), or not_a_flag()"
            )
        if flag is not None and (only is None or field.name in only):
            fields.append(field)
    return fields


def _plain_type(hint: Any) -> Any:
    """int for `int | None`, and so on: what a flag's words are converted to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        return kinds[0] if len(kinds) == 1 else None
    return hint
