"""The JSON records a run keeps beside its weights and the model card reads: the run's `run_args.json` (written by
the recipes) and a folder's `eval_results.json` (written by `sf-hf evaluate`).

    run_args = read_run_args("runs/llama-small")                      # {} for a run made without a recipe
    results = read_eval_results("runs/llama-small/checkpoint-500")    # None until the folder was evaluated
"""

import json
import os
from pathlib import Path

RUN_ARGS_NAME = "run_args.json"
EVAL_RESULTS_NAME = "eval_results.json"


def read_run_args(run_dir: os.PathLike) -> dict:
    """The run's `run_args.json`, or `{}` when it has none."""
    path = Path(run_dir) / RUN_ARGS_NAME
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def read_eval_results(folder: os.PathLike) -> dict | None:
    """A folder's `eval_results.json` as written by `sf_hf.pipeline.evaluate_checkpoint`, or None."""
    path = Path(folder) / EVAL_RESULTS_NAME
    if not path.is_file():
        return None
    with open(path) as f:
        record = json.load(f)
    return record if "checkpoint" in record and ("eval_loss" in record or "tasks" in record) else None
