"""The pipeline's errors: each message says what is wrong and what to do; `sf-hf` prints it and exits 1."""


class PipelineError(Exception):
    """A run, checkpoint or Hub problem the user can fix (the CLI prints it without a traceback)."""


class CheckpointError(PipelineError):
    """A checkpoint that cannot be used: incomplete, corrupt, or with weights that cannot be made x."""


class PushError(PipelineError):
    """An upload that was refused or failed; nothing local was changed."""
