"""The callbacks a recipe picks by name (open-r1's habit), in its YAML or on the command line:

    callbacks: [river_diagnostics, checkpoint_pipeline]      # recipes/<model>/<task>/config_*.yaml
    accelerate launch recipes/pretrain.py --callbacks river_diagnostics

`CALLBACKS` maps each name to a factory `(model_args, data_args, training_args) -> TrainerCallback` that builds the
callback from the recipe's own settings; a new one is an entry here. `get_callbacks` builds those a recipe names,
and an unknown name is an error that lists the known ones (raised while the recipe is parsed, before any data is
read).
"""

import inspect
from collections.abc import Callable, Sequence

from transformers import TrainerCallback

from .data import load_text_dataset
from .diagnostics import RiverDiagnosticsCallback
from .pipeline import CheckpointPipelineCallback, DataSpec


def _river_diagnostics(model_args, data_args, training_args) -> TrainerCallback:
    """`sf_hf.diagnostics.RiverDiagnosticsCallback`: loss at x and y, x-y distance, c and the averaging window at
    every evaluation (not with ZeRO/FSDP)."""
    return RiverDiagnosticsCallback()


def _checkpoint_pipeline(model_args, data_args, training_args) -> TrainerCallback:
    """`sf_hf.pipeline.CheckpointPipelineCallback`: evaluates every saved checkpoint (at x) on the run's held-out
    set in a background thread, into OUTPUT_DIR/eval_results.json (pushing stays with `push_to_hub`)."""
    accepted = set(inspect.signature(load_text_dataset).parameters)
    options = {
        k: v
        for k, v in vars(data_args).items()
        if k in accepted and k not in ("name_or_path", "config_name", "text_column")
    }
    options["seed"] = training_args.seed  # the held-out split the run itself was given
    data = DataSpec(
        dataset_name=data_args.dataset_name,
        block_size=data_args.block_size,
        dataset_config=data_args.dataset_config,
        text_column=data_args.text_column,
        load_options=options,
    )
    return CheckpointPipelineCallback(data=data, batch_size=training_args.per_device_eval_batch_size)


CALLBACKS: dict[str, Callable[..., TrainerCallback]] = {
    "river_diagnostics": _river_diagnostics,
    "checkpoint_pipeline": _checkpoint_pipeline,
}


def check_callback_names(names: Sequence[str]) -> None:
    """Raises `ValueError` naming the unknown names and listing the known ones."""
    unknown = [name for name in names if name not in CALLBACKS]
    if unknown:
        raise ValueError(f"Unknown callback(s) {', '.join(map(repr, unknown))}; known: {', '.join(CALLBACKS)}.")


def get_callbacks(names: Sequence[str], model_args, data_args, training_args) -> list[TrainerCallback]:
    """The callbacks `names` pick, built from the recipe's arguments, in the order given."""
    check_callback_names(names)
    return [CALLBACKS[name](model_args, data_args, training_args) for name in names]
