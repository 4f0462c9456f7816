"""ScheduleFreeMixin with TRL's trainers (SFT, DPO, reward, GRPO) and schedule_free_config with TRL's configs: every
checkpoint, save_model, evaluate() and push holds x (against x computed in float64 from the optimizer's y and z),
TRL's defaults and model card are kept, resume is bitwise, DPO's reference model never moves, GRPO generates at y.

    pytest tests/test_trl.py -q
"""

import dataclasses
import json
import logging
import pickle

import pytest
import torch
from safetensors.torch import load
from transformers import TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

import sf_hf
from sf_hf import ScheduleFreeConfig, ScheduleFreeMixin, schedule_free_config, schedule_free_trainer
from sf_hf.checkpoints import read_manifest
from sf_hf.configs import ScheduleFreeFields
from sf_hf.metadata import read_metadata

from .test_trainer import StopAt
from .trainer_utils import RecordY, saved_weights, tiny_model, weights
from .trl_utils import (
    checkpoint_z,
    max_diff,
    preference_dataset,
    prompt_dataset,
    reference_x,
    reference_x_from,
    text_dataset,
    tiny_reward_model,
    tiny_tokenizer,
)

COMMON = dict(
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    learning_rate=1e-2,
    adam_beta1=0.9,
    adam_beta2=0.99,
    decoupling_c=5.0,
    warmup_steps=2,
    logging_steps=1,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    seed=0,
    data_seed=0,
    dataloader_num_workers=0,
    disable_tqdm=True,
    gradient_checkpointing=False,
    sf_fused=False,
)


def sf_args(config_cls, tmp_path, **overrides):
    return schedule_free_config(config_cls)(output_dir=str(tmp_path), **{**COMMON, **overrides})


class ScheduleFreeSFTTrainer(ScheduleFreeMixin, SFTTrainer):
    pass


def sft_trainer(tmp_path, callbacks=(), **overrides):
    args = sf_args(SFTConfig, tmp_path, max_length=16, **overrides)
    return ScheduleFreeSFTTrainer(
        model=tiny_model(),
        args=args,
        train_dataset=text_dataset(32),
        eval_dataset=text_dataset(8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=list(callbacks),
    )


def assert_checkpoint_holds_x(folder, y_at_step: dict, trainer):
    """The checkpoint's weights against float64 x from the y of its step and its own z; x far from y."""
    z = checkpoint_z(folder, trainer)
    saved = saved_weights(folder)
    expected = reference_x_from(y_at_step, z, trainer.args.adam_beta1)
    assert max_diff(saved, expected) <= 1e-6
    assert max_diff(saved, y_at_step) > 1e-4  # x and y are 100x the tolerance apart: the check tells them apart
    meta = read_metadata(folder)
    assert meta["weights"] == "x" and meta["optimizer_name"] == "sf_adamw_refined"


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config_cls", [SFTConfig, DPOConfig, RewardConfig, GRPOConfig])
def test_schedule_free_config_keeps_every_trl_default(config_cls, tmp_path):
    made = schedule_free_config(config_cls)
    assert issubclass(made, config_cls) and schedule_free_config(config_cls) is made  # made once
    ours = {f.name: f for f in dataclasses.fields(made)}
    theirs = {f.name: f for f in dataclasses.fields(config_cls)}
    decided = ("learning_rate", "adam_beta1", "adam_beta2", "max_grad_norm")  # None: unset, the parent's then
    built = made(output_dir=str(tmp_path), bf16=False, optimizer_name="sf_adamw")
    trl = config_cls(output_dir=str(tmp_path), bf16=False)
    assert [getattr(built, n) for n in decided] == [getattr(trl, n) for n in decided]
    for name, f in theirs.items():
        if name == "lr_scheduler_type":
            assert ours[name].default == "auto"
            continue
        if name in decided:
            assert ours[name].default is None
            continue
        assert (ours[name].default, ours[name].default_factory) == (f.default, f.default_factory), name
    sf_fields = {f.name for f in dataclasses.fields(ScheduleFreeFields)}
    assert set(ours) == set(theirs) | sf_fields
    assert {f.name for f in dataclasses.fields(ScheduleFreeConfig)} == set(
        f.name for f in dataclasses.fields(TrainingArguments)
    ) | sf_fields


def test_schedule_free_config_follows_the_optimizer_and_refuses_a_set_schedule(tmp_path, caplog):
    made = schedule_free_config(SFTConfig)
    with caplog.at_level(logging.INFO, logger="sf_hf.configs"):
        args = made(output_dir=str(tmp_path), bf16=False)
    assert str(args.lr_scheduler_type.value) == "constant"
    assert "SFTConfig's default 'linear' is not used" in caplog.text
    assert args.learning_rate == SFTConfig.__dataclass_fields__["learning_rate"].default == 2e-5  # TRL's lr
    assert args.logging_steps == 10 and args.gradient_checkpointing is True
    with pytest.raises(ValueError, match="lr_scheduler_type='linear' would fight its averaging"):
        made(output_dir=str(tmp_path), bf16=False, lr_scheduler_type="linear")
    baseline = made(output_dir=str(tmp_path), bf16=False, optimizer_name="adamw_cosine")
    assert str(baseline.lr_scheduler_type.value) == "cosine_with_min_lr"
    plus = made(output_dir=str(tmp_path), bf16=False, optimizer_name="sf_plus")
    assert plus.learning_rate == 1.0  # TRL's default lr left: the Polyak multiplier 1
    assert ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name="sf_plus").learning_rate == 1.0
    # training_args.bin pickles the class by reference: it must come back
    copy = pickle.loads(pickle.dumps(made(output_dir=str(tmp_path), bf16=False, decoupling_c=7.0, hub_token="s")))
    assert type(copy) is made and copy.decoupling_c == 7.0 and copy.hub_token is None
    assert schedule_free_config(TrainingArguments) is ScheduleFreeConfig


def test_the_factory_caches_and_refuses_the_wrong_order():
    made = schedule_free_trainer(SFTTrainer)
    assert made is schedule_free_trainer(SFTTrainer) and made.__mro__[1:3] == (
        ScheduleFreeMixin,
        sf_hf.trainer.HubPublishing,
    )
    assert schedule_free_trainer(sf_hf.ScheduleFreeTrainer) is sf_hf.ScheduleFreeTrainer
    with pytest.raises(TypeError, match="put ScheduleFreeMixin before SFTTrainer"):
        type("WrongOrder", (SFTTrainer, ScheduleFreeMixin), {})


def test_optimizer_cls_and_kwargs_takes_schedule_free_fields_for_a_plain_trl_config(tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, lr_scheduler_type="constant")
    cls, kwargs = sf_hf.optimizer_cls_and_kwargs(args, decoupling_c=50, r=1.0)
    assert cls is sf_hf.RefinedScheduleFreeAdamW and kwargs["decoupling_c"] == 50 and kwargs["r"] == 1.0
    assert kwargs["lr"] == 2e-5
    with pytest.raises(ValueError, match="Unknown Schedule-Free field"):
        sf_hf.optimizer_cls_and_kwargs(args, decoupling=50)


# ---------------------------------------------------------------------------------------------- SFT


def test_sft_checkpoints_save_model_evaluate_and_card_hold_x(tmp_path):
    recorder = RecordY(steps=[4])
    trainer = sft_trainer(tmp_path / "sf" / "run", [recorder], max_steps=8, save_strategy="steps", save_steps=4)
    trainer.train()
    x = reference_x(trainer)
    model_x = weights(trainer.model)
    assert max_diff(model_x, x) <= 1e-6  # train() returns at x
    assert max_diff(saved_weights(tmp_path / "sf" / "run" / "checkpoint-8"), x) <= 1e-6
    assert_checkpoint_holds_x(tmp_path / "sf" / "run" / "checkpoint-4", recorder.y[4], trainer)
    trainer._base_optimizer().train()  # a careless caller leaves y in the model
    trainer.save_model(str(tmp_path / "saved"))
    assert max_diff(saved_weights(tmp_path / "saved"), x) <= 1e-6
    assert read_metadata(tmp_path / "saved")["weights"] == "x"

    trainer._base_optimizer().train()
    metrics = trainer.evaluate()
    assert max_diff(weights(trainer.model), x) <= 1e-6
    plain_args = {k: v for k, v in COMMON.items() if k not in ("decoupling_c", "sf_fused")}
    plain_args.update(max_steps=2, save_strategy="steps", save_steps=2, lr_scheduler_type="constant")
    plain = SFTTrainer(
        model=tiny_model(),
        args=SFTConfig(output_dir=str(tmp_path / "plain" / "run"), max_length=16, **plain_args),
        train_dataset=text_dataset(32),
        eval_dataset=text_dataset(8, seed=1),
        processing_class=tiny_tokenizer(),
    )
    plain.model.load_state_dict({n: t.float() for n, t in x.items()})
    assert metrics["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-5)

    # TRL's card, written before each checkpoint as TRL writes it, with the Schedule-Free section after it
    plain.train()
    card = (tmp_path / "sf" / "run" / "README.md").read_text()
    trl_card = (tmp_path / "plain" / "run" / "README.md").read_text()
    assert card.startswith(trl_card) and "TRL" in trl_card
    assert "## Schedule-Free" in card and "`sf_adamw_refined`" in card and "decoupling_c=5.0" in card


def test_sft_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    common = dict(max_steps=8, save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=4)
    straight = sft_trainer(tmp_path / "straight", **common)
    straight.train()
    interrupted = sft_trainer(tmp_path / "resumed", [StopAt(4)], **common)
    interrupted.train()
    assert interrupted.state.global_step == 4
    resumed = sft_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=True)
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(
        saved_weights(tmp_path / "straight" / "checkpoint-8")["model.norm.weight"],
        saved_weights(tmp_path / "resumed" / "checkpoint-8")["model.norm.weight"],
    )
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h and h["step"] > 4] for t in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


# ---------------------------------------------------------------------------------------------- DPO, reward


def test_dpo_holds_x_everywhere_and_never_moves_the_reference_model(tmp_path):
    reference = tiny_model()
    before = weights(reference)
    recorder = RecordY(steps=[3])
    trainer = schedule_free_trainer(DPOTrainer)(
        model=tiny_model(),
        ref_model=reference,
        args=sf_args(
            DPOConfig, tmp_path, max_steps=6, save_strategy="steps", save_steps=3, max_length=16, learning_rate=1e-2
        ),
        train_dataset=preference_dataset(24),
        eval_dataset=preference_dataset(8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=[recorder],
    )
    trainer.train()
    x = reference_x(trainer)
    assert max_diff(saved_weights(tmp_path / "checkpoint-6"), x) <= 1e-6
    assert_checkpoint_holds_x(tmp_path / "checkpoint-3", recorder.y[3], trainer)
    trainer._base_optimizer().train()
    trainer.save_model(str(tmp_path / "saved"))
    assert max_diff(saved_weights(tmp_path / "saved"), x) <= 1e-6
    trainer._base_optimizer().train()
    trainer.evaluate()
    assert max_diff(weights(trainer.model), x) <= 1e-6
    after = weights(trainer.ref_model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert (tmp_path / "README.md").is_file() and "DPO" in (tmp_path / "README.md").read_text()


def test_reward_trainer_holds_x_and_pushes_x_with_trls_card(tmp_path, hub_server):
    token = "hf_rewardpushtoken0123456789"
    hub_server.add_token(token)
    trainer = schedule_free_trainer(RewardTrainer)(
        model=tiny_reward_model(),
        args=sf_args(
            RewardConfig,
            tmp_path,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            max_length=16,
            push_to_hub=True,
            hub_model_id="org/reward",
            hub_token=token,
        ),
        train_dataset=preference_dataset(24).map(
            lambda r: {"chosen": r["prompt"] + " " + r["chosen"], "rejected": r["prompt"] + " " + r["rejected"]},
            remove_columns=["prompt"],
        ),
        eval_dataset=preference_dataset(4, seed=1).remove_columns(["prompt"]),
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    x = reference_x(trainer)
    assert max_diff(saved_weights(tmp_path / "checkpoint-6"), x) <= 1e-6
    trainer._base_optimizer().train()
    trainer.evaluate()
    assert max_diff(weights(trainer.model), x) <= 1e-6
    trainer._base_optimizer().train()
    trainer.push_to_hub()
    files = hub_server.files("org/reward")
    pushed = load(files["model.safetensors"])
    assert max_diff(pushed, x) <= 1e-6
    assert json.loads(files["schedule_free.json"])["weights"] == "x"
    card = files["README.md"].decode()
    assert "## Schedule-Free" in card and "TRL" in card
    assert not [p for p in files if p != ".gitattributes" and p.startswith((".", "_", "checkpoint-"))]
    assert token.encode() not in files["training_args.bin"]  # transformers uploads it; the pickle holds no token
    assert trainer.args.hub_token == token


# ---------------------------------------------------------------------------------------------- GRPO


def count_reward(prompts, completions, **kwargs):
    return [float(len(c.split())) for c in completions]


TINY_GRPO = dict(num_generations=2, steps_per_generation=2, max_completion_length=4, use_vllm=False)
"""Two 4-token completions per prompt, one generation per 2 steps, no vLLM: GRPO at the tiny model's scale."""


def test_grpo_generates_at_y_and_evaluates_checkpoints_and_saves_at_x(tmp_path):
    trainer = schedule_free_trainer(GRPOTrainer)(
        model=tiny_model(),
        reward_funcs=count_reward,
        args=sf_args(
            GRPOConfig,
            tmp_path,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            eval_strategy="steps",
            eval_steps=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            num_generations_eval=2,
            **TINY_GRPO,
        ),
        train_dataset=prompt_dataset(24),
        eval_dataset=prompt_dataset(4, seed=1),
        processing_class=tiny_tokenizer(),
    )
    seen = []  # (training?, step, weights) at every generation
    generate = trainer._generate_and_score_completions

    def recording(batch):
        seen.append(
            (
                trainer.model.training,
                trainer.state.global_step,
                weights(trainer.model),
                trainer._base_optimizer().train_mode,
            )
        )
        return generate(batch)

    trainer._generate_and_score_completions = recording
    recorder = RecordY(steps=range(1, 7))
    trainer.add_callback(recorder)
    trainer.train()
    x = reference_x(trainer)
    training = [(step, w, mode) for is_training, step, w, mode in seen if is_training]
    evaluating = [(step, w, mode) for is_training, step, w, mode in seen if not is_training]
    assert [step for step, _, _ in training] == [0, 2, 4]  # one generation per steps_per_generation steps
    for step, w, mode in training:
        assert mode
        if step:  # after an evaluation at x, rollouts come from y again, bit for bit
            assert all(torch.equal(w[n], recorder.y[step][n]) for n in w)
    assert len(evaluating) >= 3 and not any(mode for _, _, mode in evaluating)
    last_eval = [w for step, w, _ in evaluating if step == 6]
    assert last_eval and max_diff(last_eval[0], x) <= 1e-6 and max_diff(last_eval[0], recorder.y[6]) > 1e-4
    assert max_diff(saved_weights(tmp_path / "checkpoint-6"), x) <= 1e-6
    assert_checkpoint_holds_x(tmp_path / "checkpoint-3", recorder.y[3], trainer)
    trainer._base_optimizer().train()
    trainer.save_model(str(tmp_path / "saved"))
    assert max_diff(saved_weights(tmp_path / "saved"), x) <= 1e-6


def adaptive_entropy_grpo(out, callbacks=()):
    """GRPO with TRL's adaptive entropy control (`use_adaptive_entropy`): its coefficient moves at every step (the
    tiny model's entropy is always below the target, so it grows by `entropy_coef_delta`)."""
    return schedule_free_trainer(GRPOTrainer)(
        model=tiny_model(),
        reward_funcs=count_reward,
        args=sf_args(
            GRPOConfig,
            out,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            **TINY_GRPO,
            use_adaptive_entropy=True,
            entropy_coef=0.01,
            entropy_coef_delta=0.005,
            entropy_target=100.0,
        ),
        train_dataset=prompt_dataset(16),
        processing_class=tiny_tokenizer(),
        callbacks=list(callbacks),
    )


def test_grpo_adaptive_entropy_state_is_in_every_checkpoint_and_resumes(tmp_path):
    """TRL's GRPO writes its controller's state after its parent's save (`_save_checkpoint`) and reads it back in
    `_load_optimizer_and_scheduler`: under the mixin it is in every checkpoint, recorded complete, and comes back."""
    whole = adaptive_entropy_grpo(tmp_path / "whole")
    whole.train()
    states = {}
    for step in (2, 4):
        folder = tmp_path / "whole" / f"checkpoint-{step}"
        assert "entropy_ctrl_state.json" in read_manifest(folder)["files"]
        states[step] = json.loads((folder / "entropy_ctrl_state.json").read_text())
    assert states[2]["entropy_coef"] == pytest.approx(0.01 + 2 * 0.005)  # one update per optimizer step
    assert states[4]["entropy_coef"] == pytest.approx(0.01 + 4 * 0.005) == whole.entropy_coef
    assert states[4]["last_world_entropy"] == whole._last_world_entropy < 100.0

    adaptive_entropy_grpo(tmp_path / "split", callbacks=[StopAt(2)]).train()
    restored = {}

    class RecordRestored(TrainerCallback):  # on_train_begin comes after the checkpoint's training state is loaded
        def on_train_begin(self, args, state, control, **kwargs):
            restored.update(entropy_coef=resumed.entropy_coef, last_world_entropy=resumed._last_world_entropy)

    resumed = adaptive_entropy_grpo(tmp_path / "split", callbacks=[RecordRestored()])
    resumed.train(resume_from_checkpoint=True)
    assert restored == states[2]
    assert resumed.entropy_coef == pytest.approx(states[4]["entropy_coef"])


def test_sft_with_peft_config_saves_the_adapter_at_x(tmp_path):
    from peft import LoraConfig

    trainer = ScheduleFreeSFTTrainer(
        model=tiny_model(),
        args=sf_args(SFTConfig, tmp_path, max_steps=6, max_length=16, save_strategy="steps", save_steps=6),
        train_dataset=text_dataset(32),
        processing_class=tiny_tokenizer(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    trainer.train()
    x = reference_x(trainer)
    assert x and all("lora_" in name for name in x)  # TRL wrapped the model; only the adapter trains
    saved = load((tmp_path / "checkpoint-6" / "adapter_model.safetensors").read_bytes())
    saved = {name.replace(".weight", ".default.weight"): t for name, t in saved.items()}
    assert set(saved) == set(x) and max_diff(saved, x) <= 1e-6
    trainer._base_optimizer().train()
    y = weights(trainer.model)
    trainer._base_optimizer().eval()
    assert max_diff(saved, {n: y[n] for n in x}) > 1e-4
