"""A reply's text as a client sees it while the model writes it.

The model writes a turn as ">>> first message\\n>>> second message". A client gets the messages joined by
newlines ("first message\\nsecond message"), cut before the first of the request's stop strings, and is never
shown a character that a later token could take back: the start of a ">>> " marker or of a stop string is
held until the next piece tells what it is.
"""

import functools

from data.sessions import MESSAGE_PREFIX, messages_of

SEPARATOR = "\n" + MESSAGE_PREFIX  # between two messages of a turn, as the model writes it


def held_back(text: str, markers: list[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    return max((_start_at_end(text, marker) for marker in markers), default=0)


def _start_at_end(text: str, marker: str) -> int:
    """The length of the longest proper start of `marker` that `text` ends with, in time linear in the marker's
    length (Knuth-Morris-Pratt: comparing every start with the text's end costs its square, which a long stop
    string made a stall of minutes for every client)."""
    tail = text[-(len(marker) - 1) :] if len(marker) > 1 else ""  # a proper start is shorter than the marker
    first = tail.find(marker[:1])
    if first < 0:  # the common case, found at C's speed
        return 0
    fallback, matched = _fallbacks(marker), 0  # matched: how much of the marker's start the text read ends with
    for character in tail[first:]:
        while matched and character != marker[matched]:
            matched = fallback[matched - 1]
        if character == marker[matched]:
            matched += 1
        if matched == len(marker):  # a whole marker is no start: go on with the longest start it ends with
            matched = fallback[matched - 1]
    return matched


@functools.lru_cache(maxsize=64)  # a reply asks for its stop strings' at every token
def _fallbacks(marker: str) -> tuple[int, ...]:
    """For each i, the length of the longest proper start of marker[:i + 1] that it ends with."""
    fallback, matched = [0] * len(marker), 0
    for index in range(1, len(marker)):
        while matched and marker[index] != marker[matched]:
            matched = fallback[matched - 1]
        if marker[index] == marker[matched]:
            matched += 1
        fallback[index] = matched
    return tuple(fallback)


class ReplyText:
    """The text of one reply, fed piece by piece as the tokens are decoded."""

    def __init__(self, stop: list[str]):
        self.stop = [text for text in stop if text]
        self.body = ""  # what the model wrote
        self.content = ""  # what the client may see of it so far
        self.stopped = False  # a stop string was met: the reply ends here

    def add(self, piece: str) -> str:
        """Take the next decoded piece; return the text the client may be shown now (often "")."""
        self.body += piece
        # "\n" in front: a body that is so far only the start of the first ">>> " is held too.
        return self._release(
            self.body[: max(0, len(self.body) - held_back("\n" + self.body, [SEPARATOR]))], final=False
        )

    def finish(self) -> str:
        """The model has stopped: the text that was held back, as far as it goes, without the start of a marker
        that max_tokens cut short (a reply ending "...\\n>>>" ends before it)."""
        if self.stopped:
            return ""
        self.body = self.body[: max(0, len(self.body) - held_back("\n" + self.body, [SEPARATOR]))]
        return self._release(self.body, final=True)

    @property
    def messages(self) -> list[str]:
        """The reply's messages: all that the model wrote, or those before the stop string (the last one cut)."""
        kept, room = [], len(self.content)
        for message in messages_of(self.body):
            if room <= 0:
                break
            kept.append(message[:room])
            room -= len(message) + 1  # the newline that joins it to the next
        return [message for message in kept if message.strip()]

    def _release(self, body: str, final: bool) -> str:
        content = "\n".join(messages_of(body))
        stops = [index for index in (content.find(text) for text in self.stop) if index >= 0]
        if stops:
            content, self.stopped = content[: min(stops)], True
        elif not final:
            content = content[: len(content) - held_back(content, self.stop)]
        new = content[len(self.content) :] if content.startswith(self.content) else ""
        if len(content) > len(self.content):
            self.content = content
        return new
