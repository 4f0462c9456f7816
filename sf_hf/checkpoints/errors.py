"""The exceptions of a checkpoint that cannot be used or saved (each message names the file and what is wrong),
and `_first_line`, the short form of an underlying error that those messages quote.
"""


class CheckpointCorruptError(ValueError):
    """A checkpoint that is missing files, truncated, unreadable, or does not fit the run; the message names
    the file and what is wrong."""


class UnsafeCheckpointError(CheckpointCorruptError):
    """A pickled checkpoint file that would import or call code when loaded: refused, never executed."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, read-only directory...); names the folder and the last intact
    checkpoint. Nothing was left under the name `checkpoint-N`."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
