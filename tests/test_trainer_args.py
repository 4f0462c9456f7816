"""The parent's argument handling under the mixin: TRL's quick start (no `args`, or a plain `TrainingArguments`) gives
TRL's own default or converted config made Schedule-Free, which trains with sf_hf's optimizer and saves x; a
conflicting optimizer stays an error; the user's objects stay theirs (their args unchanged, the callback list
`Trainer`'s).

    pytest tests/test_trainer_args.py -q
"""

import pytest
import torch
import transformers.training_args
from transformers import DefaultFlowCallback, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from sf_hf import (
    RefinedScheduleFreeAdamW,
    ScheduleFreeConfig,
    ScheduleFreeTrainer,
    schedule_free_config,
    schedule_free_trainer,
)
from sf_hf.metadata import read_metadata
from sf_hf.registry import FIELD_DEFAULTS

from .trainer_utils import TokenDataset, config, saved_weights, tiny_model, weights
from .trl_utils import (
    max_diff,
    preference_dataset,
    prompt_dataset,
    reference_x,
    text_dataset,
    tiny_reward_model,
    tiny_tokenizer,
)


def count_reward(prompts, completions, **kwargs):
    return [float(len(c.split())) for c in completions]


def reward_pairs(n):
    return preference_dataset(n).map(
        lambda r: {"chosen": r["prompt"] + " " + r["chosen"], "rejected": r["prompt"] + " " + r["rejected"]},
        remove_columns=["prompt"],
    )


# name -> (TRL trainer, its config, the keyword arguments besides args: built fresh for each trainer)
TRL = {
    "sft": (SFTTrainer, SFTConfig, lambda: dict(model=tiny_model(), train_dataset=text_dataset(16))),
    "dpo": (
        DPOTrainer,
        DPOConfig,
        lambda: dict(model=tiny_model(), ref_model=tiny_model(), train_dataset=preference_dataset(16)),
    ),
    "reward": (RewardTrainer, RewardConfig, lambda: dict(model=tiny_reward_model(), train_dataset=reward_pairs(16))),
    "grpo": (
        GRPOTrainer,
        GRPOConfig,
        lambda: dict(model=tiny_model(), reward_funcs=count_reward, train_dataset=prompt_dataset(16)),
    ),
}


@pytest.fixture
def bf16_allowed(monkeypatch):
    """TRL's default configs turn bf16 on, which transformers refuses on a machine without a bf16 GPU (plain TRL's
    quick start fails there too): here it is allowed, and runs as CPU autocast."""
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


def same_values_but_the_schedule(ours, theirs) -> None:
    """`ours` holds every field value of `theirs` (the parent's config), with the schedule made constant, and the
    Schedule-Free fields at sf_hf's defaults."""
    mine, reference = ours.to_dict(), theirs.to_dict()
    assert str(reference.pop("lr_scheduler_type")) == "linear" and mine.pop("lr_scheduler_type") == "constant"
    assert {k: mine[k] for k in reference} == reference
    assert ours.optimizer_name == "sf_adamw_refined" and ours.decoupling_c == FIELD_DEFAULTS["decoupling_c"]


def trains_with_sf_hf_and_saves_x(trainer, folder) -> None:
    """A few steps, with an lr and C at which x and y are apart; then the saved model is x (float64, from the
    optimizer's y and z) and not y."""
    trainer.args.max_steps, trainer.args.learning_rate, trainer.args.decoupling_c = 3, 1e-2, 1.0
    trainer.args.logging_steps, trainer.args.report_to = 1, []
    trainer.train()
    optimizer = trainer._base_optimizer()
    assert type(optimizer) is RefinedScheduleFreeAdamW
    assert optimizer.param_groups[0]["decoupling_c"] == 1.0
    x = reference_x(trainer)
    optimizer.train()
    y = weights(trainer.model)
    optimizer.eval()
    trainer.save_model(str(folder))
    saved = saved_weights(folder)
    assert max_diff(saved, x) <= 1e-6 and max_diff(saved, y) > 1e-4
    assert read_metadata(folder)["weights"] == "x"


@pytest.mark.parametrize("name", list(TRL))
def test_trl_quick_start_without_args_is_trls_default_config_made_schedule_free(
    name, tmp_path, monkeypatch, bf16_allowed
):
    trainer_cls, config_cls, inputs = TRL[name]
    monkeypatch.chdir(tmp_path)  # TRL's default output_dir, "<model>-SFT", is relative
    plain = trainer_cls(processing_class=tiny_tokenizer(), **inputs())
    trainer = schedule_free_trainer(trainer_cls)(processing_class=tiny_tokenizer(), **inputs())
    assert isinstance(trainer.args, config_cls) and type(trainer.args).__name__ == f"ScheduleFree{config_cls.__name__}"
    assert trainer.args.output_dir == plain.args.output_dir  # "-SFT", "-DPO", ...: TRL's name
    same_values_but_the_schedule(trainer.args, plain.args)
    trains_with_sf_hf_and_saves_x(trainer, tmp_path / "saved")


def plain_arguments(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,  # GRPO: a multiple of its 8 generations
        learning_rate=3e-3,
        max_steps=3,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


@pytest.mark.parametrize("name", list(TRL))
def test_trl_with_plain_training_arguments_gets_them_converted_and_made_schedule_free(name, tmp_path):
    trainer_cls, config_cls, inputs = TRL[name]
    args = plain_arguments(tmp_path)
    before = args.to_dict()
    if name == "sft":  # TRL converts them itself: the same SFTConfig, made Schedule-Free
        reference = SFTTrainer(args=plain_arguments(tmp_path), processing_class=tiny_tokenizer(), **inputs()).args
    else:  # TRL 1.16's DPO, reward and GRPO trainers fail on them: converted as SFTTrainer converts them
        reference = config_cls(**{**args.to_dict(), "hub_token": None})
    # (built first: a config with use_cpu resets accelerate's state, which a built trainer's accelerator holds)
    trainer = schedule_free_trainer(trainer_cls)(args=args, processing_class=tiny_tokenizer(), **inputs())
    assert args.to_dict() == before and not hasattr(args, "optimizer_name")  # the user's object is unchanged
    assert isinstance(trainer.args, config_cls) and trainer.args is not args
    assert trainer.args.learning_rate == 3e-3 and trainer.args.per_device_train_batch_size == 8
    same_values_but_the_schedule(trainer.args, reference)
    trains_with_sf_hf_and_saves_x(trainer, tmp_path / "saved")


def test_a_trl_config_without_the_fields_or_a_schedule_free_config_is_made_trls_schedule_free_config(tmp_path):
    sft = schedule_free_trainer(SFTTrainer)
    trl_args = SFTConfig(output_dir=str(tmp_path), bf16=False, max_length=16, learning_rate=3e-3, report_to="none")
    ours = ScheduleFreeConfig(output_dir=str(tmp_path), decoupling_c=7.0, report_to="none")
    before = [trl_args.to_dict(), ours.to_dict()]
    made = [
        sft(model=tiny_model(), args=args, train_dataset=text_dataset(4), processing_class=tiny_tokenizer()).args
        for args in (trl_args, ours)
    ]
    assert [trl_args.to_dict(), ours.to_dict()] == before
    assert all(type(args) is schedule_free_config(SFTConfig) for args in made)
    same_values_but_the_schedule(made[0], trl_args)
    assert made[1].decoupling_c == 7.0 and made[1].learning_rate == ours.learning_rate == 2e-3  # the paper's, kept
    assert made[1].max_length == SFTConfig.__dataclass_fields__["max_length"].default  # TRL's fields: TRL's defaults


def test_schedule_free_trainer_without_args_or_with_plain_ones_gets_a_schedule_free_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = ScheduleFreeTrainer(model=tiny_model())
    assert type(trainer.args) is ScheduleFreeConfig and trainer.args.output_dir == "tmp_trainer"
    same_values_but_the_schedule(trainer.args, Trainer(model=tiny_model()).args)
    args = plain_arguments(tmp_path, learning_rate=1e-2)  # (use_cpu resets accelerate's state: before the trainer)
    trainer = ScheduleFreeTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset(16))
    assert type(trainer.args) is ScheduleFreeConfig and trainer.args.learning_rate == 1e-2
    same_values_but_the_schedule(trainer.args, args)
    assert not hasattr(args, "optimizer_name")
    trains_with_sf_hf_and_saves_x(trainer, tmp_path / "saved")


def test_a_conflicting_optimizer_stays_an_error(tmp_path):
    sft = schedule_free_trainer(SFTTrainer)
    inputs = dict(model=tiny_model(), train_dataset=text_dataset(4), processing_class=tiny_tokenizer())
    for args in (
        plain_arguments(tmp_path, optim="adafactor"),
        SFTConfig(output_dir=str(tmp_path), optim="adafactor", bf16=False),
    ):
        with pytest.raises(ValueError, match=r"optim='adafactor' is not used .* optimizer_name"):
            sft(args=args, **inputs)
    with pytest.raises(ValueError, match="would fight its averaging"):
        sft(args=plain_arguments(tmp_path, lr_scheduler_type="cosine"), **inputs)
    with pytest.raises(ValueError, match="builds its optimizer from args.optimizer_name"):
        sft(args=plain_arguments(tmp_path), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}), **inputs)
    model = tiny_model()
    with pytest.raises(ValueError, match="builds its optimizer from args.optimizer_name"):
        ScheduleFreeTrainer(model=model, optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))


# ---------------------------------------------------------------------------------------------- the user's objects


class MyCallback(TrainerCallback):
    pass


def callback_names(trainer) -> list:
    return [type(c).__name__ for c in trainer.callback_handler.callbacks]


@pytest.mark.parametrize(
    "callbacks",
    [None, [MyCallback], [MyCallback()], [EarlyStoppingCallback(2), MyCallback]],
    ids=["none", "class", "instance", "two"],
)
def test_the_callback_list_is_trainers(tmp_path, callbacks):
    """As transformers' tests/trainer/test_trainer_callback.py checks it: the same callbacks in the same order, the
    user's instances themselves, before and after add/pop/remove."""
    args = config(
        tmp_path,
        eval_strategy="steps",
        save_strategy="steps",
        metric_for_best_model="eval_loss",
        load_best_model_at_end=True,
    )
    made = [
        cls(model=tiny_model(), args=args, eval_dataset=TokenDataset(4), callbacks=callbacks)
        for cls in (Trainer, ScheduleFreeTrainer)
    ]
    plain, ours = made
    assert callback_names(ours) == callback_names(plain)
    users = [c for c in callbacks or () if isinstance(c, TrainerCallback)]
    assert all(any(c is user for c in ours.callback_handler.callbacks) for user in users)
    for trainer in made:
        trainer.add_callback(MyCallback())
        trainer.pop_callback(DefaultFlowCallback)
        trainer.remove_callback(MyCallback)
    assert callback_names(ours) == callback_names(plain)


def test_trl_callback_list_is_trls(tmp_path):
    made = [
        cls(
            model=tiny_model(),
            args=SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none"),
            train_dataset=text_dataset(4),
            processing_class=tiny_tokenizer(),
            callbacks=[MyCallback],
        )
        for cls in (SFTTrainer, schedule_free_trainer(SFTTrainer))
    ]
    assert callback_names(made[1]) == callback_names(made[0])
