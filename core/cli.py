"""What every program's `main` shares about its console: output piped into a reader that stops early."""
import functools
import os
import sys
from typing import Callable, TypeVar

Result = TypeVar("Result")


def quiet_when_the_reader_leaves(main: Callable[..., Result]) -> Callable[..., Result]:
    """Wrap a program's `main` so that `python program.py | head` ends quietly with status 1 when
    `head` stops reading, instead of with a BrokenPipeError traceback. Status 1, not 0: the program
    stopped before its end (a training run, say, leaves only the checkpoints it had written)."""
    @functools.wraps(main)
    def run(*args, **kwargs) -> Result:
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # output still buffered fails here, where it is caught, not at exit
            return result
        except BrokenPipeError:
            # Python flushes stdout once more on the way out; into devnull, that flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    return run
