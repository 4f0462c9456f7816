"""Pretrain (or fine-tune) a causal LM with Schedule-Free AdamW, configured by a YAML recipe.

    accelerate launch recipes/pretrain.py      # the embedded default, offline, ~7 min on 2 CPU cores
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/pretrain.py \
        --config recipes/llama-124m/pretrain/config_sf_adamw_refined.yaml

With no --config the recipe is recipes/llama-small/pretrain/config_sf_adamw_refined.yaml. Flags override the
recipe (`--max_steps 100`); an unknown key is an error. Re-running the same command resumes from the last
checkpoint in output_dir; `--resume_from_checkpoint PATH` picks one. Checkpoints, evaluations and the final
model hold x, the averaged weights. See docs/recipes.md.
"""

import json
import logging
import math
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

from sf_hf import ScheduleFreeTrainer
from sf_hf.checkpoints import last_complete_checkpoint
from sf_hf.data import load_gpt2_tokenizer, load_text_dataset, pack_into_blocks, train_bpe_tokenizer, unigram_entropy
from sf_hf.models import MODEL_PRESETS, build_model
from sf_hf.registry import get_optimizer_spec, resolve_warmup_steps
from sf_hf.script_args import RecipeError, parse_script_args, run_args_changes, run_args_record

DEFAULT_RECIPE = Path(__file__).resolve().parent / "llama-small" / "pretrain" / "config_sf_adamw_refined.yaml"
ENTROPY_BLOCKS = 10_000  # the unigram baseline is measured on at most this many blocks
STREAM_SHUFFLE_BUFFER = 10_000
BPE_STREAM_DOCS = 20_000  # a BPE trained on a stream reads this many documents unless tokenizer_train_docs says
logger = logging.getLogger("sf_hf.recipes")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (so a captured or replaced stdout keeps working)."""

    stream = property(lambda self: sys.stdout, lambda self, value: None)


def setup_logging(training_args) -> None:
    """INFO from sf_hf (this script, the trainer's schedule line) on the main process, to stdout."""
    package_logger = logging.getLogger("sf_hf")
    package_logger.setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)
    if not any(isinstance(h, _StdoutHandler) for h in package_logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
        package_logger.addHandler(handler)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


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
            "Change per_device_train_batch_size or the number of processes so that it divides.")
    if training_args.gradient_accumulation_steps not in (1, accumulation):
        raise RecipeError(
            f"gradient_accumulation_steps={training_args.gradient_accumulation_steps} contradicts global_batch_size="
            f"{data_args.global_batch_size} (which needs {accumulation} at {per_step} sequences per micro-step). "
            "Set only one of them.")
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
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                trust_remote_code=model_args.trust_remote_code)
        except OSError as err:
            raise RecipeError(f"Cannot load model_name_or_path={model_args.model_name_or_path!r}: {err}") from err
        positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                          if getattr(config, k, None)), None)
        what = f"{model_args.model_name_or_path!r} (max_position_embeddings={positions})"
    if positions is not None and data_args.block_size > positions:
        raise RecipeError(f"block_size={data_args.block_size} is longer than the model's context: {what}. "
                          f"Set block_size <= {positions}.")
    return config


def find_checkpoint(training_args):
    """The checkpoint to resume from: --resume_from_checkpoint, else the last complete one in output_dir (a newer,
    interrupted or damaged one is skipped with a warning that says why; see sf_hf.checkpoints), else None."""
    requested = training_args.resume_from_checkpoint
    last = last_complete_checkpoint(training_args.output_dir)
    if requested is None or str(requested).lower() == "false":
        return last
    if str(requested).lower() in ("true", "last"):
        if last is None:
            raise RecipeError(f"resume_from_checkpoint={requested!r} but {training_args.output_dir} has no complete "
                              "checkpoint.")
        return last
    if not os.path.isdir(requested):
        raise RecipeError(f"resume_from_checkpoint={requested!r} is not a folder; pass a checkpoint-N folder.")
    return requested


def load_tokenizer(model_args, data_args, raw, training_args, checkpoint, positions):
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path or "bpe"
    if checkpoint is not None and name == "bpe":
        return AutoTokenizer.from_pretrained(checkpoint)  # the BPE this run trained, saved with every checkpoint
    if name == "gpt2":
        tokenizer = load_gpt2_tokenizer()
    elif name == "bpe":
        folder = os.path.join(training_args.output_dir, "tokenizer")
        with training_args.main_process_first(desc="training the BPE tokenizer", local=False):
            if training_args.process_index == 0:
                limit = model_args.tokenizer_train_docs or (BPE_STREAM_DOCS if data_args.streaming else None)
                docs = raw["train"].take(limit) if limit else raw["train"]
                texts = (row[data_args.text_column] for row in docs.select_columns([data_args.text_column]))
                tokenizer = train_bpe_tokenizer(texts, model_args.tokenizer_vocab_size, model_max_length=positions)
                tokenizer.save_pretrained(folder)
                logger.info("Trained a byte-level BPE of %d tokens, saved to %s", len(tokenizer), folder)
            else:
                tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision,
                                                  trust_remote_code=model_args.trust_remote_code)
    tokenizer.model_max_length = positions
    return tokenizer


def prepare_data(data_args, training_args, tokenizer, raw):
    train, validation = raw["train"], raw["validation"]
    if isinstance(train, datasets.IterableDataset):
        train = train.shuffle(seed=training_args.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    with training_args.main_process_first(desc="packing"):
        kwargs = dict(block_size=data_args.block_size, text_column=data_args.text_column,
                      num_proc=data_args.preprocessing_num_workers)
        train_blocks = pack_into_blocks(train, tokenizer, **kwargs)
        eval_blocks = pack_into_blocks(validation, tokenizer, **kwargs)
    train_blocks = _head(train_blocks, data_args.max_train_blocks)
    eval_blocks = _head(eval_blocks, data_args.max_eval_blocks)
    if isinstance(eval_blocks, datasets.IterableDataset):  # read the stream once, evaluate on the same blocks
        eval_blocks = datasets.Dataset.from_list(list(eval_blocks))
    return train_blocks, eval_blocks


def _head(dataset, n):
    if n is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(n)
    return dataset.select(range(min(n, len(dataset))))


def baseline_entropy(train_blocks, eval_blocks):
    """Unigram entropy (nats/token) of the training blocks (of the validation blocks for a stream)."""
    blocks, which = (train_blocks, "training") if isinstance(train_blocks, datasets.Dataset) else (eval_blocks,
                                                                                                   "validation")
    blocks = _head(blocks, ENTROPY_BLOCKS)
    return unigram_entropy(blocks), f"{which} data, {len(blocks) * len(blocks[0]['input_ids']):,} tokens"


def build(model_args, tokenizer, positions, config):
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path is None:
        ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        return build_model(model_args.model_preset, len(tokenizer), positions, **ids, **extra)
    if len(tokenizer) > config.vocab_size:
        raise RecipeError(f"The tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path!r} only "
                          f"{config.vocab_size} embeddings: use the model's own tokenizer.")
    return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                trust_remote_code=model_args.trust_remote_code, **extra)


def steps_and_epochs(training_args, train_blocks, seqs_per_step):
    if training_args.max_steps > 0:
        steps = training_args.max_steps
    elif isinstance(train_blocks, datasets.IterableDataset):
        raise RecipeError("A streamed dataset has no length, so the number of steps is unknown: set max_steps.")
    else:
        steps = math.ceil(len(train_blocks) / seqs_per_step * training_args.num_train_epochs)
    epochs = steps * seqs_per_step / len(train_blocks) if isinstance(train_blocks, datasets.Dataset) else None
    return steps, epochs


def log_derived_numbers(model, data_args, training_args, seqs_per_step, steps, epochs, entropy) -> dict:
    args = training_args
    spec = get_optimizer_spec(args.optimizer_name)
    warmup = resolve_warmup_steps(args, steps)
    tokens_per_step = seqs_per_step * data_args.block_size
    if args.optimizer_name == "sf_adamw_refined":
        window = f"~T/C = {steps}/{args.decoupling_c:g} = {steps / args.decoupling_c:.1f} steps"
    elif spec.schedule_free:
        window = f"~T(1-b1) = {steps * (1 - args.adam_beta1):.1f} steps (vanilla SF: C = 1/(1-b1))"
    elif args.optimizer_name == "adamw_ema":
        window = f"EMA ~1/(1-decay) = {1 / (1 - args.ema_decay):.0f} steps"
    else:
        window = "none (the lr schedule anneals)"
    numbers = {
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "optimizer": f"{args.optimizer_name}: lr {args.learning_rate:g}, betas ({args.adam_beta1}, {args.adam_beta2}), "
                     f"weight decay {args.weight_decay:g} on {args.weight_decay_params} weights",
        "tokens per step": f"{tokens_per_step:,} = {args.per_device_train_batch_size} per device x "
                           f"{args.gradient_accumulation_steps} accumulation x {args.world_size} process(es) x "
                           f"{data_args.block_size} tokens",
        "steps": f"{steps:,} ({steps * tokens_per_step:,} tokens" + (f", {epochs:.2f} epochs)" if epochs else ")"),
        "warmup steps": f"{warmup:,}" + (" (in the optimizer)" if spec.schedule_free else " (lr scheduler)"),
        "averaging window": window,
        "eval / save every": f"{args.eval_steps} / {args.save_steps} steps",
        "unigram entropy": f"{entropy[0]:.3f} nats/token (perplexity {math.exp(entropy[0]):.1f}; {entropy[1]})",
        "threads": f"{torch.get_num_threads()} torch threads per process, device {args.device}",
    }
    width = max(map(len, numbers))
    logger.info("Derived numbers:\n%s", "\n".join(f"  {k:<{width}}  {v}" for k, v in numbers.items()))
    return numbers


def prepare(argv, default_config, require_pretrained=False):
    """Everything before training; every input error surfaces here as a RecipeError/ValueError, within seconds."""
    model_args, data_args, training_args = parse_script_args(argv, default_config=default_config)
    if require_pretrained and not model_args.model_name_or_path:
        raise RecipeError("Fine-tuning needs a model: pass --model_name_or_path (a local folder, e.g. the output_dir "
                          "of recipes/pretrain.py, or a Hub id). To train from scratch use recipes/pretrain.py.")
    setup_logging(training_args)
    seqs_per_step = resolve_batch(data_args, training_args)
    config = check_model(model_args, data_args)
    checkpoint = find_checkpoint(training_args)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    positions = model_args.max_position_embeddings or data_args.block_size
    if config is not None:
        positions = getattr(config, "max_position_embeddings", None) or positions
    raw = load_text_dataset(data_args.dataset_name, config_name=data_args.dataset_config,
                            train_split=data_args.train_split, validation_split=data_args.validation_split,
                            text_column=data_args.text_column, streaming=data_args.streaming,
                            validation_fraction=data_args.validation_fraction,
                            validation_size=data_args.validation_size, seed=training_args.seed)
    tokenizer = load_tokenizer(model_args, data_args, raw, training_args, checkpoint, positions)
    train_blocks, eval_blocks = prepare_data(data_args, training_args, tokenizer, raw)
    steps, epochs = steps_and_epochs(training_args, train_blocks, seqs_per_step)
    set_seed(training_args.seed)
    model = build(model_args, tokenizer, positions, config)
    entropy = baseline_entropy(train_blocks, eval_blocks)
    log_derived_numbers(model, data_args, training_args, seqs_per_step, steps, epochs, entropy)
    return model_args, data_args, training_args, tokenizer, model, train_blocks, eval_blocks, checkpoint, entropy


def main(argv=None, default_config=DEFAULT_RECIPE, require_pretrained=False):
    try:
        prepared = prepare(argv, default_config, require_pretrained)
    except (ValueError, ImportError) as err:  # bad input: say what to fix, no traceback, before any training
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {err}") from None
    model_args, data_args, training_args, tokenizer, model, train_blocks, eval_blocks, checkpoint, entropy = prepared
    trainer = ScheduleFreeTrainer(model=model, args=training_args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                                  processing_class=tokenizer, data_collator=default_data_collator)
    out = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        record, written = run_args_record(model_args, data_args), out / "run_args.json"
        if checkpoint and written.is_file() and (changes := run_args_changes(json.loads(written.read_text()), record)):
            logger.warning("Resuming %s with other model/data settings than the run that wrote it (%s); "
                           "run_args.json now records the new ones.", checkpoint, "; ".join(changes))
        written.write_text(json.dumps(record, indent=2) + "\n")
    initial = None
    if model_args.model_name_or_path is not None and checkpoint is None:
        initial = trainer.evaluate()["eval_loss"]
        logger.info("Validation loss of %s before fine-tuning: %.4f", model_args.model_name_or_path, initial)

    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # x, the tokenizer and schedule_free.json
    trainer.save_state()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    metrics.update(perplexity=math.exp(metrics["eval_loss"]), unigram_entropy=entropy[0],
                   unigram_perplexity=math.exp(entropy[0]))
    if initial is not None:
        metrics["initial_eval_loss"] = initial
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        checkpoints = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[-1]))
        logger.info(
            "Done.\n  final model (x): %s  (AutoModelForCausalLM.from_pretrained(%r))\n  checkpoints (x): %s\n"
            "  TensorBoard: tensorboard --logdir %s\n  validation loss %.4f nats/token, perplexity %.2f%s\n"
            "  unigram entropy %.4f nats/token (perplexity %.1f): the model is %.2f nats/token %s it",
            out, str(out), ", ".join(checkpoints) or "none", out / "runs", metrics["eval_loss"], metrics["perplexity"],
            f" (before fine-tuning {initial:.4f})" if initial is not None else "", entropy[0], math.exp(entropy[0]),
            abs(entropy[0] - metrics["eval_loss"]), "below" if metrics["eval_loss"] < entropy[0] else "ABOVE")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group: a process left with it aborts at exit
    return metrics


if __name__ == "__main__":
    main()
