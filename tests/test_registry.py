"""The defaults (one table in sf_hf.registry), the config fields' choices, and where the lr schedule is decided."""

import inspect
import logging

import pytest
from transformers import HfArgumentParser, TrainingArguments

from sf_hf import (
    RefinedScheduleFreeAdamW,
    ScheduleFreeAdamW,
    ScheduleFreeConfig,
    ScheduleFreePlusAdamW,
    ScheduleFreeTrainer,
    schedule_free_config,
)
from sf_hf.optim.ema import AdamWWithEMA
from sf_hf.registry import FIELD_DEFAULTS, TRAINING_DEFAULTS, lr_schedule

from .trainer_utils import TokenDataset, tiny_model

# ../shared/PAPER.md, "setup": (learning_rate, adam_beta1, adam_beta2, max_grad_norm)
PAPER_SF = (2e-3, 0.95, 0.99, 0.0)
PAPER_ADAMW = (1e-3, 0.9, 0.95, 1.0)


def _hyper(args):
    return args.learning_rate, args.adam_beta1, args.adam_beta2, args.max_grad_norm


def test_schedule_free_config_takes_the_paper_s_setup_where_unset(tmp_path):
    for name in ("sf_adamw_refined", "sf_adamw"):
        assert _hyper(ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name=name)) == PAPER_SF
    for name in ("adamw_cosine", "adamw_wsd", "adamw_ema"):
        assert _hyper(ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name=name)) == PAPER_ADAMW
    plus = ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name="sf_plus")
    assert _hyper(plus) == (1.0, 0.9, 0.95, 0.0)  # the Polyak multiplier; the authors' Adam betas; no clipping
    assert ScheduleFreeConfig(output_dir=str(tmp_path)).decoupling_c == 200  # refined: the paper's C
    # What the user sets is kept, TrainingArguments' own values included (no "equal to the default" guess).
    explicit = ScheduleFreeConfig(
        output_dir=str(tmp_path), learning_rate=5e-5, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0
    )
    assert _hyper(explicit) == (5e-5, 0.9, 0.999, 1.0)
    # The command line: unset fields get the same defaults, set ones are kept.
    (parsed,) = HfArgumentParser(ScheduleFreeConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optimizer_name", "adamw_cosine", "--max_grad_norm", "0.5"]
    )
    assert _hyper(parsed) == (1e-3, 0.9, 0.95, 0.5)


def test_trl_configs_keep_trl_s_defaults_except_sf_plus_lr(tmp_path):
    from trl import SFTConfig

    made = schedule_free_config(SFTConfig)
    trl = SFTConfig(output_dir=str(tmp_path), bf16=False)
    assert _hyper(made(output_dir=str(tmp_path), bf16=False, optimizer_name="sf_adamw")) == _hyper(trl)
    plus = made(output_dir=str(tmp_path), bf16=False, optimizer_name="sf_plus")
    assert _hyper(plus) == (1.0,) + _hyper(trl)[1:]


def test_the_optimizers_own_defaults_are_the_table_s():
    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}

    for cls, name in (
        (ScheduleFreeAdamW, "sf_adamw"),
        (RefinedScheduleFreeAdamW, "sf_adamw_refined"),
        (ScheduleFreePlusAdamW, "sf_plus"),
    ):
        table = TRAINING_DEFAULTS[name]
        own = {**defaults(ScheduleFreeAdamW), **defaults(cls)}
        assert (own["lr"], own["betas"]) == (table["learning_rate"], (table["adam_beta1"], table["adam_beta2"]))
        assert own["r"] == FIELD_DEFAULTS["r"] and own["weight_lr_power"] == FIELD_DEFAULTS["weight_lr_power"]
    assert defaults(RefinedScheduleFreeAdamW)["decoupling_c"] == FIELD_DEFAULTS["decoupling_c"]
    plus = defaults(ScheduleFreePlusAdamW)
    assert {k: plus[k] for k in ("sf_beta1", "sf_beta1_max", "sf_beta1_anneal_steps", "polyak_beta", "c_warmup")} == {
        k: FIELD_DEFAULTS[k] for k in ("sf_beta1", "sf_beta1_max", "sf_beta1_anneal_steps", "polyak_beta", "c_warmup")
    }
    assert defaults(AdamWWithEMA)["ema_decay"] == FIELD_DEFAULTS["ema_decay"]


def test_choices_are_field_metadata(tmp_path):
    parser = HfArgumentParser(ScheduleFreeConfig)
    for flag, bad in (("--optimizer_name", "adam"), ("--weight_decay_params", "all"), ("--wsd_decay_type", "exp")):
        with pytest.raises(SystemExit):  # argparse: "invalid choice", before any config is built
            parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), flag, bad])
    with pytest.raises(ValueError, match=r"wsd_decay_type must be one of \('linear', '1-sqrt', 'cosine'\)"):
        ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name="adamw_wsd", wsd_decay_type="exp")
    with pytest.raises(ValueError, match="Unknown optimizer_name 'adam'. Known optimizers: sf_adamw_refined"):
        ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name="adam")


def test_lr_schedule_puts_warmup_in_the_optimizer_or_the_scheduler(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.1, lr_scheduler_type="constant")
    sf = lr_schedule(args, 200, optimizer_name="sf_adamw")
    assert (sf.name, sf.kwargs, sf.scheduler_warmup_steps, sf.optimizer_warmup_steps) == ("constant", {}, 0, 20)
    cosine = lr_schedule(args, 200, optimizer_name="adamw_cosine")
    assert (cosine.name, cosine.kwargs, cosine.scheduler_warmup_steps, cosine.optimizer_warmup_steps) == (
        "cosine_with_min_lr",
        {"min_lr_rate": 0.1},
        20,
        0,
    )
    wsd = lr_schedule(args, 200, optimizer_name="adamw_wsd")
    assert wsd.kwargs == {"num_decay_steps": 40, "decay_type": "linear"}


def test_the_start_up_log_states_the_averaging_window_of_vanilla_sf(tmp_path, caplog):
    args = ScheduleFreeConfig(
        output_dir=str(tmp_path),
        optimizer_name="sf_adamw",
        adam_beta1=0.9,
        max_steps=100,
        report_to="none",
        use_cpu=True,
    )
    trainer = ScheduleFreeTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(8))
    with caplog.at_level(logging.INFO, logger="sf_hf.trainer"):
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
    # vanilla, no warmup: c_T = 1/T, window (1 - b1) / c_T = T (1 - b1) = 10 steps (not ~T)
    assert "averaging window ~10.0 steps at the end" in caplog.text
