"""ZeRO-3 with the shipped accelerate_configs/deepspeed_zero3.yaml as it is (zero3_init_flag: true): models built
after their TrainingArguments, as the recipes build theirs, are born partitioned; train, checkpoint, resume.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 2 --mixed_precision no \
        -m tests.distributed.run_zero3_init --out /tmp/zero3_init

Rank 0 writes the optimizer's x of the uninterrupted and of the resumed run (x_master, x_resumed) and results.json
(tests/distributed/test_strategies.py asserts on them). The helpers are run_strategy.py's.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from sf_hf import ScheduleFreeTrainer
from tests.distributed.run_strategy import (
    EVAL,
    SAVE_AT,
    TRAIN,
    describe,
    end_process_group,
    losses,
    master_weights,
    trainer_args,
)
from tests.trainer_utils import tiny_model


def partitioned_model(seed: int):
    """The tiny Llama built from its config after the TrainingArguments: under deepspeed.zero.Init."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_model().config)


def main(out: Path) -> None:
    rank = int(os.environ.get("RANK", 0))
    args = trainer_args(out / "run")
    straight = ScheduleFreeTrainer(model=partitioned_model(0), args=args, train_dataset=TRAIN, eval_dataset=EVAL)
    shapes = sorted({str(list(t.shape)) for t in straight.model.state_dict().values()})  # [0]: partitioned
    straight.train()
    results = dict(
        describe(straight),
        state_dict_shapes=shapes,
        losses=losses(straight),
        eval_loss=straight.evaluate()["eval_loss"],
    )
    x = master_weights(straight)
    args = trainer_args(out / "resumed")
    resumed = ScheduleFreeTrainer(model=partitioned_model(1), args=args, train_dataset=TRAIN, eval_dataset=EVAL)
    resumed.train(resume_from_checkpoint=str(out / "run" / f"checkpoint-{SAVE_AT}"))
    results.update(
        resumed_losses=losses(resumed),
        resumed_eval_loss=resumed.evaluate()["eval_loss"],
        resumed_k=[g["k"] for g in resumed._base_optimizer().param_groups],
    )
    x_resumed = master_weights(resumed)
    if rank == 0:
        save_file(x, str(out / "x_master.safetensors"))
        save_file(x_resumed, str(out / "x_resumed.safetensors"))
        (out / "results.json").write_text(json.dumps(results, indent=1))
    end_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    cli.out.mkdir(parents=True, exist_ok=True)
    main(cli.out)
