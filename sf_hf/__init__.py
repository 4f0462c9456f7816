"""sf_hf: Schedule-Free AdamW and refined Schedule-Free AdamW for the Hugging Face stack."""

from .optim import (
    ReferenceScheduleFreeAdamW,
    RefinedScheduleFreeAdamW,
    ScheduleFreeAdamW,
    x_from_y,
    y_from_x,
)

__version__ = "0.1.0"

__all__ = [
    "RefinedScheduleFreeAdamW",
    "ReferenceScheduleFreeAdamW",
    "ScheduleFreeAdamW",
    "x_from_y",
    "y_from_x",
]
