"""What a training script prints: sf_hf's log lines on the main process, the derived numbers before training and
the summary after it."""

import logging
import math
import sys

import datasets
import torch
import transformers

from ..registry import get_optimizer_spec, resolve_warmup_steps

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


def log_derived_numbers(model, data_args, training_args, seqs_per_step, steps, epochs, entropy) -> dict:
    """Logs (and returns) the numbers a recipe implies: parameters, tokens per step, warmup, averaging window..."""
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


def log_done(out, metrics, entropy, initial=None) -> None:
    """The summary after training: where the model and checkpoints are, the validation loss against the unigram
    baseline (and against the loss before fine-tuning)."""
    checkpoints = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[-1]))
    logger.info(
        "Done.\n  final model (x): %s  (AutoModelForCausalLM.from_pretrained(%r))\n  checkpoints (x): %s\n"
        "  TensorBoard: tensorboard --logdir %s\n  validation loss %.4f nats/token, perplexity %.2f%s\n"
        "  unigram entropy %.4f nats/token (perplexity %.1f): the model is %.2f nats/token %s it",
        out, str(out), ", ".join(checkpoints) or "none", out / "runs", metrics["eval_loss"], metrics["perplexity"],
        f" (before fine-tuning {initial:.4f})" if initial is not None else "", entropy[0], math.exp(entropy[0]),
        abs(entropy[0] - metrics["eval_loss"]), "below" if metrics["eval_loss"] < entropy[0] else "ABOVE")
