"""The one error base of twin: a problem the user can fix.

Its message is the single line a program prints (after `error: `) before it exits with status 2; the
program entry in core.cli catches it, once, for every program. Each room has its own kind
(DataError, CheckpointError, TokenizerError, AdapterError, TrainingError, EvaluationError), so a
caller can tell them apart; all are ValueErrors, as a bad file or flag is a bad value.
"""


class TwinError(ValueError):
    """Something in a file, a folder or a flag that twin cannot use; the message says what and where."""
