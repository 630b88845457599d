"""Walk a JSON file one value at a time, so that a 700 MB Telegram export never sits in memory as Python
objects all at once (json.load takes about 8 GB for it). Telegram Desktop's \\xHH escapes, which JSON lacks,
are repaired on the way in."""

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

from tqdm import tqdm

from data.sessions import DataError

READ_CHUNK_BYTES = 1 << 20

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The escaped backslash is matched too, so that in \\x41 the "x" stays plain text.
_HEX_ESCAPE = re.compile(r"\\(\\|x([0-9A-Fa-f]{2}))")
_DECODER = json.JSONDecoder()


def repair_hex_escapes(text: str) -> str:
    """Telegram Desktop writes control characters as \\xHH, which JSON lacks: make them \\u00HH."""
    if "\\x" not in text:  # the common case, and a fast one
        return text
    return _HEX_ESCAPE.sub(lambda match: match[0] if match[2] is None else "\\u00" + match[2], text)


def _split_unfinished_escape(text: str) -> tuple[str, str]:
    """Split off an escape that the end of a chunk may have cut (at most 4 characters: \\xHH)."""
    last = text.rfind("\\", max(0, len(text) - 3))
    if last == -1:
        return text, ""
    run_start = last
    while run_start > 0 and text[run_start - 1] == "\\":
        run_start -= 1
    if (last - run_start) % 2 == 1:  # the last backslash is escaped by the one before it
        return text, ""
    return text[:last], text[last:]


class JsonReader:
    """Walks a JSON file one value at a time: objects key by key, lists item by item, and
    anything else decoded whole by json's raw_decode. It reads 1 MB chunks, repairing \\xHH."""

    def __init__(self, path: Path, file: BinaryIO, progress: tqdm):
        self.path = path
        self.file = file
        self.progress = progress
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.buffer = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of the buffer, for error positions
        self.escape_carry = ""
        self.at_end = False

    def _read_more(self, at_least: int = 0) -> bool:
        """Append the next chunk of text to the buffer; False once the file is used up."""
        if self.at_end:
            return False
        data = self.file.read(max(READ_CHUNK_BYTES, at_least))
        self.progress.update(len(data))
        try:
            text = self.escape_carry + self.utf8.decode(data, final=not data)
        except UnicodeDecodeError as error:
            raise DataError(
                f"{self.path}: not UTF-8 text ({error.reason} near byte {self.file.tell() - len(data) + error.start})"
            ) from None
        if data:
            text, self.escape_carry = _split_unfinished_escape(text)
        else:
            self.at_end = True
        self.consumed += self.pos
        self.buffer = self.buffer[self.pos :] + repair_hex_escapes(text)
        self.pos = 0
        return True

    def error(self, where: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {where}: {problem}")

    def peek(self) -> str:
        """The next character that is not whitespace, not consumed; "" at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._read_more():
                return ""

    def _expect(self, char: str, where: str, what: str) -> None:
        found = self.peek()
        if found != char:
            self._fail_at(found, where, what)
        self.pos += 1

    def _fail_at(self, found: str, where: str, what: str) -> NoReturn:
        if not found:
            raise self.error(where, "the file ends here: is it truncated?")
        raise self.error(where, f"expected {what}, found {found!r} at character {self.consumed + self.pos}")

    def value(self, where: str):
        """Decode the next whole JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                # An error near the end of the text read so far may only mean that the chunk
                # cut the value in two: read more (at least as much again, to stay linear).
                unterminated = error.msg.startswith("Unterminated string")
                if (unterminated or error.pos >= len(self.buffer) - 8) and self._read_more(
                    at_least=len(self.buffer) - self.pos
                ):
                    continue
                if unterminated or error.pos >= len(self.buffer.rstrip()):
                    raise self.error(where, "the file ends inside this value: is it truncated?") from None
                raise self.error(
                    where, f"not valid JSON: {error.msg} at character {self.consumed + error.pos}"
                ) from None
            except (ValueError, RecursionError) as error:  # e.g. a 5000-digit number, deep nesting
                raise self.error(where, f"cannot decode: {error}") from None
            if end == len(self.buffer) and self._read_more():
                continue  # a number at the end of the buffer may go on in the next chunk
            self.pos = end
            return value

    def object_keys(self, where: str) -> Iterator[str]:
        """Walk an object: yields each key; the caller reads its value before the next one."""
        self._expect("{", where, "an object")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                self._fail_at(self.peek(), where, "a key in double quotes")
            key = self.value(where)
            self._expect(":", where, "':' after a key")
            yield key
            if not self._another_item("}", where):
                return

    def array_items(self, where: str) -> Iterator[int]:
        """Walk a list: yields each index; the caller reads the item before the next one."""
        self._expect("[", where, "a list")
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            if not self._another_item("]", where):
                return
            index += 1

    def _another_item(self, closing: str, where: str) -> bool:
        """Consume what follows an item: True for a comma, False for the closing bracket."""
        found = self.peek()
        if found not in (",", closing):
            self._fail_at(found, where, f"',' or '{closing}'")
        self.pos += 1
        return found == ","

    def expect_end(self) -> None:
        if self.peek():
            self._fail_at(self.peek(), "after the top-level object", "the end of the file")
