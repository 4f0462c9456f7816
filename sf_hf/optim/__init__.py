"""Schedule-Free optimizers. Nothing here imports transformers."""

from .conversion import x_from_y, x_to_y_, y_from_x, y_to_x_
from .reference import ReferenceScheduleFreeAdamW, ReferenceScheduleFreePlusAdamW
from .schedule_free import RefinedScheduleFreeAdamW, ScheduleFreeAdamW
from .schedule_free_plus import ScheduleFreePlusAdamW

__all__ = [
    "RefinedScheduleFreeAdamW",
    "ReferenceScheduleFreeAdamW",
    "ReferenceScheduleFreePlusAdamW",
    "ScheduleFreeAdamW",
    "ScheduleFreePlusAdamW",
    "x_from_y",
    "x_to_y_",
    "y_from_x",
    "y_to_x_",
]
