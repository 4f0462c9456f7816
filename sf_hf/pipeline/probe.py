"""Deprecated alias of `sf_hf.probe` (the decay probe is a research tool, not a pipeline step); removed in the next
release. Import from `sf_hf.probe` instead."""

import warnings

from ..probe import (  # noqa: F401
    DEFAULT_DECAY_FRACTION,
    DEFAULT_TOLERANCE,
    DecayBranchTrainer,
    ProbeResult,
    infer_weight_decay_params,
    load_probe_data,
    probe_checkpoint,
)

warnings.warn(
    "sf_hf.pipeline.probe moved to sf_hf.probe; the old path goes in the next release.", FutureWarning, stacklevel=2
)
