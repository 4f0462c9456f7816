"""Pretrain (or fine-tune) a causal LM with Schedule-Free AdamW, configured by a YAML recipe.

    accelerate launch recipes/pretrain.py      # the embedded default, offline, on 2 CPU cores
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/pretrain.py \
        --config recipes/llama-124m/pretrain/config_sf_adamw_refined.yaml
    accelerate launch -m sf_hf.scripts.pretrain --config RECIPE.yaml    # the same module, as recipes/pretrain.py runs
    accelerate launch -m sf_hf.scripts.pretrain --config llama-124m/pretrain/sf_adamw   # a bundled recipe, by name

With no --config the recipe is llama-small/pretrain/sf_adamw_refined (sf_hf/recipes/llama-small/pretrain/
config_sf_adamw_refined.yaml, linked from the repository's recipes/; `sf-hf recipes` lists them). Flags override the
recipe (`--max_steps 100`); an unknown key is an error. Re-running the same command resumes from the last
checkpoint in output_dir; `--resume_from_checkpoint PATH` picks one. Checkpoints, evaluations and the final
model hold x, the averaged weights. See docs/recipes.md.
"""

import json
import logging
import math
from pathlib import Path

from transformers import AutoModelForCausalLM, default_data_collator, set_seed

from .. import ScheduleFreeTrainer
from ..bundled import RECIPES
from ..checkpoints import CheckpointError
from ..data import load_text_dataset
from ..models import build_model
from ..recipe_callbacks import get_callbacks
from ..script_args import RecipeError, parse_script_args, run_args_changes, run_args_record
from .checks import check_model, find_checkpoint, resolve_batch, steps_and_epochs
from .errors import user_errors
from .recipe_data import baseline_entropy, load_tokenizer, prepare_data
from .reporting import SpeedCallback, log_derived_numbers, log_done, setup_logging

DEFAULT_RECIPE = RECIPES / "llama-small" / "pretrain" / "config_sf_adamw_refined.yaml"
logger = logging.getLogger("sf_hf.recipes")


def build(model_args, tokenizer, positions, config):
    """The model: a preset built for `tokenizer`, or `model_name_or_path` (whose embeddings must cover it)."""
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path is None:
        ids = dict(
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return build_model(model_args.model_preset, len(tokenizer), positions, **ids, **extra)
    if len(tokenizer) > config.vocab_size:
        raise RecipeError(
            f"The tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path!r} only "
            f"{config.vocab_size} embeddings: use the model's own tokenizer."
        )
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        **extra,
    )


def prepare(argv, default_config, require_pretrained=False):
    """Everything before training; every input error surfaces here as a RecipeError/ValueError, within seconds."""
    model_args, data_args, training_args, script_args = parse_script_args(argv, default_config, with_script_args=True)
    if require_pretrained and not model_args.model_name_or_path:
        raise RecipeError(
            "Fine-tuning needs a model: pass --model_name_or_path (a local folder, e.g. the output_dir "
            "of recipes/pretrain.py, or a Hub id). To train from scratch use recipes/pretrain.py."
        )
    setup_logging(training_args)
    seqs_per_step = resolve_batch(data_args, training_args)
    config = check_model(model_args, data_args)
    checkpoint = find_checkpoint(training_args)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    positions = model_args.max_position_embeddings or data_args.block_size
    if config is not None:
        positions = getattr(config, "max_position_embeddings", None) or positions
    raw = load_text_dataset(
        data_args.dataset_name,
        config_name=data_args.dataset_config,
        train_split=data_args.train_split,
        validation_split=data_args.validation_split,
        text_column=data_args.text_column,
        streaming=data_args.streaming,
        validation_fraction=data_args.validation_fraction,
        validation_size=data_args.validation_size,
        seed=training_args.seed,
    )
    tokenizer = load_tokenizer(model_args, data_args, raw, training_args, checkpoint, positions)
    train_blocks, eval_blocks = prepare_data(data_args, training_args, tokenizer, raw)
    steps, epochs = steps_and_epochs(training_args, train_blocks, seqs_per_step)
    set_seed(training_args.seed)
    model = build(model_args, tokenizer, positions, config)
    entropy = baseline_entropy(train_blocks, eval_blocks)
    log_derived_numbers(model, data_args, training_args, seqs_per_step, steps, epochs, entropy)
    callbacks = get_callbacks(script_args.callbacks, model_args, data_args, training_args)
    callbacks.append(SpeedCallback(seqs_per_step * data_args.block_size))
    return (
        model_args,
        data_args,
        training_args,
        tokenizer,
        model,
        train_blocks,
        eval_blocks,
        checkpoint,
        entropy,
        callbacks,
    )


def main(argv=None, default_config=DEFAULT_RECIPE, require_pretrained=False):
    """Runs a recipe (`argv`, default `sys.argv[1:]`) to the end and returns the final evaluation's metrics; a bad
    input (a recipe's value, a damaged checkpoint to resume) exits with one line and no traceback, before any
    training."""
    with user_errors(ValueError, ImportError):  # bad input: say what to fix, before any training
        prepared = prepare(argv, default_config, require_pretrained)
    (
        model_args,
        data_args,
        training_args,
        tokenizer,
        model,
        train_blocks,
        eval_blocks,
        checkpoint,
        entropy,
        callbacks,
    ) = prepared
    trainer = ScheduleFreeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    out = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        record, written = run_args_record(model_args, data_args), out / "run_args.json"
        if checkpoint and written.is_file() and (changes := run_args_changes(json.loads(written.read_text()), record)):
            logger.warning(
                "Resuming %s with other model/data settings than the run that wrote it (%s); "
                "run_args.json now records the new ones.",
                checkpoint,
                "; ".join(changes),
            )
        written.write_text(json.dumps(record, indent=2) + "\n")
    initial = None
    if model_args.model_name_or_path is not None and checkpoint is None:
        initial = trainer.evaluate()["eval_loss"]
        logger.info("Validation loss of %s before fine-tuning: %.4f", model_args.model_name_or_path, initial)

    with user_errors(CheckpointError):  # a checkpoint that does not fit the model, found when it is loaded
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # x, the tokenizer and schedule_free.json
    trainer.save_state()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    metrics.update(
        perplexity=math.exp(metrics["eval_loss"]), unigram_entropy=entropy[0], unigram_perplexity=math.exp(entropy[0])
    )
    if initial is not None:
        metrics["initial_eval_loss"] = initial
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        log_done(out, metrics, entropy, initial)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group: a process left with it aborts at exit
    return metrics


if __name__ == "__main__":
    main()
