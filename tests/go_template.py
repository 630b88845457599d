"""Go's text/template, the part of it that twin's Ollama template uses, to render that template in tests
as Ollama does (Go cannot run here).

Faithful to Go where the template depends on it: strings are bytes (`len`, `index` and `slice` count
bytes, `index` gives a byte as an integer), `range` over an int counts (Go 1.22) and over a string fails,
`and` stops at its first false argument, `eq` compares an int with a byte by value and refuses two kinds
that differ otherwise, `{{-` and `-}}` trim the spaces beside them, a variable lives until the `end` of the
block that declared it and `=` assigns the nearest one. Anything else is refused, never guessed at: a
template that used more of Go than this would fail its test here rather than render something Ollama
would not.
"""

import re

TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+)|(?P<declare>:=)|(?P<punct>[()|,=])'
    r"|(?P<variable>\$\w*(?:\.\w+)*)|(?P<field>(?:\.\w+)+|\.)|(?P<word>[A-Za-z]\w*))"
)
GO_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", '"': b'"', "\\": b"\\"}


class GoTemplateError(Exception):
    """What Go's parser or executor would refuse, or what this subset does not cover."""


def render(template: str, data: dict) -> str:
    """`template` executed on `data` (strings in it as str), the bytes it writes decoded as UTF-8."""
    nodes, _ = _parse(_lex(template), 0, stop=())
    out = bytearray()
    _run(nodes, _to_go(data), _Variables(_to_go(data)), out)
    return out.decode("utf-8")


def _to_go(value):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return {key: _to_go(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_go(item) for item in value]
    return value


# --- Lexing: text and actions, the trim markers applied ------------------------------------------


def _lex(template: str) -> list[tuple[str, object]]:
    items, position = [], 0
    while True:
        start = template.find("{{", position)
        if start < 0:
            items.append(("text", template[position:]))
            return _trimmed(items)
        items.append(("text", template[position:start]))
        tokens, position, trims = _action_tokens(template, start + 2)
        items.append(("action", (tokens, trims)))


def _action_tokens(template: str, position: int) -> tuple[list[tuple[str, str]], int, tuple[bool, bool]]:
    trim_left = template.startswith("- ", position)
    position += 2 if trim_left else 0
    tokens = []
    while True:
        rest = template[position:]
        spaces = len(rest) - len(rest.lstrip(" "))
        if spaces and rest[spaces:].startswith("-}}"):
            return tokens, position + spaces + 3, (trim_left, True)
        if rest[spaces:].startswith("}}"):
            return tokens, position + spaces + 2, (trim_left, False)
        match = TOKEN.match(template, position)
        if not match:
            raise GoTemplateError(f"cannot read the action at {rest[:20]!r}")
        kind = match.lastgroup
        tokens.append((kind, match[kind]))
        position = match.end()


def _trimmed(items: list) -> list:
    for index, (kind, value) in enumerate(items):
        if kind != "action":
            continue
        tokens, (trim_left, trim_right) = value
        if trim_left:
            items[index - 1] = ("text", items[index - 1][1].rstrip(" \t\r\n"))
        if trim_right:
            items[index + 1] = ("text", items[index + 1][1].lstrip(" \t\r\n"))
        items[index] = ("action", tokens)
    return [item for item in items if item != ("text", "")]


# --- Parsing: the tree of if, else, range, with and end ---------------------------------------------


def _parse(items: list, index: int, stop: tuple[str, ...]) -> tuple[list, int]:
    """Nodes from items[index] up to an action whose first word is in `stop` (left for the caller)."""
    nodes = []
    while index < len(items):
        kind, value = items[index]
        if kind == "text":
            nodes.append(("text", value.encode("utf-8")))
            index += 1
            continue
        word = value[0][1] if value and value[0][0] == "word" else None
        if word in stop:
            return nodes, index
        if word in ("end", "else"):
            raise GoTemplateError(f"unexpected {{{{{word}}}}}")
        if word in ("if", "range", "with"):
            node, index = _parse_block(items, index, word, value[1:])
            nodes.append(node)
        else:
            nodes.append(("action", _pipeline(value)))
            index += 1
    if stop:
        raise GoTemplateError("a block has no {{end}}")
    return nodes, index


def _parse_block(items: list, index: int, word: str, tokens: list) -> tuple[tuple, int]:
    branches, otherwise = [], []
    body, index = _parse(items, index + 1, stop=("else", "end"))
    branches.append((_pipeline(tokens), body))
    while items[index][1][0][1] == "else":
        after_else = items[index][1][1:]
        if after_else and word == "if" and after_else[0] == ("word", "if"):
            body, index = _parse(items, index + 1, stop=("else", "end"))
            branches.append((_pipeline(after_else[1:]), body))
        elif after_else:
            raise GoTemplateError(f"{{{{else}}}} followed by {after_else}")
        else:
            otherwise, index = _parse(items, index + 1, stop=("end",))
            break
    if len(items[index][1]) != 1:
        raise GoTemplateError("{{end}} takes nothing")
    return (word, branches, otherwise), index + 1


def _pipeline(tokens: list) -> dict:
    """{"declare": [names], "assign": bool, "commands": [[argument, ...], ...]}."""
    names, assign = [], False
    for end, (kind, value) in enumerate(tokens):
        if kind == "declare" or (kind == "punct" and value == "="):
            names = [token for token in tokens[:end] if token != ("punct", ",")]
            if not names or any(kind != "variable" for kind, _ in names):
                raise GoTemplateError(f"bad declaration {tokens[:end]}")
            names, assign, tokens = [name for _, name in names], value == "=", tokens[end + 1 :]
            break
    commands, position = [[]], 0
    while position < len(tokens):
        kind, value = tokens[position]
        if (kind, value) == ("punct", "|"):
            commands.append([])
            position += 1
            continue
        argument, position = _argument(tokens, position)
        commands[-1].append(argument)
    if not all(commands):
        raise GoTemplateError("an empty command")
    return {"declare": names, "assign": assign, "commands": commands}


def _argument(tokens: list, position: int):
    kind, value = tokens[position]
    if (kind, value) == ("punct", "("):
        depth, end = 1, position + 1
        while depth:
            if end == len(tokens):
                raise GoTemplateError("unclosed (")
            depth += {("punct", "("): 1, ("punct", ")"): -1}.get(tokens[end], 0)
            end += 1
        return ("pipeline", _pipeline(tokens[position + 1 : end - 1])), end
    if kind == "punct":
        raise GoTemplateError(f"unexpected {value!r}")
    return (kind, value), position + 1


# --- Execution ------------------------------------------------------------------------------------


class _Variables:
    def __init__(self, root):
        self.stack = [("$", root)]

    def declare(self, name: str, value) -> None:
        self.stack.append((name, value))

    def assign(self, name: str, value) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == name:
                self.stack[index] = (name, value)
                return
        raise GoTemplateError(f"undefined variable {name}")

    def get(self, name: str):
        for known, value in reversed(self.stack):
            if known == name:
                return value
        raise GoTemplateError(f"undefined variable {name}")


def _run(nodes: list, dot, variables: _Variables, out: bytearray) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out += node[1]
        elif kind == "action":
            value = _evaluate(node[1], dot, variables)
            if not node[1]["declare"]:
                out += _printed(value)
        elif kind == "if":
            _run_if(node, dot, variables, out)
        elif kind == "with":
            ((pipeline, body),) = node[1]
            mark = len(variables.stack)
            value = _evaluate(pipeline, dot, variables)
            _run(body if _truth(value) else node[2], value if _truth(value) else dot, variables, out)
            del variables.stack[mark:]
        else:
            _run_range(node, dot, variables, out)


def _run_if(node: tuple, dot, variables: _Variables, out: bytearray) -> None:
    mark = len(variables.stack)
    for pipeline, body in node[1]:
        if _truth(_evaluate(pipeline, dot, variables)):
            _run(body, dot, variables, out)
            break
    else:
        _run(node[2], dot, variables, out)
    del variables.stack[mark:]


def _run_range(node: tuple, dot, variables: _Variables, out: bytearray) -> None:
    ((pipeline, body),) = node[1]
    names = pipeline["declare"]
    value = _evaluate({**pipeline, "declare": []}, dot, variables)
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise GoTemplateError(f"range can't iterate over {value!r}")
    if isinstance(value, int):
        if len(names) > 1:
            raise GoTemplateError(f"can't use {value} to iterate over more than one variable")
        pairs = [(number, number) for number in range(value)]
    else:
        pairs = list(enumerate(value))
    if not pairs:
        _run(node[2], dot, variables, out)
    for index, element in pairs:
        mark = len(variables.stack)
        for name, bound in zip(names, [element] if len(names) == 1 else [index, element]):
            variables.declare(name, bound)
        _run(body, element, variables, out)
        del variables.stack[mark:]


def _evaluate(pipeline: dict, dot, variables: _Variables):
    value = _NOTHING
    for command in pipeline["commands"]:
        value = _command(command, dot, variables, value)
    for name in pipeline["declare"]:
        (variables.assign if pipeline["assign"] else variables.declare)(name, value)
    return value


_NOTHING = object()  # no value piped in


def _command(command: list, dot, variables: _Variables, piped):
    (kind, value), arguments = command[0], command[1:]
    if kind != "word":
        if arguments or piped is not _NOTHING:
            raise GoTemplateError(f"{value} is not a function")
        return _operand(command[0], dot, variables)
    if value == "and":  # evaluates its arguments only up to the first false one
        result = None
        for argument in arguments + ([("value", piped)] if piped is not _NOTHING else []):
            result = _operand(argument, dot, variables)
            if not _truth(result):
                return result
        return result
    values = [_operand(argument, dot, variables) for argument in arguments]
    if piped is not _NOTHING:
        values.append(piped)
    if value not in FUNCTIONS:
        raise GoTemplateError(f'function "{value}" not defined')
    return FUNCTIONS[value](*values)


def _operand(argument, dot, variables: _Variables):
    kind, value = argument
    if kind == "value":
        return value
    if kind == "pipeline":
        return _evaluate(value, dot, variables)
    if kind == "string":
        return _go_string(value)
    if kind == "number":
        return int(value)
    if kind == "field":
        return _fields(dot, value.split(".")[1:] if value != "." else [])
    if kind == "variable":
        name, *fields = value.split(".")
        return _fields(variables.get(name), fields)
    raise GoTemplateError(f"{value} is a function, not a value")


def _fields(value, names: list[str]):
    for name in names:
        if not isinstance(value, dict) or name not in value:
            raise GoTemplateError(f"can't evaluate field {name} in {value!r}")
        value = value[name]
    return value


def _go_string(literal: str) -> bytes:
    out, body, position = bytearray(), literal[1:-1], 0
    while position < len(body):
        char = body[position]
        if char != "\\":
            out += char.encode("utf-8")
            position += 1
        elif body[position + 1] in "uU":
            digits = 4 if body[position + 1] == "u" else 8
            out += chr(int(body[position + 2 : position + 2 + digits], 16)).encode("utf-8")
            position += 2 + digits
        elif body[position + 1] in GO_ESCAPES:
            out += GO_ESCAPES[body[position + 1]]
            position += 2
        else:
            raise GoTemplateError(f"escape \\{body[position + 1]} is not covered here")
    return bytes(out)


def _truth(value) -> bool:
    if isinstance(value, dict):  # a struct (Ollama's api.Message): always true
        return True
    return bool(value)


def _printed(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int):
        return str(value).encode()
    raise GoTemplateError(f"printing {value!r} is not covered here")


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, bytes)):
        return type(value).__name__
    raise GoTemplateError(f"invalid type for comparison: {value!r}")


def _eq(first, *others) -> bool:
    for other in others:
        if _kind(first) != _kind(other):  # Go compares ints and bytes (uint8) alike: both are int here
            raise GoTemplateError(f"incompatible types for comparison: {first!r} and {other!r}")
        if first == other:
            return True
    return False


def _ge(first, second) -> bool:
    if _kind(first) != _kind(second) or _kind(first) == "bool":
        raise GoTemplateError(f"incompatible types for comparison: {first!r} and {second!r}")
    return first >= second


def _len(value) -> int:
    if not isinstance(value, (bytes, list)):
        raise GoTemplateError(f"len of {value!r}")
    return len(value)


def _index(value, position):
    if not isinstance(value, (bytes, list)) or not isinstance(position, int) or not 0 <= position < len(value):
        raise GoTemplateError(f"index {position!r} of {value!r}")
    return value[position]  # a byte of a string is an integer (uint8), as in Go


def _slice(value, *bounds):
    if not isinstance(value, bytes) or not 1 <= len(bounds) <= 2:
        raise GoTemplateError(f"slice of {value!r} by {bounds}")
    start, end = bounds[0], bounds[1] if len(bounds) == 2 else len(value)
    if not 0 <= start <= end <= len(value):
        raise GoTemplateError(f"slice bounds out of range [{start}:{end}] of {len(value)} bytes")
    return value[start:end]


def _printf(form: bytes, *values) -> bytes:
    pieces = re.split(rb"(%.)", form)
    if len(pieces) // 2 != len(values) or any(verb != b"%s" for verb in pieces[1::2]):
        raise GoTemplateError(f"printf {form!r}: only %s, once per argument, is covered here")
    if not all(isinstance(value, bytes) for value in values):
        raise GoTemplateError("printf %s of a value that is not a string is not covered here")
    out = bytearray(pieces[0])
    for value, text in zip(values, pieces[2::2]):
        out += value + text
    return bytes(out)


FUNCTIONS = {
    "eq": _eq,
    "ne": lambda first, second: not _eq(first, second),
    "ge": _ge,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "printf": _printf,
    "not": lambda value: not _truth(value),
}
