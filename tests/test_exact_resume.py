"""Observing a run does not change it: evaluations and checkpoints leave the run bitwise where it would be without
them, and a run resumed from any of those checkpoints ends bitwise equal too (float32 and bf16 parameters, the
architectures most fine-tuned on the Hub).

    pytest tests/test_exact_resume.py -q
"""

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_jit_checkpoint import JITCheckpointCallback

from sf_hf import ScheduleFreeTrainer

from .test_trainer import EVAL, TRAIN, StopAt
from .trainer_utils import HUB_ARCHITECTURES, config, reshard, tiny_hub_model, tiny_model, weights

STEPS = 6


def run(tmp_path, model, resume=None, callbacks=(), **overrides):
    """Trains `model` for STEPS steps (or up to a StopAt); returns the trainer, the model at x at the end."""
    args = config(tmp_path, max_steps=STEPS, **overrides)
    trainer = ScheduleFreeTrainer(
        model=model, args=args, train_dataset=TRAIN, eval_dataset=EVAL, callbacks=list(callbacks)
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def y_of(trainer) -> dict:
    trainer.use_training_weights()
    y = weights(trainer.model)
    trainer.use_averaged_weights()
    return y


OBSERVED = dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_evaluating_and_saving_leave_the_run_bitwise_unchanged_and_resume_exactly(tmp_path, dtype):
    """A run evaluated every 2 steps and saved every 3 against one never observed; one resumed from the step-3
    checkpoint against both. Every parameter at the end, at x and at y, with torch.equal."""
    plain = run(tmp_path / "plain", tiny_model().to(dtype))
    observed = run(tmp_path / "observed", tiny_model().to(dtype), **OBSERVED)
    resumed = run(
        tmp_path / "resumed",
        tiny_model(seed=1).to(dtype),
        resume=str(tmp_path / "observed" / "checkpoint-3"),
        **OBSERVED,
    )
    assert sum("eval_loss" in h for h in observed.state.log_history) == 3
    assert next(plain.model.parameters()).dtype == dtype
    x = weights(plain.model)
    assert_bitwise_equal(weights(observed.model), x)
    assert_bitwise_equal(weights(resumed.model), x)
    y = y_of(plain)
    assert_bitwise_equal(y_of(observed), y)
    assert_bitwise_equal(y_of(resumed), y)


@pytest.mark.parametrize(
    "model_type, dtype",
    [(name, torch.float32) for name in HUB_ARCHITECTURES] + [("llama", torch.bfloat16)],
    ids=list(HUB_ARCHITECTURES) + ["llama-bf16"],
)
def test_resume_is_bitwise_across_architectures(tmp_path, model_type, dtype):
    """Checkpoints every 2 steps, interrupted after step 4, resumed from the step-2 checkpoint to the end: bitwise
    the run that was never interrupted and never saved."""
    plain = run(tmp_path / "plain", tiny_hub_model(model_type).to(dtype))
    saved = dict(save_strategy="steps", save_steps=2)
    run(tmp_path / "run", tiny_hub_model(model_type).to(dtype), callbacks=[StopAt(4)], **saved)
    resumed = run(
        tmp_path / "run",
        tiny_hub_model(model_type, seed=1).to(dtype),
        resume=str(tmp_path / "run" / "checkpoint-2"),
        **saved,
    )
    assert resumed.state.global_step == STEPS
    assert_bitwise_equal(weights(resumed.model), weights(plain.model))


@pytest.mark.parametrize(
    "model_type, dtype",
    [("llama", torch.float32), ("gpt2", torch.float32), ("llama", torch.bfloat16)],
    ids=["llama", "gpt2", "llama-bf16"],
)
def test_a_checkpoint_resharded_after_the_save_resumes_bitwise(tmp_path, model_type, dtype):
    """A checkpoint whose model.safetensors was re-sharded after the save (transformers loads either layout; its own
    test_resume_training_with_shard_checkpoint does this) resumes, bitwise the run never interrupted: the manifest's
    record of model.safetensors gives way to the new layout, judged by its own files."""
    plain = run(tmp_path / "plain", tiny_hub_model(model_type).to(dtype))
    saved = dict(save_strategy="steps", save_steps=2)
    run(tmp_path / "run", tiny_hub_model(model_type).to(dtype), callbacks=[StopAt(4)], **saved)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert len(reshard(checkpoint)) > 1
    resumed = run(tmp_path / "run", tiny_hub_model(model_type, seed=1).to(dtype), resume=str(checkpoint), **saved)
    assert resumed.state.global_step == STEPS
    assert_bitwise_equal(weights(resumed.model), weights(plain.model))


class SigtermBeforeTheStep(TrainerCallback):
    """Asks transformers' JIT checkpoint for a save as SIGTERM does (its timer sets the request), once the backward of
    the step after `step` has run: its callback saves checkpoint-`step` at on_pre_optimizer_step, between that
    backward and the optimizer step, and stops training after the step."""

    def __init__(self, step):
        self.step, self.trainer = step, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            jit = next(c for c in self.trainer.callback_handler.callbacks if isinstance(c, JITCheckpointCallback))
            jit.jit_manager.is_checkpoint_requested = True


@pytest.mark.parametrize(
    "model_type, dtype",
    [("llama", torch.float32), ("gpt_neox", torch.float32), ("llama", torch.bfloat16)],
    ids=["llama", "gpt_neox", "llama-bf16"],
)
def test_a_jit_checkpoint_between_the_backward_and_the_step_resumes_bitwise(tmp_path, model_type, dtype):
    """SIGTERM with enable_jit_checkpoint: the checkpoint is written (at x) after the step's backward, before its
    optimizer step, which must then step from y again (Schedule-Free refuses to step at x). The step completes, training
    stops, and a run resumed from the checkpoint ends bitwise the run never interrupted (models without dropout: the
    checkpoint's RNG state is taken after the step's forward)."""
    plain = run(tmp_path / "plain", tiny_hub_model(model_type).to(dtype))
    sigterm = SigtermBeforeTheStep(2)
    args = config(tmp_path / "run", max_steps=STEPS, enable_jit_checkpoint=True)
    interrupted = ScheduleFreeTrainer(
        model=tiny_hub_model(model_type).to(dtype), args=args, train_dataset=TRAIN, callbacks=[sigterm]
    )
    sigterm.trainer = interrupted
    interrupted.train()
    assert interrupted.state.global_step == 3
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = run(
        tmp_path / "run", tiny_hub_model(model_type, seed=1).to(dtype), resume=str(tmp_path / "run" / "checkpoint-2")
    )
    assert resumed.state.global_step == STEPS
    assert_bitwise_equal(weights(resumed.model), weights(plain.model))


def test_weights_saved_under_other_names_are_loaded_back(tmp_path):
    """transformers 5 saves GPT-NeoX's lm_head as embed_out; Trainer's resume and best-model reload load the file's
    names as they are (strict=False), which left a fresh head: both now put it back."""
    from safetensors.torch import load_file

    from sf_hf.checkpoints import loads_saved_names, saved_name_map

    model = tiny_hub_model("gpt_neox")
    model.save_pretrained(tmp_path)
    renamed = "embed_out.weight" in load_file(tmp_path / "model.safetensors")  # the renaming came with 5.x releases
    assert saved_name_map(model) == ({"embed_out.weight": "lm_head.weight"} if renamed else {})
    other = tiny_hub_model("gpt_neox", seed=1)

    with loads_saved_names(other):
        result = other.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert_bitwise_equal(weights(other), weights(model))
    assert "load_state_dict" not in other.__dict__  # the model's own method again after the block
