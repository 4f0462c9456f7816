"""The pipeline's errors (`sf_hf.publishing.errors`, one hierarchy from the trainer's pushes up): each message says
what is wrong and what to do; `sf-hf` prints it and exits 1."""

from ..publishing.errors import CheckpointError, PipelineError, PushError

__all__ = ["CheckpointError", "PipelineError", "PushError"]
