"""What every program's `main` shares: owner-only files, one line for a user's error, and quiet
output into a reader that stops early."""

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from core import atomic
from core.errors import TwinError

Result = TypeVar("Result")


def program(main: Callable[..., Result]) -> Callable[..., Result]:
    """Wrap a program's `main`: every file it creates is private to its owner; a TwinError ends it with
    its one line and status 2; Ctrl-C ends it with one line and status 130, as a shell reports SIGINT; and `python program.py | head` ends quietly with status 1 when `head`
    stops reading, instead of with a BrokenPipeError traceback. Status 1, not 0: the program stopped
    before its end (a training run, say, leaves only the checkpoints it had written)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> Result:
        atomic.private_files()
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # output still buffered fails here, where it is caught, not at exit
            return result
        except TwinError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("\nstopped (Ctrl-C)", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:
            # Python flushes stdout once more on the way out; into devnull, that flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)

    return run
