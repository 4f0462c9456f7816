"""The Schedule-Free fields for any `TrainingArguments` subclass: `ScheduleFreeConfig` and `schedule_free_config()`.

    args = ScheduleFreeConfig(output_dir="out", optimizer_name="sf_adamw_refined", decoupling_c=200,
                              warmup_steps=0.05)     # the paper's lr 2e-3, betas (0.95, 0.99), no clipping

    from trl import SFTConfig
    SFTScheduleFreeConfig = schedule_free_config(SFTConfig)      # TRL's defaults, plus the fields below
    args = SFTScheduleFreeConfig(output_dir="out", decoupling_c=50)

learning_rate, adam_beta1/2, adam_epsilon, weight_decay and warmup_steps (an integer, or a float in
[0, 1) for a ratio of the real number of training steps) are TrainingArguments' own fields. The fields
are defined once (`ScheduleFreeFields`); `ScheduleFreeConfig` is `schedule_free_config(TrainingArguments)`.
Their defaults are decided in `sf_hf.registry` (`TRAINING_DEFAULTS`, `FIELD_DEFAULTS`): `ScheduleFreeConfig`
takes the paper's lr, betas and clipping per optimizer (its NOTE), TRL's configs keep TRL's.
"""

import logging
import sys
from dataclasses import MISSING, dataclass, field, fields

from transformers import SchedulerType, TrainingArguments

from .registry import (
    FIELD_DEFAULTS,
    OPTIMIZERS,
    TRAINING_DEFAULTS,
    get_optimizer_spec,
    lr_scheduler_type_for,
    training_defaults,
)

logger = logging.getLogger(__name__)

WEIGHT_DECAY_PARAMS = ("hf", "linear")


def _per_optimizer(name: str) -> str:
    """'2e-3 for sf_adamw_refined, sf_adamw; 1 for sf_plus; ...': a `TrainingArguments` field's default per optimizer,
    from `sf_hf.registry.TRAINING_DEFAULTS`, for `--help`."""
    by_value = {}
    for optimizer, defaults in TRAINING_DEFAULTS.items():
        by_value.setdefault(defaults[name], []).append(optimizer)
    return "; ".join(f"{value:g} for {', '.join(names)}" for value, names in by_value.items())


def _optimizer_default(name: str, help_text: str):
    """A `TrainingArguments` field whose default the optimizer decides: None (unset) becomes the optimizer's default
    in `__post_init__` (`sf_hf.registry.training_defaults`)."""
    return field(
        default=None,
        metadata={
            "help": f"{help_text} Unset: the optimizer's ({_per_optimizer(name)}); "
            "under a TRL config, the TRL config's own."
        },
    )


def _schedule_free_field(name: str, help_text: str, **metadata):
    """A Schedule-Free field, with its default from `sf_hf.registry.FIELD_DEFAULTS`."""
    return field(default=FIELD_DEFAULTS[name], metadata={"help": help_text, **metadata})


@dataclass
class ScheduleFreeFields:
    """The Schedule-Free fields, mixed in front of a `TrainingArguments` subclass by `schedule_free_config` (use that,
    or `ScheduleFreeConfig`; this class alone is no config). That class's own defaults are kept, except:

    NOTE: `lr_scheduler_type` defaults to "auto", the scheduler that goes with the optimizer: constant for the
    Schedule-Free ones (a decaying scheduler fights the averaging and applies warmup twice), the baseline's own
    schedule otherwise. Any other value is the user's: a contradicting one is refused. So TRL's default "linear"
    becomes "constant" (logged at info), while `lr_scheduler_type="linear"` set by hand is an error.

    NOTE: with `optimizer_name="sf_plus"`, `learning_rate` is the multiplier of the Polyak step: left unset it is 1.0
    (the paper's) under any parent class (TRL's SFTConfig's AdamW lr, 2e-5, would be no multiplier).

    `learning_rate`, `adam_beta1`, `adam_beta2` and `max_grad_norm` left unset take the parent class's defaults
    (TRL's), except under `ScheduleFreeConfig`, where they are the paper's for the optimizer (see its NOTE). The
    defaults live in `sf_hf.registry` (`TRAINING_DEFAULTS`, `FIELD_DEFAULTS`).
    """

    optimizer_name: str = field(
        default="sf_adamw_refined",
        metadata={"help": "The optimizer, by name (replaces `optim`).", "choices": list(OPTIMIZERS)},
    )
    # "auto" (instead of HF's and TRL's "linear"): the scheduler follows the optimizer. A decaying scheduler on top of
    # Schedule-Free fights the averaging and double-applies warmup (the optimizer warms up itself).
    lr_scheduler_type: str = field(
        default="auto",
        metadata={"help": "'auto': constant for Schedule-Free, the baseline's own schedule otherwise."},
    )
    learning_rate: float | None = _optimizer_default(
        "learning_rate", "The peak learning rate (sf_plus: the multiplier of the Polyak step)."
    )
    adam_beta1: float | None = _optimizer_default(
        "adam_beta1", "Schedule-Free: the interpolation weight b1 of y; AdamW and sf_plus: the first moment's decay."
    )
    adam_beta2: float | None = _optimizer_default("adam_beta2", "The second moment's decay.")
    max_grad_norm: float | None = _optimizer_default("max_grad_norm", "Gradient clipping (0: none).")
    decoupling_c: float = _schedule_free_field(
        "decoupling_c", "Refined SF: the decoupling constant C (x averages over ~T/C steps). 1/(1-beta1) is vanilla SF."
    )
    r: float = _schedule_free_field("r", "SF: polynomial weight t^r of the average.")
    weight_lr_power: float = _schedule_free_field("weight_lr_power", "SF: the average weights steps by lr^power.")
    sf_fused: bool | None = _schedule_free_field(
        "sf_fused", "SF: compiled single-pass step (None: when it compiles on this device)."
    )
    sf_beta1: float = _schedule_free_field(
        "sf_beta1",
        "sf_plus: the interpolation weight b of y = b x + (1 - b) z (adam_beta1/2 are Adam's moments there).",
    )
    sf_beta1_max: float = _schedule_free_field("sf_beta1_max", "sf_plus: b at the end of its annealing.")
    sf_beta1_anneal_steps: int = _schedule_free_field(
        "sf_beta1_anneal_steps",
        "sf_plus: anneal b from sf_beta1 to sf_beta1_max over this many steps (0: no annealing).",
    )
    polyak_beta: float = _schedule_free_field(
        "polyak_beta", "sf_plus: EMA decay of the gradient L1 norm in the Polyak step (0: this step's)."
    )
    c_warmup: int = _schedule_free_field(
        "c_warmup",
        "sf_plus: steps with averaging weight c = 1 (x follows z) before the average starts; 1-2x warmup_steps.",
    )
    weight_decay_params: str = field(
        default="hf",
        metadata={
            "help": "Which parameters decay: 'hf' (all but biases and norms, HF's default) or 'linear' "
            "(only nn.Linear weights, the paper's).",
            "choices": list(WEIGHT_DECAY_PARAMS),
        },
    )
    cosine_min_lr_ratio: float = _schedule_free_field("cosine_min_lr_ratio", "adamw_cosine: final lr / peak lr.")
    wsd_decay_fraction: float = _schedule_free_field("wsd_decay_fraction", "adamw_wsd: fraction of steps that decay.")
    wsd_decay_type: str = _schedule_free_field(
        "wsd_decay_type", "adamw_wsd: the shape of the final decay.", choices=["linear", "1-sqrt", "cosine"]
    )
    ema_decay: float = _schedule_free_field("ema_decay", "adamw_ema: EMA decay.")

    _sf_parent = TrainingArguments
    """The `TrainingArguments` subclass whose defaults the config keeps (set by `schedule_free_config`)."""

    def __post_init__(self):
        self._resolve_schedule_free_fields()
        super().__post_init__()
        self._check_betas()

    def _resolve_schedule_free_fields(self) -> None:
        """Checks the Schedule-Free fields and decides what they leave open (before the parent's `__post_init__`, or
        for a built config made Schedule-Free by `as_schedule_free_config`): a conflicting `optim` is refused,
        `lr_scheduler_type` follows the optimizer, unset lr, betas and clipping take their defaults."""
        self._check_choices()
        parent = self._sf_parent.__name__
        if _name(self.optim) != _name(_parent_default(self, "optim")):
            raise ValueError(
                f"optim={_name(self.optim)!r} is not used by ScheduleFreeTrainer: the "
                f"optimizer is chosen by optimizer_name (one of {', '.join(OPTIMIZERS)}). Set optimizer_name instead "
                "and leave optim unset."
            )
        chosen = _name(self.lr_scheduler_type)
        self.lr_scheduler_type = lr_scheduler_type_for(self.optimizer_name, chosen)
        parent_scheduler = _name(_parent_default(self, "lr_scheduler_type"))
        if self.is_schedule_free and chosen == "auto" and parent_scheduler != "constant":
            logger.info(
                "sf_hf: lr_scheduler_type='constant' for the schedule-free %s (%s's default %r is not "
                "used: a decaying lr fights the averaging)",
                self.optimizer_name,
                parent,
                parent_scheduler,
            )
        # learning_rate, betas, clipping left unset (None): the optimizer's (sf_hf.registry), or the parent's (TRL's)
        keeps_parent = self._sf_parent is not TrainingArguments
        defaults = training_defaults(self.optimizer_name, keeps_parent_defaults=keeps_parent)
        for name in TRAINING_DEFAULTS[self.optimizer_name]:
            if getattr(self, name) is None:
                setattr(self, name, defaults[name] if name in defaults else _parent_default(self, name))
        if not 0 < self.wsd_decay_fraction <= 1:
            raise ValueError(f"wsd_decay_fraction must be in (0, 1], got {self.wsd_decay_fraction}.")
        if not 0 <= self.cosine_min_lr_ratio <= 1:
            raise ValueError(f"cosine_min_lr_ratio must be in [0, 1], got {self.cosine_min_lr_ratio}.")
        if self.decoupling_c <= 0:
            raise ValueError(f"decoupling_c must be > 0, got {self.decoupling_c}.")

    def _check_betas(self) -> None:
        if self.optimizer_name == "sf_plus":
            if not 0 < self.sf_beta1 < 1 or not 0 < self.sf_beta1_max < 1:
                raise ValueError(
                    f"sf_beta1 and sf_beta1_max must be in (0, 1), got {self.sf_beta1}, {self.sf_beta1_max}."
                )
        elif self.is_schedule_free and not 0 < self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 is Schedule-Free's b1 and must be in (0, 1), got {self.adam_beta1}.")

    def _check_choices(self) -> None:
        """The fields with `choices` in their metadata (what `HfArgumentParser` offers on the command line) hold one
        of them: a value passed in Python is checked here."""
        for f in fields(ScheduleFreeFields):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                if f.name == "optimizer_name":
                    get_optimizer_spec(self.optimizer_name)  # its error lists the optimizers with their descriptions
                raise ValueError(f"{f.name} must be one of {tuple(choices)}, got {getattr(self, f.name)!r}.")

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


def _name(value) -> str:
    """An enum field's value (`OptimizerNames`, `SchedulerType`) or the string it was given as."""
    return str(getattr(value, "value", value))


def _parent_default(config: ScheduleFreeFields, name: str):
    """The default of field `name` in the class whose defaults `config` keeps."""
    parent_field = config._sf_parent.__dataclass_fields__[name]
    return parent_field.default_factory() if parent_field.default is MISSING else parent_field.default


@dataclass
class ScheduleFreeConfig(ScheduleFreeFields, TrainingArguments):
    """`TrainingArguments` for `ScheduleFreeTrainer`: `schedule_free_config(TrainingArguments)`, with the fields of
    `ScheduleFreeFields` (see its NOTEs and the module docstring) and the paper's setup as defaults.

    NOTE: these defaults differ from `TrainingArguments`' where left unset, by optimizer (the setup of Song et al.
    2025, arXiv:2507.09846; the table is `sf_hf.registry.TRAINING_DEFAULTS`):

    | field | sf_adamw_refined, sf_adamw | sf_plus | adamw_cosine, adamw_wsd, adamw_ema | TrainingArguments |
    |---|---|---|---|---|
    | `learning_rate` | 2e-3 | 1.0 (the Polyak step's multiplier) | 1e-3 | 5e-5 |
    | `adam_beta1`, `adam_beta2` | 0.95, 0.99 | 0.9, 0.95 | 0.9, 0.95 | 0.9, 0.999 |
    | `max_grad_norm` | 0 (no clipping) | 0 (no clipping) | 1.0 | 1.0 |
    | `lr_scheduler_type` | "constant" (warmup inside) | "constant" | the baseline's (cosine, WSD) | "linear" |

    `optimizer_name` (default "sf_adamw_refined", with `decoupling_c` 200) replaces `optim`. Weight decay (0) and
    warmup (0) stay `TrainingArguments`' (the paper's are 0.1 on linear weights and 5%: `weight_decay=0.1,
    weight_decay_params="linear", warmup_steps=0.05`, as the recipes set them).
    """


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
        cls = dataclass(
            type(
                name,
                (ScheduleFreeFields, config_cls),
                {
                    "__module__": __name__,
                    "__qualname__": name,
                    "_sf_parent": config_cls,
                    "__doc__": f"`{config_cls.__name__}` with the Schedule-Free fields (`sf_hf.schedule_free_config`).",
                },
            )
        )
        setattr(module, name, cls)
        _CONFIG_CLASSES[config_cls] = cls
    return _CONFIG_CLASSES[config_cls]


def _rebuild_config(parent: type, state: dict) -> ScheduleFreeFields:
    config = object.__new__(schedule_free_config(parent))
    config.__dict__.update(state)
    return config


def as_schedule_free_config(config: TrainingArguments) -> ScheduleFreeFields:
    """`config`, a built `TrainingArguments` (or subclass) instance, made Schedule-Free: a new instance of
    `schedule_free_config(type(config))` with `config`'s field values and the Schedule-Free fields at their defaults
    (`sf_adamw_refined`, `decoupling_c` from `sf_hf.registry.FIELD_DEFAULTS`). `config` keeps its class and values (a
    shallow copy: the two share nested objects such as `accelerator_config`).

    Every value is kept as it is (a plain `TrainingArguments`' lr 5e-5 and clipping 1.0 stay; a `ScheduleFreeConfig`
    built by hand has the paper's), so what the parent's `__post_init__` derived from them (DeepSpeed's "auto"
    values) still holds, and the parent's `__post_init__` is not run again (it need not be idempotent: TRL's
    `GRPOConfig` refuses its own derived `generation_batch_size`). One exception: an `lr_scheduler_type` left at its
    class's default ("linear") becomes "auto" (constant for Schedule-Free); another decaying one is refused, as is an
    `optim` other than the class's default (the optimizer is `optimizer_name`'s).

    Args:
        config (`TrainingArguments`): the config to convert; a Schedule-Free one is returned as it is.

    Returns:
        `ScheduleFreeFields`: an instance of `schedule_free_config(type(config))`.
    """
    if isinstance(config, ScheduleFreeFields):
        return config
    if not isinstance(config, TrainingArguments):
        raise TypeError(f"Schedule-Free trainers need TrainingArguments, got {type(config).__name__}.")
    made = object.__new__(schedule_free_config(type(config)))
    made.__dict__.update(config.__dict__)
    for f in fields(ScheduleFreeFields):
        if f.name not in type(config).__dataclass_fields__:
            setattr(made, f.name, f.default)
    if _name(made.lr_scheduler_type) == _name(_parent_default(made, "lr_scheduler_type")):
        made.lr_scheduler_type = "auto"
    made._resolve_schedule_free_fields()
    made.lr_scheduler_type = SchedulerType(made.lr_scheduler_type)  # as TrainingArguments.__post_init__ leaves it
    made._check_betas()
    return made
