"""What `sf_hf.scripts.sft` and `sf_hf.scripts.dpo` share: TRL's script layout (ScriptArguments + the trainer's
config + ModelConfig, from a YAML recipe and flags) with the Schedule-Free config and trainer of `sf_hf`.

    run_trl_script(SFTTrainer, SFTConfig, argv, default_config, report=("eval_loss",))

The flow is trl/scripts/sft.py's: the dataset by name (here also one built offline, `sf_hf.data.EMBEDDED_DATASETS`),
the model by path with `model_init_kwargs`, LoRA from ModelConfig's `use_peft`/`lora_*`, `train()`, `save_model()`,
an optional push; the trainer is `schedule_free_trainer(TrainerCls)` and the config `schedule_free_config(ConfigCls)`.
It adds what sf_hf's own scripts do: a strict recipe (an unknown key is an error), a clear error when the model
folder is missing, resume from the last complete checkpoint, and the evaluation before and after training.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from transformers import set_seed
from trl import ModelConfig, ScriptArguments, get_peft_config

from .. import schedule_free_config, schedule_free_trainer
from ..checkpoints import CheckpointError
from ..data import load_dataset_splits
from ..script_args import RecipeError, RecipeParser
from .checks import find_checkpoint
from .errors import user_errors
from .reporting import setup_logging

logger = logging.getLogger("sf_hf.recipes")
MAKE_PRETRAIN_OUTPUT = "outputs/llama-small-sf_adamw_refined"  # the Makefile's PRETRAIN_OUT


@dataclass
class TrlScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset_name, dataset_config, dataset_train_split, dataset_test_split, ...) with the
    held-out split of sf_hf's loader and sizes to keep a CPU run short.

    NOTE: `dataset_test_split` defaults to None (TRL: "test"): the dataset's "validation" split, else
    `validation_fraction` of the training split held out; the datasets built offline bring their own.
    """

    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "The split to evaluate on (default: 'validation' if the dataset has it, else "
            "validation_fraction of dataset_train_split is held out)."
        },
    )
    validation_fraction: float = field(default=0.05, metadata={"help": "Fraction held out when there is no split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N examples only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})

    def __post_init__(self):
        if not self.dataset_name:
            raise RecipeError(
                "dataset_name is not set: 'kjv-instructions' or 'kjv-preferences' (built offline), a "
                "local file or folder, or a Hub dataset id."
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be a positive integer or unset, got {value}.")


def parse(config_cls: type, argv=None, default_config=None) -> tuple:
    """`(script_args, training_args, model_args)` from `--config` (or `default_config`) and flags; `training_args` is
    a `schedule_free_config(config_cls)`."""
    parser = RecipeParser((TrlScriptArguments, schedule_free_config(config_cls), ModelConfig))
    return parser.parse_recipe_and_args(argv, default_config=default_config)


def check_model_path(model_args) -> None:
    """Fails within seconds when `model_name_or_path` is unset, or is a local path that does not exist."""
    name = model_args.model_name_or_path
    if not name:
        raise RecipeError(
            "model_name_or_path is not set: a local folder (e.g. the output of `make pretrain`, "
            f"{MAKE_PRETRAIN_OUTPUT}) or a Hub id."
        )
    if os.path.exists(name):
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or name.startswith("outputs/"):
        hint = (
            " It is the output of `make pretrain`: run `make pretrain` first (about 4 minutes on 2 idle CPU cores)."
            if name.rstrip("/").endswith(MAKE_PRETRAIN_OUTPUT)
            else ""
        )
        raise RecipeError(
            f"model_name_or_path={name!r} does not exist (from {os.getcwd()}).{hint} Or point "
            "model_name_or_path at another model folder or a Hub id."
        )


def load_splits(script_args, training_args) -> tuple:
    """`(train, eval)` of the recipe's dataset, cut to max_train_samples / max_eval_samples."""
    splits = load_dataset_splits(
        script_args.dataset_name,
        config_name=script_args.dataset_config,
        train_split=script_args.dataset_train_split,
        validation_split=script_args.dataset_test_split,
        streaming=script_args.dataset_streaming,
        validation_fraction=script_args.validation_fraction,
        seed=training_args.seed,
    )
    train, evaluation = splits["train"], splits["validation"]
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if script_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
    return train, evaluation


def prepare(config_cls: type, argv, default_config) -> tuple:
    """Everything before the trainer; every input error surfaces here as a RecipeError/ValueError, within seconds."""
    script_args, training_args, model_args = parse(config_cls, argv, default_config)
    setup_logging(training_args)
    check_model_path(model_args)
    checkpoint = find_checkpoint(training_args)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    train, evaluation = load_splits(script_args, training_args)
    logger.info(
        "Dataset %s: %d training and %d held-out examples; %s",
        script_args.dataset_name,
        len(train),
        len(evaluation),
        "LoRA "
        + str(dict(r=model_args.lora_r, alpha=model_args.lora_alpha, target_modules=model_args.lora_target_modules))
        if model_args.use_peft
        else "full fine-tuning",
    )
    return script_args, training_args, model_args, train, evaluation, checkpoint


def tokens_seen(trainer) -> int | None:
    """Tokens trained on, as TRL's trainers log them (`num_tokens`), else the Trainer's own count."""
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    if logged:
        return int(logged[-1])
    return trainer.state.num_input_tokens_seen or None


def run_trl_script(
    trainer_cls: type, config_cls: type, argv=None, default_config=None, report: tuple[str, ...] = ("eval_loss",)
) -> dict:
    """Runs a TRL trainer with Schedule-Free from a recipe to the end; returns the final evaluation's metrics with
    `initial_<key>` for each `report` key measured before training (not on a resume) and the throughput.

    A bad input exits with the message and no traceback, before any training.
    """
    with user_errors(ValueError, ImportError, OSError):
        script_args, training_args, model_args, train, evaluation, checkpoint = prepare(
            config_cls, argv, default_config
        )
    set_seed(training_args.seed)
    trainer = schedule_free_trainer(trainer_cls)(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
    )
    initial = {}
    if checkpoint is None:
        initial = {f"initial_{k}": v for k, v in trainer.evaluate().items() if k in report}
        logger.info("Before training: %s", ", ".join(f"{k[8:]} {v:.4f}" for k, v in initial.items()))
    start = time.perf_counter()
    with user_errors(CheckpointError):
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trainer.save_model(training_args.output_dir)  # x (an adapter: its weights at x), schedule_free.json, the card
    trainer.save_state()
    tokens = tokens_seen(trainer)
    if tokens:
        train_result.metrics["train_tokens_per_second"] = round(tokens / seconds, 1)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    metrics.update(initial)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if trainer.is_world_process_zero():
        logger.info(
            "Done in %.0f s of training. The model (x%s) is in %s.\n  %s",
            seconds,
            ", a LoRA adapter" if model_args.use_peft else "",
            training_args.output_dir,
            "\n  ".join(
                f"{k}: {metrics.get('initial_' + k, float('nan')):.4f} before -> {metrics[k]:.4f} after"
                for k in report
                if k in metrics
            ),
        )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group: a process left with it aborts at exit
    return metrics
