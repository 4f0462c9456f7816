"""Optimizers by name: the Schedule-Free variants (SF-AdamW, refined, ScheduleFree+) and the paper's AdamW baselines.

    from transformers import Trainer
    from sf_hf import optimizer_cls_and_kwargs
    trainer = Trainer(model, args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, num_training_steps=1000))

Each entry says how to build the optimizer from `TrainingArguments` (reusing learning_rate,
adam_beta1/2, adam_epsilon, weight_decay, warmup_steps), which lr scheduler goes with it, and its defaults.

This file is the one place where two things are decided:

* **The defaults.** `TRAINING_DEFAULTS`: per optimizer, the `TrainingArguments` fields the paper sets (lr, betas,
  gradient clipping; the setup of Song et al. 2025, arXiv:2507.09846); `ScheduleFreeConfig` takes them where the
  user set nothing (`training_defaults`). `FIELD_DEFAULTS`: the Schedule-Free fields' defaults
  (`ScheduleFreeFields` declares them from it; a plain `TrainingArguments` without the fields gets them here). The
  optimizer classes' own signature defaults are the same numbers (tests/test_registry.py holds them together).
* **The lr schedule and warmup.** `lr_schedule`: which scheduler (constant for Schedule-Free, whose warmup is
  inside the optimizer; the baselines' cosine or WSD, with the warmup in the scheduler), with which warmup where;
  `lr_scheduler_type_for` resolves a config's `lr_scheduler_type` ("auto" or the user's) against it. The config,
  the trainer and `optimizer_cls_and_kwargs` only call these.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .optim import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, ScheduleFreePlusAdamW
from .optim.ema import AdamWWithEMA

# The paper's setup (Song et al. 2025, arXiv:2507.09846): SF-AdamW lr 2e-3, betas (0.95, 0.99), no clipping; AdamW
# lr 1e-3, betas (0.9, 0.95), clipping 1.0. ScheduleFree+: lr is the Polyak step's multiplier (1, the authors'), Adam
# betas (0.9, 0.95) as in their code, no clipping.
_SF = dict(learning_rate=2e-3, adam_beta1=0.95, adam_beta2=0.99, max_grad_norm=0.0)
_ADAMW = dict(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0)
TRAINING_DEFAULTS: dict[str, dict] = {
    "sf_adamw_refined": _SF,
    "sf_adamw": _SF,
    "sf_plus": dict(learning_rate=1.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=0.0),
    "adamw_cosine": _ADAMW,
    "adamw_wsd": _ADAMW,
    "adamw_ema": _ADAMW,
}
"""Per optimizer, the `TrainingArguments` fields it sets when the user sets nothing (see `training_defaults`)."""

REDEFINED_FIELDS: dict[str, tuple] = {"sf_plus": ("learning_rate",)}
"""Fields whose meaning the optimizer changes: their default is the optimizer's under any parent config (a TRL
config's AdamW lr, 2e-5, is no Polyak multiplier)."""

FIELD_DEFAULTS = dict(
    decoupling_c=200.0,
    r=0.0,
    weight_lr_power=2.0,
    sf_fused=None,
    ema_decay=0.99,
    cosine_min_lr_ratio=0.1,
    wsd_decay_fraction=0.2,
    wsd_decay_type="linear",
    # ScheduleFree+: the defaults of the authors' AdamCScheduleFreePlusPaper
    sf_beta1=0.9,
    sf_beta1_max=0.965,
    sf_beta1_anneal_steps=0,
    polyak_beta=0.0,
    c_warmup=0,
)
"""The Schedule-Free fields' defaults (`ScheduleFreeFields` declares them from here)."""


def training_defaults(optimizer_name: str, keeps_parent_defaults: bool = False) -> dict:
    """The `TrainingArguments` fields `optimizer_name` sets where the user set nothing.

    Args:
        optimizer_name (`str`): a registered optimizer.
        keeps_parent_defaults (`bool`): the config keeps its parent's defaults (TRL's configs): only the fields the
            optimizer gives another meaning (`REDEFINED_FIELDS`: sf_plus's lr) are set.

    Returns:
        `dict`: field name -> value.
    """
    defaults = TRAINING_DEFAULTS[get_optimizer_spec(optimizer_name).name]
    if keeps_parent_defaults:
        return {name: defaults[name] for name in REDEFINED_FIELDS.get(optimizer_name, ())}
    return dict(defaults)


def _field(args: TrainingArguments, name: str):
    return getattr(args, name, FIELD_DEFAULTS[name])


def resolve_warmup_steps(args: TrainingArguments, num_training_steps: int | None) -> int:
    """`warmup_steps` as an integer: a float in [0, 1) is a ratio of the real number of training steps."""
    if args.warmup_steps >= 1 or args.warmup_steps == 0:
        return int(args.warmup_steps)
    total = num_training_steps if num_training_steps else (args.max_steps if args.max_steps > 0 else None)
    if not total:
        raise ValueError(
            f"warmup_steps={args.warmup_steps} is a ratio of the training steps, which are not known yet: pass "
            "num_training_steps=... or set max_steps, or give warmup_steps as an integer number of steps."
        )
    return args.get_warmup_steps(total)


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer.

    Attributes:
        name (`str`): the registry key.
        description (`str`): one line for `--help` and error messages.
        schedule_free (`bool`): warmup lives in the optimizer and the lr scheduler must be constant.
        build (`Callable`): `(args, num_training_steps) -> (optimizer_cls, kwargs)`.
        scheduler (`str`): the transformers lr scheduler that goes with it (`lr_scheduler_type`).
        saved_weights (`str`): what `ScheduleFreeTrainer` evaluates, saves and publishes, as `schedule_free.json`
            names it: `"x"` (the Schedule-Free average), `"ema"` (the EMA of the weights) or `"plain"` (the
            optimizer's only iterate: there is no average to switch to).
        scheduler_kwargs (`Callable`, *optional*): `(args, num_training_steps) -> scheduler_specific_kwargs`.
    """

    name: str
    description: str
    schedule_free: bool
    build: Callable[[TrainingArguments, int | None], tuple[type, dict]]
    scheduler: str
    saved_weights: str
    scheduler_kwargs: Callable[[TrainingArguments, int], dict] = field(default=lambda args, steps: {})


def _sf_kwargs(args: TrainingArguments, num_training_steps: int | None) -> dict:
    return dict(
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        warmup_steps=resolve_warmup_steps(args, num_training_steps),
        r=_field(args, "r"),
        weight_lr_power=_field(args, "weight_lr_power"),
        fused=_field(args, "sf_fused"),
    )


def _sf_plus_kwargs(args: TrainingArguments, num_training_steps: int | None) -> dict:
    """ScheduleFree+: `learning_rate` is the multiplier of the Polyak step, the Adam betas are its inner momentum."""
    kwargs = _sf_kwargs(args, num_training_steps)
    kwargs.update(
        {
            name: _field(args, name)
            for name in ("sf_beta1", "sf_beta1_max", "sf_beta1_anneal_steps", "polyak_beta", "c_warmup")
        }
    )
    return kwargs


def _adamw_kwargs(args: TrainingArguments) -> dict:
    return dict(
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "sf_adamw_refined",
            "refined Schedule-Free AdamW (Song et al. 2025), window ~T/decoupling_c",
            True,
            lambda a, n: (RefinedScheduleFreeAdamW, dict(_sf_kwargs(a, n), decoupling_c=_field(a, "decoupling_c"))),
            "constant",
            "x",
        ),
        OptimizerSpec(
            "sf_adamw",
            "Schedule-Free AdamW (Defazio et al. 2024)",
            True,
            lambda a, n: (ScheduleFreeAdamW, _sf_kwargs(a, n)),
            "constant",
            "x",
        ),
        OptimizerSpec(
            "sf_plus",
            "ScheduleFree+ (Defazio 2026): learning-rate-free Polyak step, Adam momentum, AdamC decay",
            True,
            lambda a, n: (ScheduleFreePlusAdamW, _sf_plus_kwargs(a, n)),
            "constant",
            "x",
        ),
        OptimizerSpec(
            "adamw_cosine",
            "AdamW, warmup then cosine decay to cosine_min_lr_ratio of the peak",
            False,
            lambda a, n: (torch.optim.AdamW, _adamw_kwargs(a)),
            "cosine_with_min_lr",
            "plain",
            lambda a, n: {"min_lr_rate": _field(a, "cosine_min_lr_ratio")},
        ),
        OptimizerSpec(
            "adamw_wsd",
            "AdamW, warmup-stable-decay: constant, then a final decay of wsd_decay_fraction",
            False,
            lambda a, n: (torch.optim.AdamW, _adamw_kwargs(a)),
            "warmup_stable_decay",
            "plain",
            lambda a, n: {
                "num_decay_steps": max(1, round(_field(a, "wsd_decay_fraction") * n)),
                "decay_type": _field(a, "wsd_decay_type"),
            },
        ),
        OptimizerSpec(
            "adamw_ema",
            "AdamW at constant lr with an EMA of the weights (evaluated and saved at the EMA)",
            False,
            lambda a, n: (AdamWWithEMA, dict(_adamw_kwargs(a), ema_decay=_field(a, "ema_decay"))),
            "constant_with_warmup",
            "ema",
        ),
    )
}


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The registered optimizer `name`; an unknown name is a `ValueError` that lists the known ones."""
    if name not in OPTIMIZERS:
        known = ", ".join(f"{n} ({s.description})" for n, s in OPTIMIZERS.items())
        raise ValueError(f"Unknown optimizer_name {name!r}. Known optimizers: {known}.")
    return OPTIMIZERS[name]


# ---------------------------------------------------------------------- the lr schedule and warmup


@dataclass(frozen=True)
class LrSchedule:
    """Which lr scheduler a run gets, and where its warmup happens.

    Attributes:
        name (`str`): transformers' `lr_scheduler_type` ("constant" for the Schedule-Free optimizers).
        kwargs (`dict`): its `scheduler_specific_kwargs` (the user's `lr_scheduler_kwargs` go on top).
        scheduler_warmup_steps (`int`): the scheduler's `num_warmup_steps` (0 for Schedule-Free).
        optimizer_warmup_steps (`int`): the optimizer's own `warmup_steps` (0 for the AdamW baselines).
    """

    name: str
    kwargs: dict
    scheduler_warmup_steps: int
    optimizer_warmup_steps: int


def lr_schedule(args: TrainingArguments, num_training_steps: int, optimizer_name: str | None = None) -> LrSchedule:
    """The lr schedule of `args`' optimizer for a run of `num_training_steps`: Schedule-Free optimizers warm up inside
    the optimizer under a constant scheduler (a decaying one fights the averaging, and warmup would be applied twice);
    the baselines take their scheduler and warmup from transformers."""
    spec = get_optimizer_spec(optimizer_name or args.optimizer_name)
    warmup = resolve_warmup_steps(args, num_training_steps)
    return LrSchedule(
        spec.scheduler,
        spec.scheduler_kwargs(args, num_training_steps),
        0 if spec.schedule_free else warmup,
        warmup if spec.schedule_free else 0,
    )


def lr_scheduler_type_for(optimizer_name: str, chosen) -> str:
    """`lr_scheduler_type` resolved for `optimizer_name`: "auto" is the optimizer's own scheduler; the same name is
    kept; any other is a `ValueError` (for Schedule-Free: a decaying scheduler fights the averaging)."""
    spec = get_optimizer_spec(optimizer_name)
    chosen = str(getattr(chosen, "value", chosen))
    if chosen in ("auto", spec.scheduler):
        return spec.scheduler
    if spec.schedule_free:
        raise ValueError(
            f"optimizer_name={optimizer_name!r} is schedule-free: it needs no lr schedule, and lr_scheduler_type="
            f"{chosen!r} would fight its averaging (and apply warmup twice). Set lr_scheduler_type='constant' (or "
            "leave it unset in a ScheduleFreeConfig: 'auto'); warmup_steps goes into the optimizer."
        )
    raise ValueError(
        f"optimizer_name={optimizer_name!r} defines its own schedule ({spec.scheduler}); "
        f"lr_scheduler_type={chosen!r} contradicts it. Leave lr_scheduler_type unset."
    )


class _WithOverrides:
    """`args` as the builders read it, with some Schedule-Free fields set by the caller."""

    def __init__(self, args: TrainingArguments, overrides: dict):
        self._args, self._overrides = args, overrides

    def __getattr__(self, name: str):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_args"], name)


def optimizer_cls_and_kwargs(
    args: TrainingArguments,
    num_training_steps: int | None = None,
    optimizer_name: str | None = None,
    **overrides,
) -> tuple[type, dict]:
    """The `(optimizer_cls, kwargs)` pair for `transformers.Trainer(optimizer_cls_and_kwargs=...)`.

    Args:
        args (`TrainingArguments`): a `ScheduleFreeConfig` (or any `schedule_free_config(...)` class), or plain
            `TrainingArguments` / TRL's `SFTConfig` (the Schedule-Free fields then take their defaults, or `overrides`;
            lr, betas and clipping are `args`' own: the paper's defaults are applied by `ScheduleFreeConfig` only).
        num_training_steps (`int`, *optional*): needed when `warmup_steps` is a ratio and `max_steps` is unset.
        optimizer_name (`str`, *optional*): defaults to `args.optimizer_name`, else "sf_adamw_refined".
        **overrides: Schedule-Free fields (`decoupling_c=50`, `r`, `weight_lr_power`, `sf_fused`, the sf_plus and
            baseline fields), taking precedence over `args`' own.

    Raises:
        `ValueError`: unknown name or field; a warmup ratio without a known number of steps; a Schedule-Free
        optimizer with a non-constant lr scheduler (a plain Trainer would multiply the optimizer's lr by it; see
        `lr_scheduler_type_for`).

    Note: a plain `Trainer` leaves the weights in whatever mode they are in: its checkpoints hold y, or x when an
    evaluation ran just before; `sf_hf.ScheduleFreeTrainer` and `sf_hf.ScheduleFreeMixin` always save x.
    """
    unknown = sorted(set(overrides) - set(FIELD_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown Schedule-Free field(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(FIELD_DEFAULTS))} (TrainingArguments' own fields go into args)."
        )
    spec = get_optimizer_spec(optimizer_name or getattr(args, "optimizer_name", "sf_adamw_refined"))
    if spec.schedule_free:
        lr_scheduler_type_for(spec.name, args.lr_scheduler_type)
    return spec.build(_WithOverrides(args, overrides) if overrides else args, num_training_steps)
