"""Checks of a recipe that fail within seconds, before any data is read: batch arithmetic, the model's context, the
checkpoint to resume, the number of steps. Each error is a `RecipeError` that says what to change."""

import math
import os

import datasets
from transformers import AutoConfig

from ..checkpoints import CheckpointCorruptError, checkpoint_problems, checkpoint_to_resume, last_complete_checkpoint
from ..models import MODEL_PRESETS
from ..script_args import RecipeError


def resolve_batch(data_args, training_args) -> int:
    """Sequences per optimizer step; derives gradient_accumulation_steps from global_batch_size."""
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    if data_args.global_batch_size is None:
        return per_step * training_args.gradient_accumulation_steps
    accumulation, rest = divmod(data_args.global_batch_size, per_step)
    if rest or accumulation == 0:
        raise RecipeError(
            f"global_batch_size={data_args.global_batch_size} is not a multiple of per_device_train_batch_size="
            f"{training_args.per_device_train_batch_size} x {training_args.world_size} process(es) = {per_step}. "
            "Change per_device_train_batch_size or the number of processes so that it divides."
        )
    if training_args.gradient_accumulation_steps not in (1, accumulation):
        raise RecipeError(
            f"gradient_accumulation_steps={training_args.gradient_accumulation_steps} contradicts global_batch_size="
            f"{data_args.global_batch_size} (which needs {accumulation} at {per_step} sequences per micro-step). "
            "Set only one of them."
        )
    training_args.gradient_accumulation_steps = accumulation
    return data_args.global_batch_size


def check_model(model_args, data_args):
    """Checks the model's context against block_size before any data is read; returns the pretrained config."""
    if model_args.model_name_or_path is None:
        if model_args.model_preset not in MODEL_PRESETS:
            raise RecipeError(f"Unknown model_preset {model_args.model_preset!r}; known: {', '.join(MODEL_PRESETS)}.")
        positions, config = model_args.max_position_embeddings or data_args.block_size, None
        what = f"model_preset={model_args.model_preset!r} with max_position_embeddings={positions}"
    else:
        try:
            config = AutoConfig.from_pretrained(
                model_args.model_name_or_path,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
            )
        except OSError as err:
            raise RecipeError(f"Cannot load model_name_or_path={model_args.model_name_or_path!r}: {err}") from err
        positions = next(
            (
                getattr(config, k)
                for k in ("max_position_embeddings", "n_positions", "n_ctx")
                if getattr(config, k, None)
            ),
            None,
        )
        what = f"{model_args.model_name_or_path!r} (max_position_embeddings={positions})"
    if positions is not None and data_args.block_size > positions:
        raise RecipeError(
            f"block_size={data_args.block_size} is longer than the model's context: {what}. "
            f"Set block_size <= {positions}."
        )
    return config


def find_checkpoint(training_args):
    """The checkpoint to resume from: --resume_from_checkpoint (`sf_hf.checkpoints.checkpoint_to_resume`), else the
    last complete one in output_dir, so that re-running a command resumes it (a newer, interrupted or damaged one is
    skipped with a warning that says why), else None.

    Raises:
        CheckpointCorruptError: the named checkpoint is incomplete or damaged (each problem names its file), found
            here, before any data is read, by the check the trainer makes when it resumes.
    """
    requested = training_args.resume_from_checkpoint
    if requested is None or str(requested).lower() == "false":
        return last_complete_checkpoint(training_args.output_dir)
    try:
        checkpoint = checkpoint_to_resume(training_args.output_dir, requested)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    if not os.path.isdir(checkpoint):
        raise RecipeError(f"resume_from_checkpoint={requested!r} is not a folder; pass a checkpoint-N folder.")
    problems = checkpoint_problems(checkpoint, training_state=True)
    if problems:
        raise CheckpointCorruptError(f"Can't resume from {checkpoint}: " + "; ".join(problems))
    return checkpoint


def steps_and_epochs(training_args, train_blocks, seqs_per_step):
    """`(optimizer steps, epochs)` of the run (epochs is None for a stream)."""
    if training_args.max_steps > 0:
        steps = training_args.max_steps
    elif isinstance(train_blocks, datasets.IterableDataset):
        raise RecipeError("A streamed dataset has no length, so the number of steps is unknown: set max_steps.")
    else:
        steps = math.ceil(len(train_blocks) / seqs_per_step * training_args.num_train_epochs)
    epochs = steps * seqs_per_step / len(train_blocks) if isinstance(train_blocks, datasets.Dataset) else None
    return steps, epochs
