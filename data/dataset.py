"""From a Telegram export to packed training and validation rows: what train.py and evaluate.py call.

    sessions (data.sources) -> validation split -> ChatML pieces (data.chatml) -> rows (data.packing)

Tokenized rows are cached on disk, so a second run, or the other ranks of a distributed run once the
first rank has written the cache, skip tokenizing.
"""

import dataclasses
import hashlib
import json
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import atomic
from core.names import matching_names
from data.chatml import RenderedSession, split_to_fit
from data.conversion import ConversionReport, chat_list
from data.packing import PackedRows, pack
from data.sessions import DataError, Session, Turn, most_frequent_partners
from data.settings import DataConfig
from data.sources import load_sessions
from model.loss import IGNORE_INDEX
from model.tokenizer import Tokenizer

CACHE_FORMAT = 3  # bump when rendering or packing changes what the same inputs produce
ROW_ARRAYS = [row_field.name for row_field in dataclasses.fields(PackedRows)]


@dataclass
class DataReport:
    conversion: ConversionReport
    train_sessions: int
    val_sessions: int
    tokens: int  # in all pieces, trained or context, padding not counted
    trained_tokens: int
    tokens_cut: int  # dropped from turns too long for a row
    trained_on: str  # whose turns the loss covers, in words
    train_rows: int
    val_rows: int
    seq_len: int
    utilization: float  # of the training rows

    def summary(self) -> str:
        return "\n".join(
            [
                self.conversion.summary(),
                f"trained on: {self.trained_on}",
                f"sessions: {self.train_sessions:,} for training, {self.val_sessions:,} held out for validation",
                f"tokens: {self.tokens:,}, {self.trained_tokens:,} of them trained, "
                f"{self.tokens_cut:,} cut from turns longer than a row",
                f"rows of {self.seq_len} tokens: {self.train_rows:,} training, "
                f"{self.val_rows:,} validation, training rows {self.utilization:.1%} filled",
            ]
        )


@dataclass
class Remembering:
    """How each session gets a memory of earlier ones, as context before it (memory.Memory makes this: the
    memory package stands above data)."""

    settings: dict  # what decides the contexts, for the token cache
    of: Callable[[list[Session]], Callable[[Session], list[Turn]]]  # sessions remembered -> a session's memory


@dataclass
class PreparedData:
    train_rows: PackedRows
    val_rows: PackedRows
    train_sessions: list[Session]  # the fidelity report's reference for the people and their private text
    val_sessions: list[Session]  # held out, for evaluating per speaker
    target: str
    partners: dict[str, str]  # speaker -> their most frequent partner in all sessions (sample.py's --as)
    report: DataReport

    def summary(self) -> str:
        return self.report.summary()


def prepare_data(
    path: str | Path,
    tokenizer: Tokenizer,
    config: DataConfig,
    cache_dir: str | Path | None = None,
    memory: Remembering | None = None,
) -> PreparedData:
    """Convert the export at `path`, hold out validation sessions, tokenize and pack them.

    With `cache_dir`, the rows are read from there when the same sessions were tokenized before with
    the same tokenizer and settings, and written there otherwise. With `memory`, each session is preceded
    by its memory: of the training sessions for a training session, of all sessions for a held-out one.
    """
    sessions, conversion = load_sessions(path, config.export)
    trained, trained_on = trained_speakers(sessions, conversion.target, config)
    fingerprints = [session_fingerprint(session) for session in sessions]
    held_out = (
        validation_mask(fingerprints, config.val_fraction)
        if config.split == "hash"
        else newest_mask(
            [session.start for session in sessions],
            fingerprints,
            config.val_fraction,
            [session.chat for session in sessions],
        )
    )
    train = [session for session, out in zip(sessions, held_out) if not out]
    val = [session for session, out in zip(sessions, held_out) if out]
    if not train:
        skipped = conversion.chats_skipped + conversion.messages_skipped
        why = (
            f"{len(sessions)} sessions, all held out for validation"
            if sessions
            else "the conversion kept no conversation with the target in it"
            + (
                f" (most skipped: {', '.join(f'{reason} {n}' for reason, n in skipped.most_common(4))})"
                if skipped
                else ""
            )
        )
        raise DataError(
            f"{path}: no sessions to train on: {why}; `python convert.py {path} "
            "-o sessions.jsonl` prints the whole conversion report"
        )

    cache_file = None
    if cache_dir is not None:
        key = _cache_key(fingerprints, tokenizer, config, trained, memory.settings if memory else None)
        cache_file = Path(cache_dir) / f"tokens-{key}.npz"
    cached = _load_rows(cache_file, config.seq_len, tokenizer.vocab_size) if cache_file is not None else None
    if cached is not None:
        train_rows, val_rows, tokens_cut = cached
    else:
        train_memory, val_memory = (memory.of(train), memory.of(sessions)) if memory else (None, None)
        train_pieces, train_cut = _tokenize(train, tokenizer, config.seq_len, trained, train_memory)
        val_pieces, val_cut = _tokenize(val, tokenizer, config.seq_len, trained, val_memory)
        train_rows, val_rows = pack(train_pieces, config.seq_len), pack(val_pieces, config.seq_len)
        tokens_cut = train_cut + val_cut
        if cache_file is not None:
            _save_rows(cache_file, train_rows, val_rows, tokens_cut)

    report = DataReport(
        conversion=conversion,
        train_sessions=len(train),
        val_sessions=len(val),
        tokens=int(train_rows.lengths.sum() + val_rows.lengths.sum()),
        trained_tokens=train_rows.trained_tokens + val_rows.trained_tokens,
        tokens_cut=tokens_cut,
        trained_on=trained_on,
        train_rows=len(train_rows),
        val_rows=len(val_rows),
        seq_len=config.seq_len,
        utilization=train_rows.utilization,
    )
    return PreparedData(train_rows, val_rows, train, val, conversion.target, most_frequent_partners(sessions), report)


def trained_speakers(sessions: list[Session], target: str, config: DataConfig) -> tuple[set[str] | None, str]:
    """Whose turns the loss covers (None: everyone's) and that in words: the target's with --train-on target,
    else everyone's, less the people --exclude-speakers names, whose turns stay as context."""
    speakers = sorted({turn.speaker for session in sessions for turn in session.turns})
    excluded = []
    for wanted in chat_list(config.exclude_speakers):
        matches = matching_names(wanted, speakers)
        if len(matches) != 1:
            raise DataError(
                f"--exclude-speakers: {wanted!r} "
                + (
                    f"matches {len(matches)} speakers: {', '.join(matches[:10])}; give a full name"
                    if matches
                    else "speaks in no session"
                )
            )
        excluded.append(matches[0])
    if target in excluded:
        raise DataError(
            f"--exclude-speakers: {target!r} is the target, the person the run twins; choose another with --target"
        )
    chosen = {target} if config.train_on == "target" else None
    said = f"{target}'s turns (--train-on target)" if chosen else "every speaker's turns"
    if not excluded:
        return chosen, said
    return (chosen or set(speakers)) - set(excluded), (
        said + f", never {', '.join(excluded)}'s: context only (--exclude-speakers)"
    )


def session_fingerprint(session: Session) -> str:
    """A hash of everything in the session, independent of where it sits in the export."""
    content = json.dumps(dataclasses.asdict(session), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def validation_mask(fingerprints: list[str], fraction: float) -> list[bool]:
    """Which sessions to hold out: those whose hash falls below `fraction`; at least one of two or
    more, none of a single one.

    Each session's fate depends on its own content only, so the split is the same in every run and
    for any order of the input, and a later, longer export of the same chats holds out the same old
    sessions (the one picked to reach the minimum of one aside): none of them leaks into training.
    """
    if len(fingerprints) < 2:
        return [False] * len(fingerprints)
    positions = [int(fingerprint[:16], 16) / 16**16 for fingerprint in fingerprints]
    held_out = [position < fraction for position in positions]
    if fraction > 0 and not any(held_out):
        held_out[positions.index(min(positions))] = True
    return held_out


def newest_mask(
    starts: list[int], fingerprints: list[str], fraction: float, chats: list[str] | None = None
) -> list[bool]:
    """Which sessions to hold out: the newest `fraction` of each chat's (rounded; at least one of two or
    more in all, none of a single one), so that a twin is judged on what came after everything it learnt
    from in the same chat, and in every chat.

    Sessions that start at the same second are ordered by their fingerprints, so the split does not
    depend on the order of the input.
    """
    if len(starts) < 2 or fraction <= 0:
        return [False] * len(starts)
    chats = chats or [""] * len(starts)
    by_chat: dict[str, list[int]] = {}
    for index, chat in enumerate(chats):
        by_chat.setdefault(chat, []).append(index)
    held_out = [False] * len(starts)
    for indices in by_chat.values():
        count = min(round(fraction * len(indices)), len(indices) - 1)
        for index in sorted(indices, key=lambda index: (starts[index], fingerprints[index]))[len(indices) - count :]:
            held_out[index] = True
    if not any(held_out):
        held_out[max(range(len(starts)), key=lambda index: (starts[index], fingerprints[index]))] = True
    return held_out


def _tokenize(
    sessions: list[Session],
    tokenizer: Tokenizer,
    seq_len: int,
    trained_speakers: set[str] | None,
    memory: Callable[[Session], list[Turn]] | None = None,
) -> tuple[list[RenderedSession], int]:
    pieces, cut = [], 0
    for session in tqdm(sessions, desc="tokenizing", unit="session", leave=False):
        session_pieces, session_cut = split_to_fit(
            session.turns,
            tokenizer,
            seq_len,
            trained_speakers=trained_speakers,
            context=memory(session) if memory else [],
        )
        pieces += session_pieces
        cut += session_cut
    return pieces, cut


def _cache_key(
    fingerprints: list[str], tokenizer: Tokenizer, config: DataConfig, trained: set[str] | None, memory: dict | None
) -> str:
    # Keyed on the converted sessions rather than on the export file: that covers the file's content
    # and every export option at once, and the conversion runs anyway (the validation sessions and
    # the report come from it; it takes about as long as tokenizing).
    settings = {
        "format": CACHE_FORMAT,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "seq_len": config.seq_len,
        "trained_speakers": sorted(trained) if trained is not None else None,
        "val_fraction": config.val_fraction,
        "split": config.split,
        "sessions": fingerprints,
        "memory": memory,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of the files the tokenizer saves: its model, added tokens and config (legacy & co.)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save(directory)
        for file in sorted(Path(directory).iterdir()):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _save_rows(cache_file: Path, train_rows: PackedRows, val_rows: PackedRows, tokens_cut: int) -> None:
    arrays = {"tokens_cut": np.array(tokens_cut)}
    for split, rows in (("train", train_rows), ("val", val_rows)):
        arrays.update({f"{split}_{name}": getattr(rows, name) for name in ROW_ARRAYS})
    with atomic.file(cache_file) as file:  # another rank never reads half a file
        np.savez(file, **arrays)


def _load_rows(cache_file: Path, seq_len: int, vocab_size: int) -> tuple[PackedRows, PackedRows, int] | None:
    """The cached rows; None when there are none, or when the file is damaged (it is then warned about,
    and tokenizing again replaces it)."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file) as arrays:  # arrays of numbers only: it refuses pickled objects
            train_rows = PackedRows(**{name: arrays[f"train_{name}"] for name in ROW_ARRAYS})
            val_rows = PackedRows(**{name: arrays[f"val_{name}"] for name in ROW_ARRAYS})
            tokens_cut = int(arrays["tokens_cut"])
        problem = _rows_problem(train_rows, seq_len, vocab_size) or _rows_problem(val_rows, seq_len, vocab_size)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        problem = repr(error)[:200]  # one line, whatever the error
    if problem:
        print(f"warning: {cache_file}: damaged token cache ({problem}); tokenizing again", file=sys.stderr)
        return None
    return train_rows, val_rows, tokens_cut


def _rows_problem(rows: PackedRows, seq_len: int, vocab_size: int) -> str | None:
    """What would make cached rows fail in training, if anything."""
    count = len(rows.lengths)
    for name in ROW_ARRAYS:
        array = getattr(rows, name)
        if array.shape != ((count,) if name == "lengths" else (count, seq_len)) or array.dtype.kind not in "iu":
            return f"{name} is {array.dtype} of shape {array.shape}"
    limits = {
        "input_ids": (rows.input_ids, vocab_size),
        "labels": (rows.labels[rows.labels != IGNORE_INDEX], vocab_size),
        "position_ids": (rows.position_ids, seq_len),
        "document_ids": (rows.document_ids, seq_len),
        "lengths": (rows.lengths, seq_len + 1),
    }
    for name, (values, limit) in limits.items():
        if values.size and (values.min() < 0 or values.max() >= limit):
            return f"{name} out of range"
    return None
