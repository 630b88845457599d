"""Chat formats: a conversation rendered into token ids and the loss mask.

A session renders as the tokenizer's BOS (none for SmolLM2 and Qwen, which have none), then its turns in
one of the layouts of CHAT_FORMATS, the first whose tokens the tokenizer has:

ChatML (Dolphin, SmolLM2, Qwen; train.py adds its tokens to a base model that has neither), turns joined
by a newline:

    <s><|im_start|>Alice\\n>>> hi\\n>>> how are you?<|im_end|>\\n<|im_start|>Bob\\n>>> fine<|im_end|>

Llama 3's header tokens, which take any name as the role, turns back to back:

    <|begin_of_text|><|start_header_id|>Alice<|end_header_id|>\\n\\n>>> hi<|eot_id|><|start_header_id|>Bob...

Gemma's turn tokens, which take any name where Gemma's template writes "user" or "model", turns joined
by a newline:

    <bos><start_of_turn>Alice\\n>>> hi<end_of_turn>\\n<start_of_turn>Bob\\n>>> fine<end_of_turn>

Training learns each turn's body and the token that ends it; the BOS, the headers and the separator
between turns are context only. sample.py renders its prompt with the same `render`, ending in the
open header of the speaker the model should write as, and stops at the format's turn end, so
training and sampling can never disagree about the format.

Names and messages are people's text, so they are encoded with `special=False`: a message saying
"<s>" or "<|im_end|>" (or a contact named so) gets the ids of those characters, never a special token,
and cannot end a turn or open another. Each turn is therefore built as the format's tokens around the
ids of its text ("Name\\n>>> message..." in ChatML and Gemma's; "Name" and "\\n\\n>>> message..." in Llama 3's),
and the mask is exact. For text that spells no added token those ids are exactly
`tokenizer.encode(joined, bos=True)` of the joined string (tests/test_chatml.py checks this for each
format). The header's text ends in newlines, which no merge crosses into the ">>> " after them, so
the header's ids are a prefix of the turn's ids.
"""

import dataclasses
from dataclasses import dataclass

from data.sessions import Turn, format_body
from model.architectures import CHAT_FORMATS, CHATML
from model.tokenizer import Tokenizer, TokenizerError


@dataclass(frozen=True)
class ChatFormat:
    """A layout of turns and the ids of its tokens in one tokenizer. A turn reads
    `header_start` NAME `name_end` `header_newlines` BODY `turn_end`; turns are joined by `separator`."""

    header_start: str
    name_end: str  # a token closing the name (Llama 3's), or "" where the newline after it does (ChatML)
    header_newlines: str
    turn_end: str
    separator: str
    header_start_id: int
    name_end_id: int | None
    turn_end_id: int
    bos_id: int | None

    def header(self, speaker: str) -> str:
        return f"{self.header_start}{speaker}{self.name_end}{self.header_newlines}"

    def turn(self, turn: Turn) -> str:
        return f"{self.header(turn.speaker)}{format_body(turn.messages)}{self.turn_end}"

    def conversation(self, turns: list[Turn], open_speaker: str | None = None) -> str:
        """The text `render` tokenizes (without the BOS)."""
        parts = [self.turn(turn) for turn in turns]
        if open_speaker is not None:
            parts.append(self.header(open_speaker))
        return self.separator.join(parts)


def chat_format(tokenizer: Tokenizer) -> ChatFormat:
    """The tokenizer's chat format; TokenizerError if it has none."""
    found = find_chat_format(tokenizer)
    if found is None:
        raise TokenizerError(
            "the tokenizer has none of ChatML's <|im_start|>/<|im_end|>, Llama 3's header "
            "tokens or Gemma's turn tokens; train.py adds ChatML's to a base model's tokenizer"
        )
    return found


def turn_stop_ids(tokenizer: Tokenizer) -> set[int]:
    """Where a written turn ends: at its format's turn end, where another header starts, or at EOS."""
    layout = chat_format(tokenizer)
    return {layout.turn_end_id, layout.header_start_id, tokenizer.eos_id}


def find_chat_format(tokenizer: Tokenizer) -> ChatFormat | None:
    """The first of CHAT_FORMATS whose tokens the tokenizer has, else None (a base model, which train.py
    gives ChatML's tokens)."""
    for layout in CHAT_FORMATS.values():
        tokens = [token for token in (layout["header_start"], layout["name_end"], layout["turn_end"]) if token]
        ids = {token: _added_token_id(tokenizer, token) for token in tokens}
        if None not in ids.values():
            return ChatFormat(
                **layout,
                header_start_id=ids[layout["header_start"]],
                name_end_id=ids.get(layout["name_end"]),
                turn_end_id=ids[layout["turn_end"]],
                bos_id=tokenizer.bos_id,
            )
    return None


def add_chatml_tokens(tokenizer: Tokenizer, always: bool = False) -> list[int]:
    """Give a tokenizer without a chat format (a base model's) ChatML's tokens, or any tokenizer with
    `always`; returns the ids of the tokens it did not have. <|im_end|> comes first, as in Dolphin."""
    if find_chat_format(tokenizer) is not None and not always:
        return []
    missing = [
        token for token in (CHATML["turn_end"], CHATML["header_start"]) if _added_token_id(tokenizer, token) is None
    ]
    return tokenizer.add_special_tokens(missing)


def _added_token_id(tokenizer: Tokenizer, token: str) -> int | None:
    """The id of `token` if the tokenizer has it as an added token (one that encode splits out of a text)."""
    ids = tokenizer.encode(token)
    return ids[0] if len(ids) == 1 and tokenizer.encode(token, special=False) != ids else None


@dataclass
class RenderedSession:
    """Token ids and, for each, whether the loss learns it."""

    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _EncodedTurn:
    ids: list[int]  # header, body, turn end token
    header_len: int
    trained: bool


class _TurnEncoder:
    """Encodes turns of one conversation, remembering each speaker's header ids."""

    def __init__(self, tokenizer: Tokenizer, trained_speakers: set[str] | None):
        self.format = layout = chat_format(tokenizer)
        self.tokenizer = tokenizer
        self.trained_speakers = trained_speakers
        self.bos = [layout.bos_id] if layout.bos_id is not None else []
        # Whether a text chunk gets a dummy-prefix "▁" depends on what precedes it, so the separator
        # between turns is encoded after a turn end token, as it stands in the joined string.
        self.separator = tokenizer.encode(layout.turn_end + layout.separator)[1:]
        # Text right after an added token mostly gets the dummy "▁" that text at the start of a string
        # gets, but with legacy=false tokenizers only the start does. There a "\n", which no merge
        # crosses, stands at the start in the text's place and its ids are dropped again.
        newline_after_token = tokenizer.encode(layout.header_start + "\n")[1:]
        self.stand_in = "" if newline_after_token == tokenizer.encode("\n", special=False) else "\n"
        self.stand_in_ids = tokenizer.encode(self.stand_in, special=False)
        self.headers: dict[str, list[int]] = {}

    def _after_token(self, text: str) -> list[int]:
        """The ids of people's text right after an added token, as plain text."""
        ids = self.tokenizer.encode(self.stand_in + text, special=False)
        if ids[: len(self.stand_in_ids)] != self.stand_in_ids:
            raise TokenizerError(
                "the tokenizer merges a newline into the text after it, so names and "
                "messages cannot be encoded as they stand after an added token"
            )
        return ids[len(self.stand_in_ids) :]

    def _header_then(self, speaker: str, text: str) -> list[int]:
        """The ids of the header start token, the speaker's name, the name end token (where the format has
        one), then `text` (the header's newlines and whatever follows them)."""
        layout = self.format
        if layout.name_end_id is None:
            return [layout.header_start_id, *self._after_token(speaker + text)]
        return [layout.header_start_id, *self._after_token(speaker), layout.name_end_id, *self._after_token(text)]

    def header(self, speaker: str) -> list[int]:
        if speaker not in self.headers:
            self.headers[speaker] = self._header_then(speaker, self.format.header_newlines)
        return self.headers[speaker]

    def turn_ids(self, turn: Turn) -> list[int]:
        body = self.format.header_newlines + format_body(turn.messages)
        return [*self._header_then(turn.speaker, body), self.format.turn_end_id]

    def encode(self, turn: Turn) -> _EncodedTurn:
        return self.encode_ids(turn, self.turn_ids(turn))

    def encode_ids(self, turn: Turn, ids: list[int]) -> _EncodedTurn:
        header = self.header(turn.speaker)
        if ids[: len(header)] != header:
            raise TokenizerError(
                f"the tokenizer merges the header of {turn.speaker!r} into the "
                "message text, so the loss mask cannot be exact"
            )
        trained = self.trained_speakers is None or turn.speaker in self.trained_speakers
        return _EncodedTurn(ids, len(header), trained)

    def assemble(self, turns: list[_EncodedTurn], open_speaker: str | None = None) -> RenderedSession:
        if open_speaker is not None:
            header = self.header(open_speaker)
            turns = [*turns, _EncodedTurn(header, len(header), trained=False)]
        ids, trained = list(self.bos), [False] * len(self.bos)
        for index, turn in enumerate(turns):
            if index:
                ids += self.separator
                trained += [False] * len(self.separator)
            ids += turn.ids
            trained += [False] * turn.header_len + [turn.trained] * (len(turn.ids) - turn.header_len)
        return RenderedSession(ids, trained)


def render(
    turns: list[Turn],
    tokenizer: Tokenizer,
    *,
    trained_speakers: set[str] | None = None,
    open_speaker: str | None = None,
) -> RenderedSession:
    """BOS + the turns in the tokenizer's chat format: the ids of
    `tokenizer.encode(chat_format(tokenizer).conversation(...), bos=True)`, except that names and messages
    are always plain text.

    `trained_speakers`: whose turns the loss learns (None: everyone's). `open_speaker`: end with that
    speaker's open header, the prompt from which the model writes their next turn.
    """
    encoder = _TurnEncoder(tokenizer, trained_speakers)
    return encoder.assemble([encoder.encode(turn) for turn in turns], open_speaker)


class TokenCounter:
    """The tokens each turn takes in a conversation: its header, body and turn end, and the separator before the
    next turn. One counter serves many calls: the format's tokens are looked up once."""

    def __init__(self, tokenizer: Tokenizer):
        self.encoder = _TurnEncoder(tokenizer, trained_speakers=None)

    def __call__(self, turns: list[Turn]) -> list[int]:
        return [len(self.encoder.turn_ids(turn)) + len(self.encoder.separator) for turn in turns]


def split_to_fit(
    turns: list[Turn],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    trained_speakers: set[str] | None = None,
    context: list[Turn] = (),
) -> tuple[list[RenderedSession], int]:
    """Render a session as pieces of at most `seq_len` tokens; returns (pieces, tokens cut).

    Pieces break at turn boundaries and each renders like a session of its own (BOS if any, full headers),
    holding as many consecutive turns as fit. A turn too long for a piece by itself keeps the whole
    messages that fit (or, when even its first message does not, its first tokens); the rest of it
    is dropped and counted as cut.

    `context` (a memory of earlier conversations) goes before the first piece, never trained: as many of
    its newest turns as the room that piece leaves.
    """
    encoder = _TurnEncoder(tokenizer, trained_speakers)
    budget = seq_len - len(encoder.bos)
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
            pieces.append(piece)
            piece, piece_len, added = [], 0, len(turn.ids)
        piece.append(turn)
        piece_len += added
    if piece:
        pieces.append(piece)
    if context and pieces:
        room = budget - sum(len(turn.ids) for turn in pieces[0]) - len(encoder.separator) * (len(pieces[0]) - 1)
        remembered = [dataclasses.replace(encoder.encode(turn), trained=False) for turn in context]
        while remembered and sum(len(turn.ids) + len(encoder.separator) for turn in remembered) > room:
            remembered.pop(0)  # cut from the left, at a turn boundary
        pieces[0] = remembered + pieces[0]
    return [encoder.assemble(piece) for piece in pieces], cut


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


def reply_prompt(
    turns: list[Turn], tokenizer: Tokenizer, speaker: str, context: int, reply_tokens: int, memory: list[Turn] = ()
) -> tuple[list[int], int]:
    """The prompt `speaker`'s next turn is written after, in chat (sample.py, serve.py) and in the fidelity
    report alike: fit_prompt leaving `reply_tokens` of the `context` for the turn, `memory` before the turns."""
    return fit_prompt(turns, tokenizer, speaker, context - reply_tokens, memory)


def fit_prompt(
    turns: list[Turn], tokenizer: Tokenizer, speaker: str, room: int, context: list[Turn] = ()
) -> tuple[list[int], int]:
    """The conversation rendered exactly as in training, ending in `speaker`'s open header, and how many
    of its turns that holds: the oldest are dropped until it fits in `room` tokens (leaving the rest for a
    reply), the turns of `context` (a memory, before them) first. None are left where even the newest turn
    does not fit, which a caller may refuse.

    The turns are read newest first, each encoded once, up to the first that no longer fits: a chat of
    20,000 turns costs the few that fit, not all of them (nor a rendering per turn dropped)."""
    encoder = _TurnEncoder(tokenizer, trained_speakers=None)
    used = len(encoder.bos) + len(encoder.header(speaker))
    kept: list[_EncodedTurn] = []
    for turn in reversed([*context, *turns]):
        encoded = encoder.encode(turn)
        used += len(encoded.ids) + len(encoder.separator)  # each turn is followed by a separator
        if used > room:
            break
        kept.append(encoded)
    ids = encoder.assemble(kept[::-1], open_speaker=speaker).ids
    return ids[-room:], min(len(kept), len(turns))
