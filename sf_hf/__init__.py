"""sf_hf: Schedule-Free AdamW, refined Schedule-Free AdamW and ScheduleFree+ for the Hugging Face stack."""

from .configs import ScheduleFreeConfig, schedule_free_config
from .optim import (
    ReferenceScheduleFreeAdamW,
    RefinedScheduleFreeAdamW,
    ScheduleFreeAdamW,
    ScheduleFreePlusAdamW,
    x_from_y,
    y_from_x,
)
from .registry import OPTIMIZERS, get_optimizer_spec, optimizer_cls_and_kwargs
from .trainer import ScheduleFreeMixin, ScheduleFreeTrainer, schedule_free_trainer

__version__ = "0.2.0"

__all__ = [
    "OPTIMIZERS",
    "ScheduleFreeConfig",
    "ScheduleFreeMixin",
    "ScheduleFreeTrainer",
    "schedule_free_config",
    "schedule_free_trainer",
    "get_optimizer_spec",
    "optimizer_cls_and_kwargs",
    "RefinedScheduleFreeAdamW",
    "ReferenceScheduleFreeAdamW",
    "ScheduleFreeAdamW",
    "ScheduleFreePlusAdamW",
    "x_from_y",
    "y_from_x",
]
