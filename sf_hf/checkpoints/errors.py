"""The exceptions of a checkpoint that cannot be used or saved (each message names the file and what is wrong),
and `_first_line`, the short form of an underlying error that those messages quote.

One hierarchy for the whole package: `CheckpointError` is what the checkpoint pipeline (`sf_hf.pipeline`) raises
too, and what `sf-hf` prints without a traceback.

    CheckpointError                      a checkpoint that cannot be used or written
    +-- CheckpointCorruptError           missing, truncated or unreadable files, or not this run's (a ValueError)
    |   +-- UnsafeCheckpointError        a pickle that would run code when loaded
    +-- CheckpointSaveError              a write that failed: disk full, read-only folder (an OSError)
"""


class CheckpointError(Exception):
    """A checkpoint that cannot be used: incomplete, corrupt, from another run or optimizer, or with weights that
    cannot be made x. The message says what is wrong and what to do."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint that is missing files, truncated, unreadable, or does not fit the run; the message names
    the file and what is wrong."""


class UnsafeCheckpointError(CheckpointCorruptError):
    """A pickled checkpoint file that would import or call code when loaded: refused, never executed."""


class CheckpointSaveError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, read-only directory...); names the folder and the last intact
    checkpoint. Nothing was left under the name `checkpoint-N`."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
