"""Training throughput: `ScheduleFreeTrainer` (refined SF-AdamW) against `transformers.Trainer` + fused AdamW.

    python benchmarks/trainer_throughput.py                   # the embedded default recipe (make pretrain's)
    python benchmarks/trainer_throughput.py --steps 20 --repeats 1 --max_train_blocks 512   # a smoke run
    python benchmarks/trainer_throughput.py --model_preset llama-tiny --sf_fused true        # recipe flags pass through

Both arms train the same model (the same initial weights) on the same batches of the recipe
(`sf_hf.scripts.pretrain.prepare`, which `recipes/pretrain.py` runs: data, tokenizer, model, batch and optimizer
settings all come from it; every flag this script does not know is a recipe flag). The only differences are the
trainer and the optimizer: the recipe's `ScheduleFreeTrainer` with its Schedule-Free optimizer, against a plain
`transformers.Trainer` with `optim="adamw_torch_fused"` and a cosine schedule at the same learning rate, warmup,
weight decay and clipping.
No evaluation, checkpoint or report runs during the timed steps.

A step's time is the wall clock between consecutive `on_step_end` callbacks (data loading, forward, backward,
optimizer step and the trainer's own bookkeeping); the first `--warmup` steps of each run are left out. Before the
timed runs, each arm trains `--warmup_run_steps` steps untimed: the first run of a process was 10-20% slower,
whichever arm it was, and set a repeat's ratio apart from the others. The timed runs alternate (SF, AdamW, SF,
AdamW, ...), so a slow moment of a shared machine hits both; throughput is tokens per optimizer step over the
median step time, and the ratio is taken per repeat, then its median is printed.
Target (issue #7): SF throughput within 3% of Trainer + fused AdamW (ratio >= 0.97).
"""

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time

import torch
import transformers
from common import load_average, machine_summary
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from sf_hf import ScheduleFreeTrainer
from sf_hf.scripts.pretrain import DEFAULT_RECIPE, prepare

TARGET_RATIO = 0.97


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimizer step, end to end."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def step_times(self, warmup: int) -> list:
        return [b - a for a, b in zip(self.ends[:-1], self.ends[1:])][warmup:]


def adamw_arguments(sf_args, output_dir: str) -> TrainingArguments:
    """The recipe's `ScheduleFreeConfig` as plain `TrainingArguments` with fused AdamW and a cosine schedule."""
    values = {f.name: getattr(sf_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    values.update(optim="adamw_torch_fused", lr_scheduler_type="cosine", output_dir=output_dir)
    return TrainingArguments(**values)


def timed_run(trainer, timer: StepTimer, warmup: int) -> float:
    """Median seconds per optimizer step of one training run."""
    trainer.add_callback(timer)
    trainer.train()
    times = timer.step_times(warmup)
    if not times:
        raise SystemExit(f"No step was timed: --steps must be larger than --warmup ({warmup}).")
    return statistics.median(times)


def compare(
    recipe_flags: list[str],
    steps: int = 40,
    warmup: int = 5,
    repeats: int = 3,
    warmup_run_steps: int = 10,
    evaluate: bool = False,
) -> dict:
    """Trains both arms as the module docstring says, printing as it goes; returns the numbers.

    Args:
        recipe_flags (`list[str]`): flags of the recipe (`sf_hf.scripts.pretrain`), e.g. `["--model_preset",
            "llama-tiny"]`; `--config FILE` picks another recipe than the embedded default.
        steps, warmup, repeats, warmup_run_steps (`int`): as the command-line flags of the same names.
        evaluate (`bool`): also evaluate each arm after its last timed run (`ScheduleFreeTrainer` at x) on the
            recipe's validation blocks.

    Returns:
        `dict`: optimizer, sf_fused, params, tokens_per_step, tokens_per_s ({"sf": [...], "adamw": [...]}, per
        repeat), ratios (per repeat), ratio (their median) and, with `evaluate`, eval_loss ({"sf", "adamw"}).
    """
    transformers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="sf_hf_throughput_") as tmp:
        flags = [
            "--output_dir",
            f"{tmp}/sf",
            "--max_steps",
            str(steps),
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--logging_steps",
            str(10 * steps),
            "--disable_tqdm",
            "true",
            *recipe_flags,
        ]
        _, data_args, sf_args, tokenizer, model, train_blocks, eval_blocks, _, _, _ = prepare(flags, DEFAULT_RECIPE)
        initial = copy.deepcopy(model.state_dict())
        tokens_per_step = (
            sf_args.per_device_train_batch_size * sf_args.gradient_accumulation_steps * data_args.block_size
        )
        base_args = adamw_arguments(sf_args, f"{tmp}/adamw")
        params = sum(p.numel() for p in model.parameters())
        print(
            f"# trainer throughput: {sf_args.optimizer_name} (sf_fused={sf_args.sf_fused}) in ScheduleFreeTrainer vs "
            f"Trainer + fused AdamW; {params:,} parameters, {tokens_per_step:,} tokens per step, {steps} steps "
            f"per run ({warmup} left out), {repeats} repeats"
        )
        print(f"# {machine_summary()}")

        def trainer_for(arm: str, max_steps: int) -> Trainer:
            model.load_state_dict(initial)
            arm_args = copy.copy(sf_args if arm == "sf" else base_args)
            arm_args.max_steps = max_steps
            trainer_class = ScheduleFreeTrainer if arm == "sf" else Trainer
            return trainer_class(
                model=model,
                args=arm_args,
                train_dataset=train_blocks,
                eval_dataset=eval_blocks,
                processing_class=tokenizer,
                data_collator=default_data_collator,
            )

        if warmup_run_steps > 0:
            for arm in ("sf", "adamw"):
                trainer_for(arm, warmup_run_steps).train()
            print(f"  (one untimed run of {warmup_run_steps} steps per arm done)", flush=True)
        results = {"sf": [], "adamw": []}
        eval_loss = {}
        for repeat in range(repeats):
            for arm in ("sf", "adamw") if repeat % 2 == 0 else ("adamw", "sf"):
                trainer = trainer_for(arm, steps)
                results[arm].append(tokens_per_step / timed_run(trainer, StepTimer(), warmup))
                print(f"  repeat {repeat + 1}: {arm:<5} {results[arm][-1]:9,.0f} tokens/s", flush=True)
                if evaluate and repeat == repeats - 1:
                    eval_loss[arm] = trainer.evaluate()["eval_loss"]

    ratios = [sf / adamw for sf, adamw in zip(results["sf"], results["adamw"])]
    summary = dict(
        optimizer=sf_args.optimizer_name,
        sf_fused=sf_args.sf_fused,
        params=params,
        tokens_per_step=tokens_per_step,
        tokens_per_s=results,
        ratios=ratios,
        ratio=statistics.median(ratios),
    )
    if evaluate:
        summary["eval_loss"] = eval_loss
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each run left out (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm, alternating (default 3)")
    parser.add_argument(
        "--warmup_run_steps",
        type=int,
        default=10,
        help="steps of one untimed run of each arm before the timed ones (default 10; 0: none)",
    )
    args, recipe_flags = parser.parse_known_args(argv)
    if args.steps <= args.warmup or args.repeats < 1 or args.warmup_run_steps < 0:
        parser.error("--steps must be larger than --warmup, --repeats at least 1 and --warmup_run_steps at least 0.")
    result = compare(recipe_flags, args.steps, args.warmup, args.repeats, args.warmup_run_steps)
    tokens_per_s = result["tokens_per_s"]
    print(f"\n  {'':<36}{'tokens/s (median)':>18}")
    print(f"  {'ScheduleFreeTrainer + ' + result['optimizer']:<36}{statistics.median(tokens_per_s['sf']):>18,.0f}")
    print(f"  {'Trainer + AdamW (fused)':<36}{statistics.median(tokens_per_s['adamw']):>18,.0f}")
    verdict = "PASS" if result["ratio"] >= TARGET_RATIO else "FAIL"
    per_repeat = ", ".join(f"{r:.3f}" for r in result["ratios"])
    print(
        f"\nSF / AdamW throughput: {result['ratio']:.3f} (per repeat: {per_repeat}); "
        f"target >= {TARGET_RATIO}: {verdict}"
    )
    print(f"# load average at the end: {load_average()}; torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
