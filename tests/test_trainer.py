"""ScheduleFreeTrainer: x everywhere it evaluates, saves and publishes; bitwise resume; schedules; hooks.

pytest tests/test_trainer.py -q
"""

import json
import math
import os

import pytest
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeConfig, ScheduleFreeTrainer, optimizer_cls_and_kwargs, x_from_y
from sf_hf.metadata import read_metadata
from sf_hf.optim.ema import AdamWWithEMA

from .trainer_utils import (
    RecordY,
    TokenDataset,
    config,
    hand_loss,
    max_abs_diff,
    saved_weights,
    tiny_model,
    weights,
)

TRAIN, EVAL = TokenDataset(64, seed=1), TokenDataset(8, seed=2)


def make_trainer(tmp_path, callbacks=(), model=None, **overrides):
    return ScheduleFreeTrainer(
        model=model or tiny_model(),
        args=config(tmp_path, **overrides),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        callbacks=list(callbacks),
    )


def optimizer_x_and_y(trainer):
    """The optimizer's own x (the model after `train()`) and y (read by switching to train mode and back)."""
    opt = trainer.optimizer
    opt.eval()
    x = weights(trainer.model)
    opt.train()
    y = weights(trainer.model)
    opt.eval()
    return x, y


def test_checkpoints_save_model_and_push_folder_hold_x(tmp_path):
    recorder = RecordY(steps=[6])
    trainer = make_trainer(tmp_path, [recorder], save_strategy="steps", save_steps=6)
    trainer.train()
    x = weights(trainer.model)  # train() returns at x
    assert max_abs_diff(saved_weights(tmp_path / "checkpoint-12"), x) == 0.0
    trainer.save_model(str(tmp_path / "saved"))
    assert max_abs_diff(saved_weights(tmp_path / "saved"), x) == 0.0
    assert read_metadata(tmp_path / "saved")["weights"] == "x"
    _, y = optimizer_x_and_y(trainer)
    assert max_abs_diff(x, y) > 1e-3  # x and y are far apart, so the checks above could tell them apart

    # the intermediate checkpoint: x of step 6 from that step's y and its saved z
    z_state = torch.load(tmp_path / "checkpoint-6" / "optimizer.pt", map_location="cpu", weights_only=True)["state"]
    names = [n for n, _ in trainer.model.named_parameters()]
    beta1 = trainer.optimizer.param_groups[0]["betas"][0]
    index = {p: i for i, p in enumerate(p for g in trainer.optimizer.param_groups for p in g["params"])}
    mid = saved_weights(tmp_path / "checkpoint-6")
    for name, p in trainer.model.named_parameters():
        expected = x_from_y(recorder.y[6][name], z_state[index[p]]["z"], beta1)
        torch.testing.assert_close(mid[name], expected, rtol=1e-6, atol=1e-7)
    assert max_abs_diff(mid, recorder.y[6]) > 1e-3
    meta = read_metadata(tmp_path / "checkpoint-6")
    assert meta["weights"] == "x" and meta["global_step"] == 6 and meta["optimizer_name"] == "sf_adamw_refined"
    assert meta["hyperparameters"]["decoupling_c"] == 5.0 and meta["hyperparameters"]["betas"] == [0.9, 0.99]
    assert len(names) == len(mid)


def test_push_to_hub_uploads_x(tmp_path, monkeypatch):
    """push_to_hub saves through save_model; capture the folder it would upload (the real upload is in test_hub)."""
    trainer = make_trainer(tmp_path)
    trainer.train()
    x = weights(trainer.model)
    trainer.optimizer.train()  # leave the model at y, as a careless caller might
    y = weights(trainer.model)
    uploaded = {}

    class FakeApi:
        def upload_folder(self, folder_path, **kwargs):
            uploaded.update(saved_weights(folder_path))
            return "commit"

    monkeypatch.setattr(ScheduleFreeTrainer, "init_hf_repo", lambda self, token=None: None)
    monkeypatch.setattr("transformers.trainer.hf_api", FakeApi)  # the client transformers' push_to_hub uploads with
    trainer.hub_model_id = "org/name"
    trainer.push_to_hub()
    assert uploaded and max_abs_diff(uploaded, y) > 1e-3
    assert max_abs_diff(uploaded, x) <= 1e-6  # x again, up to the rounding of one y -> x round trip


def test_evaluate_is_at_x_and_training_resumes_at_y(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=8)
    trainer.train()
    x, y = optimizer_x_and_y(trainer)
    trainer.optimizer.train()  # the model at y before evaluate
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(hand_loss(trainer.model, EVAL), rel=1e-5)
    assert max_abs_diff(weights(trainer.model), x) <= 1e-6
    model = tiny_model()
    model.load_state_dict(y)
    assert abs(metrics["eval_loss"] - hand_loss(model, EVAL)) > 1e-4  # the loss at y differs

    seen = RecordY(steps=[9])
    trainer.add_callback(seen)
    trainer.args.max_steps = 9
    trainer.optimizer.eval()
    inputs = {k: torch.stack([TRAIN[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    trainer.training_step(trainer.model, inputs)
    torch.testing.assert_close(weights(trainer.model), y, rtol=1e-6, atol=1e-6)


class StopAt(TrainerCallback):
    """Interrupts training after `step` (the checkpoint of that step is written first)."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    common = dict(max_steps=10, save_strategy="steps", save_steps=5, eval_strategy="steps", eval_steps=5)
    straight = make_trainer(tmp_path / "straight", **common)
    straight.train()
    interrupted = make_trainer(tmp_path / "resumed", [StopAt(5)], **common)
    interrupted.train()
    assert interrupted.state.global_step == 5
    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-5"))

    def losses(trainer, steps):
        return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and h["step"] in steps]

    assert losses(resumed, range(6, 11)) == losses(straight, range(6, 11))
    assert len(losses(straight, range(6, 11))) == 5
    evals = [h["eval_loss"] for h in resumed.state.log_history if "eval_loss" in h and h["step"] == 10]
    assert evals == [h["eval_loss"] for h in straight.state.log_history if "eval_loss" in h and h["step"] == 10]
    assert all(torch.equal(a, b) for a, b in zip(weights(straight.model).values(), weights(resumed.model).values()))


def test_warmup_lives_in_the_optimizer_once_and_ratio_is_resolved(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=8, warmup_steps=0.25, learning_rate=0.01)
    trainer.train()
    assert trainer.optimizer.param_groups[0]["warmup_steps"] == 2
    epochs = make_trainer(
        tmp_path / "epochs", max_steps=-1, num_train_epochs=1, warmup_steps=0.25, save_strategy="epoch"
    )
    epochs.train()  # 64 samples / batch 4 = 16 steps, known only inside train()
    assert epochs.optimizer.param_groups[0]["warmup_steps"] == 4
    assert read_metadata(tmp_path / "epochs" / "checkpoint-16")["num_training_steps"] == 16
    assert set(trainer.lr_scheduler.get_last_lr()) == {0.01}  # the scheduler never scales the lr
    logged = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    assert logged == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    c = [h["averaging_weight"] for h in trainer.state.log_history if "loss" in h]
    assert c[0] == pytest.approx(0.5) and 0 < c[-1] < c[0]  # min((1 - b1) C w_1 / w_1, 1) with C = 5, b1 = 0.9


def test_schedule_free_refuses_a_decaying_scheduler(tmp_path):
    with pytest.raises(ValueError, match="lr_scheduler_type='cosine' would fight"):
        config(tmp_path, lr_scheduler_type="cosine")
    with pytest.raises(ValueError, match="Unknown optimizer_name 'adam'. Known optimizers: sf_adamw_refined"):
        config(tmp_path, optimizer_name="adam")
    plain = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="linear")
    with pytest.raises(ValueError, match="Set lr_scheduler_type='constant'"):
        optimizer_cls_and_kwargs(plain)
    ratio = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="constant", warmup_steps=0.1)
    with pytest.raises(ValueError, match="ratio of the training steps"):
        optimizer_cls_and_kwargs(ratio)
    assert optimizer_cls_and_kwargs(ratio, num_training_steps=50)[1]["warmup_steps"] == 5


def test_hook_gives_a_plain_trainer_the_same_optimizer_and_losses(tmp_path):
    ours = make_trainer(tmp_path / "ours", max_steps=20)
    ours.train()
    plain_args = TrainingArguments(
        output_dir=str(tmp_path / "plain"),
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_steps=3,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # ScheduleFreeConfig's default for Schedule-Free (no clipping); TrainingArguments' is 1.0
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    cls, kwargs = optimizer_cls_and_kwargs(plain_args, optimizer_name="sf_adamw_refined")
    kwargs["decoupling_c"] = 5.0
    plain = Trainer(model=tiny_model(), args=plain_args, train_dataset=TRAIN, optimizer_cls_and_kwargs=(cls, kwargs))
    plain.train()
    assert isinstance(plain.optimizer.optimizer, RefinedScheduleFreeAdamW)
    ours_losses = [h["loss"] for h in ours.state.log_history if "loss" in h]
    plain_losses = [h["loss"] for h in plain.state.log_history if "loss" in h]
    assert len(ours_losses) == 20 and ours_losses == plain_losses


@pytest.mark.parametrize("name", ["sf_adamw", "adamw_cosine", "adamw_wsd", "adamw_ema"])
def test_every_registered_optimizer_trains_and_evaluates(tmp_path, name):
    trainer = make_trainer(tmp_path, optimizer_name=name, max_steps=10, learning_rate=5e-3)
    before = weights(trainer.model)
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in weights(trainer.model).items())
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    if name == "adamw_cosine":
        assert 5e-4 <= lrs[-1] < 1e-3 and max(lrs) == pytest.approx(5e-3)
    if name == "adamw_wsd":
        assert lrs[5] == pytest.approx(5e-3) and lrs[-1] <= 0.5 * 5e-3


def test_ema_baseline_evaluates_and_saves_at_the_ema(tmp_path):
    trainer = make_trainer(tmp_path, optimizer_name="adamw_ema", max_steps=10, ema_decay=0.9)
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, AdamWWithEMA)
    opt.train()
    raw = weights(trainer.model)
    ema = {n: opt.state[p]["ema"].clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.evaluate()
    assert max_abs_diff(weights(trainer.model), ema) == 0.0 and max_abs_diff(ema, raw) > 1e-4
    assert metrics["eval_loss"] == pytest.approx(hand_loss(trainer.model, EVAL), rel=1e-5)
    trainer.save_model(str(tmp_path / "saved"))
    assert max_abs_diff(saved_weights(tmp_path / "saved"), ema) == 0.0


def test_weight_decay_groups(tmp_path):
    for which, expect_decay in (("hf", "model.embed_tokens.weight"), ("linear", "lm_head.weight")):
        trainer = make_trainer(tmp_path, weight_decay_params=which, max_steps=1)
        names = set(trainer.get_decay_parameter_names(trainer.model))
        assert expect_decay in names and not any("norm" in n for n in names)
        if which == "linear":
            assert "model.embed_tokens.weight" not in names
            assert "model.layers.0.self_attn.q_proj.weight" in names


def test_grad_accumulation_best_model_and_early_stopping(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=30,
        gradient_accumulation_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    assert max_abs_diff(weights(trainer.model), saved_weights(best)) == 0.0
    assert read_metadata(best)["weights"] == "x"
    state = json.load(open(os.path.join(best, "trainer_state.json")))
    assert state["best_metric"] == pytest.approx(
        min(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    )


def test_trainer_rejects_a_conflicting_optim_and_external_optimizers(tmp_path):
    with pytest.raises(ValueError, match=r"optim='adafactor' is not used .* optimizer_name"):
        ScheduleFreeTrainer(model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path), optim="adafactor"))
    with pytest.raises(ValueError, match="optimizer_name"):
        ScheduleFreeTrainer(model=tiny_model(), args=config(tmp_path), optimizer_cls_and_kwargs=(torch.optim.AdamW, {}))


def test_config_validation_messages(tmp_path):
    with pytest.raises(ValueError, match="weight_decay_params must be one of"):
        config(tmp_path, weight_decay_params="all")
    with pytest.raises(ValueError, match="adam_beta1 is Schedule-Free's b1"):
        config(tmp_path, adam_beta1=0.0)
    with pytest.raises(ValueError, match="defines its own schedule"):
        config(tmp_path, optimizer_name="adamw_cosine", lr_scheduler_type="linear")
    assert (
        ScheduleFreeConfig(output_dir=str(tmp_path), optimizer_name="adamw_cosine").lr_scheduler_type.value
        == "cosine_with_min_lr"
    )


def test_hub_token_is_never_written_to_disk(tmp_path):
    token = "hf_FAKEtoken0123456789SECRET"
    trainer = make_trainer(
        tmp_path, max_steps=2, save_strategy="steps", save_steps=2, hub_token=token, report_to="tensorboard"
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert trainer.args.hub_token == token  # still usable in memory
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("tfevents" in p.name for p in files)
    leaks = [str(p) for p in files if token.encode() in p.read_bytes()]
    assert leaks == []
