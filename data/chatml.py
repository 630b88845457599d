"""ChatML rendering of a conversation into token ids and the loss mask.

A session renders as (BOS, then turns joined by a newline):

    <s><|im_start|>Alice\\n>>> hi\\n>>> how are you?<|im_end|>\\n<|im_start|>Bob\\n>>> fine<|im_end|>

Training learns each turn's body and its `<|im_end|>`; the BOS, the `<|im_start|>Name\\n` headers and
the newline between turns are context only. sample.py renders its prompt with the same `render`,
ending in the open header of the speaker the model should write as, so training and sampling can
never disagree about the format.

Names and messages are people's text, so they are encoded with `special=False`: a message saying
"<s>" or "<|im_end|>" (or a contact named so) gets the ids of those characters, never a special token,
and cannot end a turn or open another. Each turn is therefore built as
`<|im_start|>` + the ids of "Name\\n>>> message..." + `<|im_end|>`, and the mask is exact. For text
that spells no added token those ids are exactly `tokenizer.encode(joined, bos=True)` of the joined
string (tests/test_chatml.py checks this on the real tokenizer). Inside a turn the header ends in
"\\n", a byte token no merge crosses, so the header's ids are a prefix of the turn's ids.
"""
from dataclasses import dataclass

from data.sessions import Turn
from model.tokenizer import Tokenizer, TokenizerError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TURN_SEPARATOR = "\n"
MESSAGE_PREFIX = ">>> "


def format_header(speaker: str) -> str:
    return f"{IM_START}{speaker}\n"


def format_turn(turn: Turn) -> str:
    body = "\n".join(MESSAGE_PREFIX + message for message in turn.messages)
    return f"{format_header(turn.speaker)}{body}{IM_END}"


def parse_body(body: str) -> list[str]:
    """The messages of a turn's body (what the model writes after a header); blank ones dropped."""
    messages = body.removeprefix(MESSAGE_PREFIX).split("\n" + MESSAGE_PREFIX)
    return [message for message in messages if message.strip()]


def format_conversation(turns: list[Turn], open_speaker: str | None = None) -> str:
    """The text `render` tokenizes (without the BOS)."""
    parts = [format_turn(turn) for turn in turns]
    if open_speaker is not None:
        parts.append(format_header(open_speaker))
    return TURN_SEPARATOR.join(parts)


@dataclass
class RenderedSession:
    """Token ids and, for each, whether the loss learns it."""
    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _EncodedTurn:
    ids: list[int]  # header, body, <|im_end|>
    header_len: int
    trained: bool


class _TurnEncoder:
    """Encodes turns of one conversation, remembering each speaker's header ids."""

    def __init__(self, tokenizer: Tokenizer, trained_speakers: set[str] | None):
        if tokenizer.im_start_id is None or tokenizer.im_end_id is None:
            raise TokenizerError("the tokenizer has no <|im_start|>/<|im_end|> tokens; twin needs a "
                                 "ChatML tokenizer such as Dolphin-2.2.1-Mistral-7B's")
        self.tokenizer = tokenizer
        self.trained_speakers = trained_speakers
        # Whether a text chunk gets a dummy-prefix "▁" depends on what precedes it, so the newline
        # between turns is encoded after an <|im_end|>, as it stands in the joined string.
        self.separator = tokenizer.encode(IM_END + TURN_SEPARATOR)[1:]
        # Text right after an added token mostly gets the dummy "▁" that text at the start of a string
        # gets, but with legacy=false tokenizers only the start does. There a "\n", which no merge
        # crosses, stands at the start in the text's place and its ids are dropped again.
        newline_after_token = tokenizer.encode(IM_START + "\n")[1:]
        self.stand_in = "" if newline_after_token == tokenizer.encode("\n", special=False) else "\n"
        self.stand_in_ids = tokenizer.encode(self.stand_in, special=False)
        self.headers: dict[str, list[int]] = {}

    def _after_start_token(self, text: str) -> list[int]:
        """The ids of people's text right after <|im_start|>, as plain text."""
        ids = self.tokenizer.encode(self.stand_in + text, special=False)
        if ids[:len(self.stand_in_ids)] != self.stand_in_ids:
            raise TokenizerError("the tokenizer merges a newline into the text after it, so names and "
                                 "messages cannot be encoded as they stand after <|im_start|>")
        return [self.tokenizer.im_start_id, *ids[len(self.stand_in_ids):]]

    def header(self, speaker: str) -> list[int]:
        if speaker not in self.headers:
            self.headers[speaker] = self._after_start_token(format_header(speaker).removeprefix(IM_START))
        return self.headers[speaker]

    def turn_ids(self, turn: Turn) -> list[int]:
        text = format_turn(turn).removeprefix(IM_START).removesuffix(IM_END)
        return [*self._after_start_token(text), self.tokenizer.im_end_id]

    def encode(self, turn: Turn) -> _EncodedTurn:
        return self.encode_ids(turn, self.turn_ids(turn))

    def encode_ids(self, turn: Turn, ids: list[int]) -> _EncodedTurn:
        header = self.header(turn.speaker)
        if ids[:len(header)] != header:
            raise TokenizerError(f"the tokenizer merges the header of {turn.speaker!r} into the "
                                 "message text, so the loss mask cannot be exact")
        trained = self.trained_speakers is None or turn.speaker in self.trained_speakers
        return _EncodedTurn(ids, len(header), trained)

    def assemble(self, turns: list[_EncodedTurn], open_speaker: str | None = None) -> RenderedSession:
        if open_speaker is not None:
            header = self.header(open_speaker)
            turns = [*turns, _EncodedTurn(header, len(header), trained=False)]
        ids, trained = [self.tokenizer.bos_id], [False]
        for index, turn in enumerate(turns):
            if index:
                ids += self.separator
                trained += [False] * len(self.separator)
            ids += turn.ids
            trained += [False] * turn.header_len + [turn.trained] * (len(turn.ids) - turn.header_len)
        return RenderedSession(ids, trained)


def render(turns: list[Turn], tokenizer: Tokenizer, *, trained_speakers: set[str] | None = None,
           open_speaker: str | None = None) -> RenderedSession:
    """BOS + the turns as ChatML: the ids of `tokenizer.encode(format_conversation(...), bos=True)`,
    except that names and messages are always plain text.

    `trained_speakers`: whose turns the loss learns (None: everyone's). `open_speaker`: end with that
    speaker's open header, the prompt from which the model writes their next turn.
    """
    encoder = _TurnEncoder(tokenizer, trained_speakers)
    return encoder.assemble([encoder.encode(turn) for turn in turns], open_speaker)


def split_to_fit(turns: list[Turn], tokenizer: Tokenizer, seq_len: int, *,
                 trained_speakers: set[str] | None = None) -> tuple[list[RenderedSession], int]:
    """Render a session as pieces of at most `seq_len` tokens; returns (pieces, tokens cut).

    Pieces break at turn boundaries and each renders like a session of its own (BOS, full headers),
    holding as many consecutive turns as fit. A turn too long for a piece by itself keeps the whole
    messages that fit (or, when even its first message does not, its first tokens); the rest of it
    is dropped and counted as cut.
    """
    encoder = _TurnEncoder(tokenizer, trained_speakers)
    budget = seq_len - 1  # a piece's BOS
    encoded, cut = [], 0
    for turn in turns:
        encoded_turn = encoder.encode(turn)
        if len(encoded_turn.ids) > budget:
            kept = _shorten(turn, encoded_turn.ids, encoder, budget)
            cut += len(encoded_turn.ids) - len(kept)
            encoded_turn = encoder.encode_ids(turn, kept)
        encoded.append(encoded_turn)

    pieces, piece, piece_len = [], [], 0
    for turn in encoded:
        added = len(turn.ids) + (len(encoder.separator) if piece else 0)
        if piece and piece_len + added > budget:
            pieces.append(encoder.assemble(piece))
            piece, piece_len, added = [], 0, len(turn.ids)
        piece.append(turn)
        piece_len += added
    if piece:
        pieces.append(encoder.assemble(piece))
    return pieces, cut


def _shorten(turn: Turn, ids: list[int], encoder: _TurnEncoder, budget: int) -> list[int]:
    """The ids of the longest run of the turn's first messages that fits in `budget` tokens,
    or, when even the first message alone does not fit, the turn's first `budget` ids."""
    best, low, high = None, 1, len(turn.messages) - 1
    while low <= high:  # binary search: a turn's token count grows with its messages
        count = (low + high) // 2
        candidate = encoder.turn_ids(Turn(turn.speaker, turn.messages[:count]))
        if len(candidate) <= budget:
            best, low = candidate, count + 1
        else:
            high = count - 1
    return best if best is not None else ids[:budget]
