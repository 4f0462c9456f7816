"""The Schedule-Free fields for any `TrainingArguments` subclass: `ScheduleFreeConfig` and `schedule_free_config()`.

    args = ScheduleFreeConfig(output_dir="out", optimizer_name="sf_adamw_refined", decoupling_c=200,
                              learning_rate=2e-3, adam_beta1=0.95, adam_beta2=0.99, warmup_steps=0.05)

    from trl import SFTConfig
    SFTScheduleFreeConfig = schedule_free_config(SFTConfig)      # TRL's defaults, plus the fields below
    args = SFTScheduleFreeConfig(output_dir="out", decoupling_c=50)

learning_rate, adam_beta1/2, adam_epsilon, weight_decay and warmup_steps (an integer, or a float in
[0, 1) for a ratio of the real number of training steps) are TrainingArguments' own fields. The fields
are defined once (`ScheduleFreeFields`); `ScheduleFreeConfig` is `schedule_free_config(TrainingArguments)`.
"""

import logging
import sys
from dataclasses import MISSING, dataclass, field
from typing import Optional

from transformers import TrainingArguments

from .registry import OPTIMIZERS, SF_FIELD_DEFAULTS, get_optimizer_spec

logger = logging.getLogger(__name__)

WEIGHT_DECAY_PARAMS = ("hf", "linear")


@dataclass
class ScheduleFreeFields:
    """The Schedule-Free fields, mixed in front of a `TrainingArguments` subclass by `schedule_free_config` (use that,
    or `ScheduleFreeConfig`; this class alone is no config). That class's own defaults are kept, except:

    NOTE: `lr_scheduler_type` defaults to "auto", the scheduler that goes with the optimizer: constant for the
    Schedule-Free ones (a decaying scheduler fights the averaging and applies warmup twice), the baseline's own
    schedule otherwise. Any other value is the user's: a contradicting one is refused. So TRL's default "linear"
    becomes "constant" (logged at info), while `lr_scheduler_type="linear"` set by hand is an error.

    NOTE: with `optimizer_name="sf_plus"`, `learning_rate` is the multiplier of the Polyak step (the paper's 1.0):
    left at the parent class's default (an AdamW lr: TrainingArguments' 5e-5, TRL's SFTConfig 2e-5) it becomes 1.0.
    """

    optimizer_name: str = field(
        default="sf_adamw_refined",
        metadata={"help": f"The optimizer, by name: one of {', '.join(OPTIMIZERS)}. Replaces `optim`."},
    )
    # "auto" (instead of HF's and TRL's "linear"): the scheduler follows the optimizer. A decaying scheduler on top of
    # Schedule-Free fights the averaging and double-applies warmup (../shared/PAPER.md, known weak spots).
    lr_scheduler_type: str = field(
        default="auto",
        metadata={"help": "'auto': constant for Schedule-Free, the baseline's own schedule otherwise."},
    )
    decoupling_c: float = field(
        default=SF_FIELD_DEFAULTS["decoupling_c"],
        metadata={"help": "Refined SF: the decoupling constant C (x averages over ~T/C steps). 1/(1-beta1) is "
                          "vanilla SF."},
    )
    r: float = field(default=SF_FIELD_DEFAULTS["r"], metadata={"help": "SF: polynomial weight t^r of the average."})
    weight_lr_power: float = field(
        default=SF_FIELD_DEFAULTS["weight_lr_power"], metadata={"help": "SF: the average weights steps by lr^power."}
    )
    sf_fused: Optional[bool] = field(
        default=SF_FIELD_DEFAULTS["sf_fused"],
        metadata={"help": "SF: compiled single-pass step (None: when it compiles on this device)."},
    )
    sf_beta1: float = field(
        default=SF_FIELD_DEFAULTS["sf_beta1"],
        metadata={"help": "sf_plus: the interpolation weight b of y = b x + (1 - b) z (adam_beta1/2 are Adam's "
                          "moments there)."},
    )
    sf_beta1_max: float = field(
        default=SF_FIELD_DEFAULTS["sf_beta1_max"], metadata={"help": "sf_plus: b at the end of its annealing."}
    )
    sf_beta1_anneal_steps: int = field(
        default=SF_FIELD_DEFAULTS["sf_beta1_anneal_steps"],
        metadata={"help": "sf_plus: anneal b from sf_beta1 to sf_beta1_max over this many steps (0: no annealing)."},
    )
    polyak_beta: float = field(
        default=SF_FIELD_DEFAULTS["polyak_beta"],
        metadata={"help": "sf_plus: EMA decay of the gradient L1 norm in the Polyak step (0: this step's)."},
    )
    c_warmup: int = field(
        default=SF_FIELD_DEFAULTS["c_warmup"],
        metadata={"help": "sf_plus: steps with averaging weight c = 1 (x follows z) before the average starts; "
                          "1-2x warmup_steps."},
    )
    weight_decay_params: str = field(
        default="hf",
        metadata={"help": "Which parameters decay: 'hf' (all but biases and norms, HF's default) or 'linear' "
                          "(only nn.Linear weights, the paper's)."},
    )
    cosine_min_lr_ratio: float = field(
        default=SF_FIELD_DEFAULTS["cosine_min_lr_ratio"], metadata={"help": "adamw_cosine: final lr / peak lr."}
    )
    wsd_decay_fraction: float = field(
        default=SF_FIELD_DEFAULTS["wsd_decay_fraction"], metadata={"help": "adamw_wsd: fraction of steps that decay."}
    )
    wsd_decay_type: str = field(
        default=SF_FIELD_DEFAULTS["wsd_decay_type"], metadata={"help": "adamw_wsd: 'linear' or '1-sqrt' decay."}
    )
    ema_decay: float = field(default=SF_FIELD_DEFAULTS["ema_decay"], metadata={"help": "adamw_ema: EMA decay."})

    _sf_parent = TrainingArguments
    """The `TrainingArguments` subclass whose defaults the config keeps (set by `schedule_free_config`)."""

    def __post_init__(self):
        spec = get_optimizer_spec(self.optimizer_name)
        parent = self._sf_parent.__name__
        default_optim = _parent_default(self, "optim")
        if str(getattr(self.optim, "value", self.optim)) != str(getattr(default_optim, "value", default_optim)):
            raise ValueError(
                f"optim={str(getattr(self.optim, 'value', self.optim))!r} is not used by ScheduleFreeTrainer: the "
                f"optimizer is chosen by optimizer_name (one of {', '.join(OPTIMIZERS)}). Set optimizer_name instead "
                "and leave optim unset."
            )
        chosen = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if spec.schedule_free:
            if chosen not in ("auto", "constant"):
                raise ValueError(
                    f"optimizer_name={self.optimizer_name!r} is schedule-free: it needs no lr schedule, and "
                    f"lr_scheduler_type={chosen!r} would fight its averaging. Leave lr_scheduler_type "
                    "unset ('auto') or 'constant'; warmup_steps goes into the optimizer."
                )
            parent_default = _parent_default(self, "lr_scheduler_type")
            parent_default = str(getattr(parent_default, "value", parent_default))
            if chosen == "auto" and parent_default != "constant":
                logger.info("sf_hf: lr_scheduler_type='constant' for the schedule-free %s (%s's default %r is not "
                            "used: a decaying lr fights the averaging)", self.optimizer_name, parent, parent_default)
            self.lr_scheduler_type = "constant"
        elif chosen == "auto":
            self.lr_scheduler_type = spec.scheduler(self, 1)[0]
        elif chosen != spec.scheduler(self, 1)[0]:
            raise ValueError(
                f"optimizer_name={self.optimizer_name!r} defines its own schedule ({spec.scheduler(self, 1)[0]}); "
                f"lr_scheduler_type={chosen!r} contradicts it. Leave lr_scheduler_type unset."
            )
        if self.weight_decay_params not in WEIGHT_DECAY_PARAMS:
            raise ValueError(
                f"weight_decay_params must be one of {WEIGHT_DECAY_PARAMS}, got {self.weight_decay_params!r}."
            )
        if not 0 < self.wsd_decay_fraction <= 1:
            raise ValueError(f"wsd_decay_fraction must be in (0, 1], got {self.wsd_decay_fraction}.")
        if self.wsd_decay_type not in ("linear", "1-sqrt", "cosine"):
            raise ValueError(f"wsd_decay_type must be 'linear', '1-sqrt' or 'cosine', got {self.wsd_decay_type!r}.")
        if not 0 <= self.cosine_min_lr_ratio <= 1:
            raise ValueError(f"cosine_min_lr_ratio must be in [0, 1], got {self.cosine_min_lr_ratio}.")
        if self.decoupling_c <= 0:
            raise ValueError(f"decoupling_c must be > 0, got {self.decoupling_c}.")
        if self.optimizer_name == "sf_plus" and self.learning_rate == _parent_default(self, "learning_rate"):
            self.learning_rate = 1.0
        super().__post_init__()
        if self.optimizer_name == "sf_plus":
            if not 0 < self.sf_beta1 < 1 or not 0 < self.sf_beta1_max < 1:
                raise ValueError(f"sf_beta1 and sf_beta1_max must be in (0, 1), got {self.sf_beta1}, "
                                 f"{self.sf_beta1_max}.")
        elif spec.schedule_free and not 0 < self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 is Schedule-Free's b1 and must be in (0, 1), got {self.adam_beta1}.")

    def __reduce__(self):
        """Pickled as (the parent class, the state): `schedule_free_config(parent)` rebuilds the class on loading."""
        return _rebuild_config, (self._sf_parent, self.__getstate__())

    def __getstate__(self) -> dict:
        """Pickles (the Trainer's `training_args.bin`, uploaded with every checkpoint push) never hold a token."""
        state = self.__dict__.copy()
        for key in state:
            if key.endswith("_token"):
                state[key] = None
        return state

    @property
    def is_schedule_free(self) -> bool:
        """True for the Schedule-Free optimizers (x/y weights, constant lr, warmup in the optimizer)."""
        return get_optimizer_spec(self.optimizer_name).schedule_free


def _parent_default(config: ScheduleFreeFields, name: str):
    """The default of field `name` in the class whose defaults `config` keeps."""
    parent_field = config._sf_parent.__dataclass_fields__[name]
    return parent_field.default_factory() if parent_field.default is MISSING else parent_field.default


@dataclass
class ScheduleFreeConfig(ScheduleFreeFields, TrainingArguments):
    """`TrainingArguments` for `ScheduleFreeTrainer`: `schedule_free_config(TrainingArguments)`. Only the fields of
    `ScheduleFreeFields` are new (see its NOTEs and the module docstring)."""


_CONFIG_CLASSES = {TrainingArguments: ScheduleFreeConfig}


def schedule_free_config(config_cls: type) -> type:
    """The config class with the Schedule-Free fields for `config_cls`, a `TrainingArguments` subclass (TRL's
    `SFTConfig`, `DPOConfig`, `GRPOConfig`, ...), for `sf_hf.ScheduleFreeMixin`.

    It subclasses `config_cls` and keeps all its defaults (TRL's learning rate, bf16, gradient checkpointing,
    logging_steps) but `lr_scheduler_type`, which follows the optimizer (see `ScheduleFreeFields`). The class is made
    once per `config_cls` and named `ScheduleFree<Name>` in this module; `schedule_free_config(TrainingArguments)`
    is `ScheduleFreeConfig`.

    Args:
        config_cls (`type`): a dataclass subclass of `transformers.TrainingArguments`.

    Returns:
        `type`: the dataclass `ScheduleFree<Name>(ScheduleFreeFields, config_cls)`.
    """
    if isinstance(config_cls, type) and issubclass(config_cls, ScheduleFreeFields):
        return config_cls
    if not (isinstance(config_cls, type) and issubclass(config_cls, TrainingArguments)):
        raise TypeError(f"schedule_free_config needs a TrainingArguments subclass, got {config_cls!r}.")
    if config_cls not in _CONFIG_CLASSES:
        module = sys.modules[__name__]
        name = f"ScheduleFree{config_cls.__name__}"
        while hasattr(module, name):  # another parent of the same name: a name of its own
            name += "_"
        cls = dataclass(type(name, (ScheduleFreeFields, config_cls), {
            "__module__": __name__, "__qualname__": name, "_sf_parent": config_cls,
            "__doc__": f"`{config_cls.__name__}` with the Schedule-Free fields (`sf_hf.schedule_free_config`).",
        }))
        setattr(module, name, cls)
        _CONFIG_CLASSES[config_cls] = cls
    return _CONFIG_CLASSES[config_cls]


def _rebuild_config(parent: type, state: dict) -> ScheduleFreeFields:
    config = object.__new__(schedule_free_config(parent))
    config.__dict__.update(state)
    return config
