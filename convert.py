"""Turn a Telegram Desktop export into conversation sessions, and show what it holds before training on it.

    python convert.py ~/Downloads/Telegram\\ Desktop/DataExport_2024-05-01 -o sessions.jsonl

train.py reads an export itself; this writes the sessions it would learn from (one JSON object a line) and
prints the summary: whom it clones, what was kept and skipped and why, and who speaks most. It takes the
same data flags as train.py.
"""

import argparse
import sys
from datetime import datetime, timezone

from core.cli import program
from core.flags import from_args, non_negative_int
from data.conversion import ExportOptions, add_export_args, plural
from data.sessions import DataError, Session, write_sessions
from data.sources import load_sessions


def _format_session(session: Session) -> str:
    when = datetime.fromtimestamp(session.start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"=== {session.chat or 'session'} ({session.chat_type or 'no type'}), {when}"]
    for turn in session.turns:
        lines.append(f"[{turn.speaker}]")
        lines += [f">>> {message}" for message in turn.messages]
    return "\n".join(lines)


@program
def main(argv: list[str] | None = None) -> int:
    # Names and messages are in any language: never crash on a console that cannot show them.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")
    parser = argparse.ArgumentParser(
        prog="python convert.py",
        description="Turn a Telegram Desktop export (Settings > Advanced > Export Telegram data, "
        "machine-readable JSON) into conversation sessions, one JSON object a line.",
    )
    parser.add_argument(
        "export", help="result.json, the folder holding it, or a sessions file (ours or doppelganger's)"
    )
    parser.add_argument(
        "-o",
        "--output",
        help="where to write the sessions (JSONL); without it nothing "
        "is written, and the summary (and --preview) show what would be",
    )
    add_export_args(parser)
    parser.add_argument(
        "--preview",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="print the first N sessions; they are private data, so only when asked (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sessions, report = load_sessions(args.export, from_args(ExportOptions, args))
    if args.output is not None:
        try:
            write_sessions(sessions, args.output)
        except OSError as error:
            raise DataError(f"{args.output}: cannot write: {error.strerror or error}") from None
    print(report.summary())
    if args.output is None:
        print(f"wrote nothing (no -o): {plural(len(sessions), 'session')}")
    else:
        print(f"wrote {plural(len(sessions), 'session')} to {args.output}")
    for session in sessions[: args.preview]:
        print(_format_session(session))
    return 0


if __name__ == "__main__":
    sys.exit(main())
