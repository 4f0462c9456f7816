"""The errors of publishing and of the pipeline above it: each message says what is wrong and what to do; `sf-hf`
prints it and exits 1. `CheckpointError` is `sf_hf.checkpoints`' (one hierarchy for checkpoints, re-exported).
"""

from ..checkpoints.errors import CheckpointError

__all__ = ["CheckpointError", "PipelineError", "PushError"]


class PipelineError(Exception):
    """A run, data or Hub problem the user can fix (the CLI prints it without a traceback)."""


class PushError(PipelineError):
    """An upload that was refused or failed; nothing local was changed."""
