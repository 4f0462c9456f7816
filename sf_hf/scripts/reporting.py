"""What a training script prints: sf_hf's log lines on the main process, the derived numbers before training, the
measured speed and ETA once the first steps are timed (`SpeedCallback`) and the summary after it."""

import logging
import math
import sys
import time

import datasets
import torch
import transformers
from tqdm import tqdm
from transformers import TrainerCallback

from ..optim.averaging import averaging_window
from ..registry import get_optimizer_spec, optimizer_cls_and_kwargs, resolve_warmup_steps

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
    # the per-save bars: hidden, unless `--log_level info` (or debug) asks for them
    hide_transformers_bars(SAVE_BARS if training_args.get_process_log_level() > logging.INFO else ())


SAVE_BARS = ("Writing model shards",)
"""The bars transformers draws at every save (one per checkpoint and for the final model)."""


def hide_transformers_bars(descriptions) -> None:
    """Hides transformers' progress bars with these descriptions (`transformers.utils.logging.set_tqdm_hook`, which
    replaces the previous hook); its other bars, and the Trainer's own, stay."""

    def hook(factory, args, kwargs):
        hidden = kwargs.get("desc") in descriptions
        return factory(*args, **({**kwargs, "disable": True} if hidden else kwargs))

    transformers.utils.logging.set_tqdm_hook(hook)


def log_derived_numbers(model, data_args, training_args, seqs_per_step, steps, epochs, entropy) -> dict:
    """Logs (and returns) the numbers a recipe implies: parameters, tokens per step, warmup, averaging window..."""
    args = training_args
    spec = get_optimizer_spec(args.optimizer_name)
    warmup = resolve_warmup_steps(args, steps)
    tokens_per_step = seqs_per_step * data_args.block_size
    if spec.schedule_free:
        window = (
            f"~{final_averaging_window(args, steps):.1f} steps of y at the end ((1 - b) / c: ~T/C refined, "
            "~T(1-b1) vanilla)"
        )
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


def final_averaging_window(args, steps: int) -> float:
    """The averaging window of x at the end of the run (`sf_hf.optim.averaging.averaging_window`), from the parameter
    group the optimizer will build for these arguments."""
    optimizer_cls, kwargs = optimizer_cls_and_kwargs(args, steps)
    group = optimizer_cls([torch.nn.Parameter(torch.zeros(1))], **kwargs).param_groups[0]
    return averaging_window(group, steps)


class SpeedCallback(TrainerCallback):
    """Logs the training speed and the time left, once, after `measure_steps` optimizer steps in a row:

        sf_hf.recipes: 2,450 tokens/s (0.67 s/step over steps 2-12), ETA 02:08 for the 188 steps left of 200

    The first step of a run (or of a resume) is left out (it warms up), and an evaluation or a checkpoint restarts
    the measurement, so the speed is that of training steps alone; the ETA (tqdm's format) is the steps left at that
    speed, without the evaluations and checkpoints still to come.

    Args:
        tokens_per_step (`int`): tokens in one optimizer step over all processes.
        measure_steps (`int`, *optional*, defaults to 10): steps timed before the line is logged.
    """

    def __init__(self, tokens_per_step: int, measure_steps: int = 10):
        self.tokens_per_step, self.measure_steps = tokens_per_step, measure_steps
        self.start: tuple | None = None  # (step, time) of the measurement's first step end
        self.logged = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.logged = None, False

    def on_step_end(self, args, state, control, **kwargs):
        if self.logged:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (state.global_step, now)
            return
        steps = state.global_step - self.start[0]
        if steps < self.measure_steps:
            return
        seconds_per_step = (now - self.start[1]) / steps
        left = max(state.max_steps - state.global_step, 0)
        if state.is_world_process_zero:
            logger.info(
                "%s tokens/s (%.2f s/step over steps %d-%d), ETA %s for the %d steps left of %d",
                f"{self.tokens_per_step / seconds_per_step:,.0f}",
                seconds_per_step,
                self.start[0] + 1,
                state.global_step,
                tqdm.format_interval(left * seconds_per_step),
                left,
                state.max_steps,
            )
        self.logged = True

    def _restart(self, *args, **kwargs):
        self.start = None

    on_evaluate = on_save = _restart


def log_done(out, metrics, entropy, initial=None) -> None:
    """The summary after training: where the model and checkpoints are, the validation loss against the unigram
    baseline (and against the loss before fine-tuning)."""
    checkpoints = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda name: int(name.split("-")[-1]))
    logger.info(
        "Done.\n  final model (x): %s  (AutoModelForCausalLM.from_pretrained(%r))\n  checkpoints (x): %s\n"
        "  TensorBoard: tensorboard --logdir %s\n  validation loss %.4f nats/token, perplexity %.2f%s\n"
        "  unigram entropy %.4f nats/token (perplexity %.1f): the model is %.2f nats/token %s it",
        out,
        str(out),
        ", ".join(checkpoints) or "none",
        out / "runs",
        metrics["eval_loss"],
        metrics["perplexity"],
        f" (before fine-tuning {initial:.4f})" if initial is not None else "",
        entropy[0],
        math.exp(entropy[0]),
        abs(entropy[0] - metrics["eval_loss"]),
        "below" if metrics["eval_loss"] < entropy[0] else "ABOVE",
    )
