"""The end of training: what callbacks see after the last step, what the final model's metadata says after a best-model
reload, and which folders the end of training may delete.

    pytest tests/test_trainer_end.py -q
"""

import sys
import types

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import HPSearchBackend, default_compute_objective

from sf_hf import ScheduleFreeTrainer
from sf_hf.metadata import read_metadata
from sf_hf.pipeline import convert_checkpoint

from .trainer_utils import TokenDataset, config, max_abs_diff, saved_weights, tiny_model, weights

TRAIN_SET, EVAL_SET = TokenDataset(64, seed=1), TokenDataset(8, seed=2)


def x_and_y_from_optimizer(trainer):
    """x = (y - (1 - b1) z) / b1 in float64, from the optimizer's y (train mode) and z; the model is left at x."""
    opt = trainer.optimizer
    opt.train()
    y = weights(trainer.model)
    beta1 = opt.param_groups[0]["betas"][0]
    x = {
        n: (y[n].double() - (1 - beta1) * opt.state[p]["z"].double()) / beta1
        for n, p in trainer.model.named_parameters()
    }
    opt.eval()
    return x, y


class SaveTheModel(TrainerCallback):
    """Saves the model the way W&B's and DVCLive's `log_model` do at `on_train_end`, and records the weights seen at
    the last step's `on_evaluate` and `on_save`."""

    def __init__(self, folder, last_step):
        self.folder, self.last_step, self.seen = folder, last_step, {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.last_step:
            self.seen["on_evaluate"] = weights(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.last_step:
            self.seen["on_save"] = weights(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.seen["on_train_end"] = weights(model)
        model.save_pretrained(self.folder)


@pytest.mark.parametrize("strategy", ["steps", "no"], ids=["last-step-evaluated-and-saved", "no-evaluation-nor-save"])
def test_callbacks_after_the_last_step_see_x(tmp_path, strategy):
    saver = SaveTheModel(tmp_path / "logged_model", last_step=8)
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TRAIN_SET,
        eval_dataset=EVAL_SET,
        callbacks=[saver],
        args=config(
            tmp_path / "run", max_steps=8, eval_strategy=strategy, eval_steps=4, save_strategy=strategy, save_steps=4
        ),
    )
    trainer.train()
    x, y = x_and_y_from_optimizer(trainer)
    assert max_abs_diff(x, y) > 1e-3  # far apart: the checks below tell them apart
    expected = {"on_evaluate", "on_save", "on_train_end"} if strategy == "steps" else {"on_train_end"}
    assert set(saver.seen) == expected
    for event, seen in saver.seen.items():
        assert max_abs_diff(seen, x) < 1e-6, event
    assert max_abs_diff(saved_weights(tmp_path / "logged_model"), x) < 1e-6


class PrunedTrial:
    """An optuna trial that asks to be pruned at its first report."""

    study = types.SimpleNamespace(_is_multi_objective=lambda: False)

    def report(self, value, step):
        pass

    def should_prune(self):
        return True


def test_a_pruned_trials_on_train_end_sees_x(tmp_path, monkeypatch):
    """transformers fires `on_train_end` from its evaluation when an optuna trial is pruned, mid-training, with the
    model at y until then: it sees x there too (the evaluation before it switched to x)."""
    pruned = type("TrialPruned", (Exception,), {})
    monkeypatch.setitem(sys.modules, "optuna", types.SimpleNamespace(TrialPruned=pruned))  # what the path imports
    saver = SaveTheModel(tmp_path / "logged_model", last_step=None)
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TRAIN_SET,
        eval_dataset=EVAL_SET,
        callbacks=[saver],
        args=config(tmp_path / "run", max_steps=4),
    )
    trainer.train()
    saver.seen.clear()
    x, y = x_and_y_from_optimizer(trainer)
    trainer.use_training_weights()  # as in the middle of training
    assert max_abs_diff(weights(trainer.model), y) == 0.0 and max_abs_diff(x, y) > 1e-3
    trainer.hp_search_backend, trainer.compute_objective = HPSearchBackend.OPTUNA, default_compute_objective
    with pytest.raises(pruned):
        trainer._evaluate(PrunedTrial(), None)  # the training loop's evaluation, which reports to the search
    assert max_abs_diff(saver.seen["on_train_end"], x) < 1e-6
    assert max_abs_diff(saved_weights(tmp_path / "logged_model"), x) < 1e-6


class ConvertAt(TrainerCallback):
    """Runs `sf-hf convert`'s default (`checkpoint-N` -> `x-checkpoint-N`) on a checkpoint while training goes on."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            convert_checkpoint(f"{args.output_dir}/checkpoint-{self.step}")


def best_is_first_run(tmp_path, callbacks=(), **overrides):
    """6 steps, evaluated and saved every 2; "best" is the highest eval loss, i.e. step 2's (losses fall), so the
    best checkpoint's weights differ from the last step's."""
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TRAIN_SET,
        eval_dataset=EVAL_SET,
        callbacks=list(callbacks),
        args=config(
            tmp_path,
            max_steps=6,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=True,
            include_num_input_tokens_seen=True,
            **overrides,
        ),
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2") and trainer.state.global_step == 6
    return trainer


def test_after_a_best_model_reload_the_metadata_names_the_best_step(tmp_path):
    trainer = best_is_first_run(tmp_path / "run")
    best = tmp_path / "run" / "checkpoint-2"
    trainer.save_model(str(tmp_path / "final"))
    final = read_metadata(tmp_path / "final")
    assert max_abs_diff(saved_weights(tmp_path / "final"), saved_weights(best)) == 0.0
    assert max_abs_diff(saved_weights(tmp_path / "final"), saved_weights(tmp_path / "run" / "checkpoint-6")) > 1e-3
    assert final["global_step"] == 2 and final["tokens_seen"] == read_metadata(best)["tokens_seen"]
    assert final["tokens_seen"] < read_metadata(tmp_path / "run" / "checkpoint-6")["tokens_seen"]


def test_the_end_of_training_never_deletes_converted_folders(tmp_path):
    run = tmp_path / "run"
    trainer = best_is_first_run(run, callbacks=[ConvertAt(2)], save_total_limit=1)
    assert sorted(p.name for p in run.iterdir() if "checkpoint-" in p.name) == ["checkpoint-2", "x-checkpoint-2"]
    torch.testing.assert_close(saved_weights(run / "x-checkpoint-2"), saved_weights(run / "checkpoint-2"))
    assert trainer.args.save_total_limit == 1


def test_merge_and_unload_after_train_is_the_base_model_with_x_merged(tmp_path):
    """LoRA: after `train()` the adapters hold x, so `merge_and_unload()` gives W + scaling * B_x @ A_x, with x
    computed in float64 from the optimizer's y and z (not the y the last step trained with)."""
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(tiny_model(), lora)
    base = weights(tiny_model())  # the frozen base weights (same seed)
    trainer = ScheduleFreeTrainer(
        model=model, args=config(tmp_path, max_steps=6, sf_fused=False), train_dataset=TRAIN_SET
    )
    trainer.train()
    opt = trainer.optimizer
    opt.train()
    y = {n: p.detach().double() for n, p in model.named_parameters() if p.requires_grad}
    beta1 = opt.param_groups[0]["betas"][0]
    x = {
        n: (y[n] - (1 - beta1) * opt.state[p]["z"].double()) / beta1
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    opt.eval()
    merged = trainer.model.merge_and_unload().state_dict()
    assert merged.keys() == base.keys()
    scaling = lora.lora_alpha / lora.r
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        if module.endswith(("q_proj", "v_proj")):
            a, b = (f"base_model.model.{module}.lora_{m}.default.weight" for m in "AB")
            expected = weight.double() + scaling * x[b] @ x[a]
            at_y = weight.double() + scaling * y[b] @ y[a]
            torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-7)  # measured 3e-9
            assert (merged[name].double() - at_y).abs().max() > 1e-3  # y merged: 2e-3 to 4e-3 off
        else:
            assert torch.equal(merged[name], weight), name  # untouched by the adapter
