"""Optimizers by name: the Schedule-Free variants (SF-AdamW, refined, ScheduleFree+) and the paper's AdamW baselines.

    from transformers import Trainer
    from sf_hf import optimizer_cls_and_kwargs
    trainer = Trainer(model, args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, num_training_steps=1000))

Each entry says how to build the optimizer from `TrainingArguments` (reusing learning_rate,
adam_beta1/2, adam_epsilon, weight_decay, warmup_steps) and which lr scheduler goes with it.
Schedule-Free entries take warmup inside the optimizer and need a constant scheduler.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from transformers import TrainingArguments

from .optim import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, ScheduleFreePlusAdamW
from .optim.ema import AdamWWithEMA

# The Schedule-Free fields' defaults, used when a plain TrainingArguments (without them) is passed.
SF_FIELD_DEFAULTS = dict(decoupling_c=200.0, r=0.0, weight_lr_power=2.0, sf_fused=None, ema_decay=0.99,
                         cosine_min_lr_ratio=0.1, wsd_decay_fraction=0.2, wsd_decay_type="linear",
                         # ScheduleFree+: the defaults of the authors' AdamCScheduleFreePlusPaper
                         sf_beta1=0.9, sf_beta1_max=0.965, sf_beta1_anneal_steps=0, polyak_beta=0.0, c_warmup=0)


def _field(args: TrainingArguments, name: str):
    return getattr(args, name, SF_FIELD_DEFAULTS[name])


def resolve_warmup_steps(args: TrainingArguments, num_training_steps: Optional[int]) -> int:
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
        scheduler (`Callable`): `(args, num_training_steps) -> (lr_scheduler_type, scheduler_specific_kwargs)`.
        saved_weights (`str`): what `ScheduleFreeTrainer` evaluates, saves and publishes, as `schedule_free.json`
            names it: `"x"` (the Schedule-Free average), `"ema"` (the EMA of the weights) or `"plain"` (the
            optimizer's only iterate: there is no average to switch to).
    """

    name: str
    description: str
    schedule_free: bool
    build: Callable[[TrainingArguments, Optional[int]], Tuple[type, dict]]
    scheduler: Callable[[TrainingArguments, int], Tuple[str, dict]]
    saved_weights: str


def _sf_kwargs(args: TrainingArguments, num_training_steps: Optional[int]) -> dict:
    return dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay, warmup_steps=resolve_warmup_steps(args, num_training_steps),
                r=_field(args, "r"), weight_lr_power=_field(args, "weight_lr_power"), fused=_field(args, "sf_fused"))


def _sf_plus_kwargs(args: TrainingArguments, num_training_steps: Optional[int]) -> dict:
    """ScheduleFree+: `learning_rate` is the multiplier of the Polyak step, the Adam betas are its inner momentum."""
    kwargs = _sf_kwargs(args, num_training_steps)
    kwargs.update({name: _field(args, name) for name in ("sf_beta1", "sf_beta1_max", "sf_beta1_anneal_steps",
                                                         "polyak_beta", "c_warmup")})
    return kwargs


def _adamw_kwargs(args: TrainingArguments) -> dict:
    return dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay)


def _constant(args, num_training_steps):
    return "constant", {}


OPTIMIZERS: Dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "sf_adamw_refined", "refined Schedule-Free AdamW (Song et al. 2025), window ~T/decoupling_c", True,
            lambda a, n: (RefinedScheduleFreeAdamW, dict(_sf_kwargs(a, n), decoupling_c=_field(a, "decoupling_c"))),
            _constant, "x",
        ),
        OptimizerSpec(
            "sf_adamw", "Schedule-Free AdamW (Defazio et al. 2024)", True,
            lambda a, n: (ScheduleFreeAdamW, _sf_kwargs(a, n)),
            _constant, "x",
        ),
        OptimizerSpec(
            "sf_plus", "ScheduleFree+ (Defazio 2026): learning-rate-free Polyak step, Adam momentum, AdamC decay", True,
            lambda a, n: (ScheduleFreePlusAdamW, _sf_plus_kwargs(a, n)),
            _constant, "x",
        ),
        OptimizerSpec(
            "adamw_cosine", "AdamW, warmup then cosine decay to cosine_min_lr_ratio of the peak", False,
            lambda a, n: (torch.optim.AdamW, _adamw_kwargs(a)),
            lambda a, n: ("cosine_with_min_lr", {"min_lr_rate": _field(a, "cosine_min_lr_ratio")}), "plain",
        ),
        OptimizerSpec(
            "adamw_wsd", "AdamW, warmup-stable-decay: constant, then a final decay of wsd_decay_fraction", False,
            lambda a, n: (torch.optim.AdamW, _adamw_kwargs(a)),
            lambda a, n: ("warmup_stable_decay", {
                "num_decay_steps": max(1, round(_field(a, "wsd_decay_fraction") * n)),
                "decay_type": _field(a, "wsd_decay_type"),
            }), "plain",
        ),
        OptimizerSpec(
            "adamw_ema", "AdamW at constant lr with an EMA of the weights (evaluated and saved at the EMA)", False,
            lambda a, n: (AdamWWithEMA, dict(_adamw_kwargs(a), ema_decay=_field(a, "ema_decay"))),
            lambda a, n: ("constant_with_warmup", {}), "ema",
        ),
    )
}


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The registered optimizer `name`; an unknown name is a `ValueError` that lists the known ones."""
    if name not in OPTIMIZERS:
        known = ", ".join(f"{n} ({s.description})" for n, s in OPTIMIZERS.items())
        raise ValueError(f"Unknown optimizer_name {name!r}. Known optimizers: {known}.")
    return OPTIMIZERS[name]


class _WithOverrides:
    """`args` as the builders read it, with some Schedule-Free fields set by the caller."""

    def __init__(self, args: TrainingArguments, overrides: dict):
        self._args, self._overrides = args, overrides

    def __getattr__(self, name: str):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_args"], name)


def optimizer_cls_and_kwargs(
    args: TrainingArguments, num_training_steps: Optional[int] = None, optimizer_name: Optional[str] = None,
    **overrides,
) -> Tuple[type, dict]:
    """The `(optimizer_cls, kwargs)` pair for `transformers.Trainer(optimizer_cls_and_kwargs=...)`.

    Args:
        args (`TrainingArguments`): a `ScheduleFreeConfig` (or any `schedule_free_config(...)` class), or plain
            `TrainingArguments` / TRL's `SFTConfig` (the Schedule-Free fields then take their defaults, or `overrides`).
        num_training_steps (`int`, *optional*): needed when `warmup_steps` is a ratio and `max_steps` is unset.
        optimizer_name (`str`, *optional*): defaults to `args.optimizer_name`, else "sf_adamw_refined".
        **overrides: Schedule-Free fields (`decoupling_c=50`, `r`, `weight_lr_power`, `sf_fused`, the sf_plus and
            baseline fields), taking precedence over `args`' own.

    Raises:
        `ValueError`: unknown name or field; a warmup ratio without a known number of steps; a Schedule-Free
        optimizer with a non-constant lr scheduler (a plain Trainer would multiply the optimizer's lr by it).

    Note: a plain `Trainer` leaves the weights in whatever mode they are in: its checkpoints hold y, or x when an
    evaluation ran just before; `sf_hf.ScheduleFreeTrainer` and `sf_hf.ScheduleFreeMixin` always save x.
    """
    unknown = sorted(set(overrides) - set(SF_FIELD_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown Schedule-Free field(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(SF_FIELD_DEFAULTS))} (TrainingArguments' own fields go into args).")
    spec = get_optimizer_spec(optimizer_name or getattr(args, "optimizer_name", "sf_adamw_refined"))
    if spec.schedule_free and str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) != "constant":
        raise ValueError(
            f"{spec.name} is schedule-free but lr_scheduler_type={args.lr_scheduler_type!r}: a decaying scheduler "
            "fights the averaging and warmup would be applied twice. Set lr_scheduler_type='constant'; warmup_steps "
            "goes into the optimizer."
        )
    return spec.build(_WithOverrides(args, overrides) if overrides else args, num_training_steps)
