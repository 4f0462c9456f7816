"""The checkpoint pipeline: evaluate a run's checkpoints at x, convert y checkpoints, write model cards, push.

    sf-hf evaluate runs/llama-small                           # eval_results.json per checkpoint, summary, plot
    sf-hf evaluate runs/llama-small --tasks sf_kjv            # + lm-evaluation-harness tasks, one plot per task
    sf-hf card runs/llama-small                               # the model cards push would upload, to read
    sf-hf convert runs/plain/checkpoint-500 --to x            # a y checkpoint of a plain Trainer -> new x folder
    sf-hf push runs/llama-small --repo-id org/llama-small-sf  # step-{N:09d} branches + main, with cards

Checkpoints -> evaluation -> card -> Hub, always at x. See docs/pipeline.md.
"""

from ..publishing.card import build_model_card
from ..publishing.records import read_eval_results, read_run_args
from ..publishing.retry import RetryPolicy
from ..publishing.run_inventory import CheckpointInfo, find_checkpoints, inspect_checkpoint
from .callbacks import CheckpointPipelineCallback
from .checkpoint_to_x import convert_checkpoint, load_model_at_x
from .errors import CheckpointError, PipelineError, PushError
from .evaluation import RunEvaluation, evaluate_checkpoint, evaluate_model, evaluate_run
from .harness import TaskSuite, evaluate_tasks
from .heldout import DataSpec, validation_blocks
from .push import PushReport, plan_push, push_run, write_cards

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointPipelineCallback",
    "DataSpec",
    "PipelineError",
    "PushError",
    "PushReport",
    "RetryPolicy",
    "RunEvaluation",
    "TaskSuite",
    "build_model_card",
    "convert_checkpoint",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_run",
    "evaluate_tasks",
    "find_checkpoints",
    "inspect_checkpoint",
    "load_model_at_x",
    "plan_push",
    "push_run",
    "read_eval_results",
    "read_run_args",
    "validation_blocks",
    "write_cards",
]
