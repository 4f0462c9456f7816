"""Schedule-Free optimizers. Nothing here imports transformers."""

from .conversion import x_from_y, x_to_y_, y_from_x, y_to_x_
from .reference import ReferenceScheduleFreeAdamW
from .schedule_free import RefinedScheduleFreeAdamW, ScheduleFreeAdamW

__all__ = [
    "RefinedScheduleFreeAdamW",
    "ReferenceScheduleFreeAdamW",
    "ScheduleFreeAdamW",
    "x_from_y",
    "x_to_y_",
    "y_from_x",
    "y_to_x_",
]
