"""`ScheduleFreeConfig`: `TrainingArguments` plus the Schedule-Free fields.

    args = ScheduleFreeConfig(output_dir="out", optimizer_name="sf_adamw_refined", decoupling_c=200,
                              learning_rate=2e-3, adam_beta1=0.95, adam_beta2=0.99, warmup_steps=0.05)

learning_rate, adam_beta1/2, adam_epsilon, weight_decay and warmup_steps (an integer, or a float in
[0, 1) for a ratio of the real number of training steps) are TrainingArguments' own fields.
"""

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from .registry import OPTIMIZERS, SF_FIELD_DEFAULTS, get_optimizer_spec

WEIGHT_DECAY_PARAMS = ("hf", "linear")
SF_PLUS_HF_LEARNING_RATE = 5e-5  # TrainingArguments' default learning_rate (see the NOTE below)


@dataclass
class ScheduleFreeConfig(TrainingArguments):
    """`TrainingArguments` for `ScheduleFreeTrainer`. Only the fields below are new; see the module docstring.

    NOTE: with `optimizer_name="sf_plus"`, `learning_rate` is the multiplier of the Polyak step (the paper's 1.0):
    left at TrainingArguments' default (5e-5, an AdamW lr) it becomes 1.0.
    """

    optimizer_name: str = field(
        default="sf_adamw_refined",
        metadata={"help": f"The optimizer, by name: one of {', '.join(OPTIMIZERS)}. Replaces `optim`."},
    )
    # "auto" (instead of HF's "linear"): the scheduler follows the optimizer. A decaying scheduler on top of
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

    def __post_init__(self):
        spec = get_optimizer_spec(self.optimizer_name)
        default_optim = TrainingArguments.__dataclass_fields__["optim"].default
        if str(getattr(self.optim, "value", self.optim)) != str(getattr(default_optim, "value", default_optim)):
            raise ValueError(
                f"optim={str(getattr(self.optim, 'value', self.optim))!r} is not used by ScheduleFreeTrainer: the "
                f"optimizer is chosen by optimizer_name (one of {', '.join(OPTIMIZERS)}). Set optimizer_name instead "
                "and leave optim unset."
            )
        if spec.schedule_free:
            if self.lr_scheduler_type not in ("auto", "constant"):
                raise ValueError(
                    f"optimizer_name={self.optimizer_name!r} is schedule-free: it needs no lr schedule, and "
                    f"lr_scheduler_type={self.lr_scheduler_type!r} would fight its averaging. Leave lr_scheduler_type "
                    "unset ('auto') or 'constant'; warmup_steps goes into the optimizer."
                )
            self.lr_scheduler_type = "constant"
        elif self.lr_scheduler_type == "auto":
            self.lr_scheduler_type = spec.scheduler(self, 1)[0]
        elif self.lr_scheduler_type != spec.scheduler(self, 1)[0]:
            raise ValueError(
                f"optimizer_name={self.optimizer_name!r} defines its own schedule ({spec.scheduler(self, 1)[0]}); "
                f"lr_scheduler_type={self.lr_scheduler_type!r} contradicts it. Leave lr_scheduler_type unset."
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
        if self.optimizer_name == "sf_plus" and self.learning_rate == SF_PLUS_HF_LEARNING_RATE:
            self.learning_rate = 1.0
        super().__post_init__()
        if self.optimizer_name == "sf_plus":
            if not 0 < self.sf_beta1 < 1 or not 0 < self.sf_beta1_max < 1:
                raise ValueError(f"sf_beta1 and sf_beta1_max must be in (0, 1), got {self.sf_beta1}, "
                                 f"{self.sf_beta1_max}.")
        elif spec.schedule_free and not 0 < self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 is Schedule-Free's b1 and must be in (0, 1), got {self.adam_beta1}.")

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
