"""Load any checkpoint of a run at x, converting y checkpoints from their optimizer state; `sf-hf convert`.

    sf-hf convert runs/plain/checkpoint-500 --to x            # writes runs/plain/x-checkpoint-500

    from sf_hf.pipeline import load_model_at_x
    model = load_model_at_x("runs/plain/checkpoint-500")      # y on disk, x in memory

A y checkpoint (plain `transformers.Trainer` with a schedule-free optimizer) holds y in its weights and z in
`optimizer.pt`; x = (y - (1 - b1) z) / b1 with b1 from the saved parameter groups (ScheduleFree+: the annealed b
that built y, `sf_beta1_y`). `optimizer.pt` indexes its state by position, so the position of each parameter is
rebuilt from how the Trainer groups them (decayed first, then the rest, in `named_parameters()` order) and
checked against every z's shape; a state that no
grouping explains, or that two groupings explain differently, is refused.
"""

import logging
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import constants
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..checkpoints import config_mismatch
from ..metadata import write_metadata
from ..optim import y_to_x_
from ..optim.conversion import beta_of_y
from ..publishing.run_inventory import (
    CheckpointInfo,
    inspect_checkpoint,
    load_optimizer_state,
    published_files,
    weight_files,
)
from ..weight_decay import decay_name_sets
from .errors import CheckpointError

logger = logging.getLogger(__name__)


def load_model_at_x(checkpoint: str | os.PathLike | CheckpointInfo, model_cls=AutoModelForCausalLM) -> PreTrainedModel:
    """Loads a checkpoint's model with x weights (converted in memory from y when the folder holds y).

    Args:
        checkpoint (`str`, `os.PathLike` or `CheckpointInfo`): the folder, or its `inspect_checkpoint`.
        model_cls (*optional*, defaults to `AutoModelForCausalLM`): the class whose `from_pretrained` loads it.

    Returns:
        `PreTrainedModel`: the model in eval mode, at x (or at its only weights for a `"plain"` checkpoint). For a
        PEFT adapter folder, a `peft.PeftModel`: the base model (`CheckpointInfo.adapter_base`) with the adapter at
        x applied, not merged.

    Raises:
        CheckpointError: the folder is incomplete or corrupt, or its y cannot be converted.
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else inspect_checkpoint(checkpoint)
    if info.problem:
        raise CheckpointError(f"{info.path}: {info.problem}")
    try:
        model = _load_adapter(info, model_cls) if info.adapter_base else model_cls.from_pretrained(info.path)
    except CheckpointError:
        raise
    except Exception as err:  # corrupt weights surface as many error types (safetensors, torch, OSError)
        detail = "; ".join(config_mismatch(info.path)) if not info.adapter_base else ""
        raise CheckpointError(f"{info.path}: cannot load the model: {detail or err}") from err
    if info.weights == "y":
        convert_model_to_x_(model, load_optimizer_state(info.path))
    return model.eval()


def _load_adapter(info: CheckpointInfo, model_cls):
    """The adapter's base model with the adapter applied; trainable adapters for y, so that the optimizer state's
    positions (trainable parameters only) can be matched to them."""
    try:
        from peft import PeftModel
    except ImportError as err:
        raise CheckpointError(f"{info.path} is a PEFT adapter: loading it needs peft (pip install peft)") from err
    try:
        base = model_cls.from_pretrained(info.adapter_base)
    except Exception as err:
        raise adapter_base_error(info, "model", err) from err
    return PeftModel.from_pretrained(base, info.path, is_trainable=info.weights == "y")


def adapter_base_error(info: CheckpointInfo, what: str, err: Exception) -> CheckpointError:
    """The error for an adapter whose base model (or its tokenizer: `what`) cannot be loaded, naming the base model,
    where it was looked for, and offline mode when that is why a Hub id was not fetched."""
    base = info.adapter_base
    where = "a local folder" if os.path.isdir(base) else "not a local folder, so a Hub id"
    hint = ""
    if not os.path.isdir(base) and constants.HF_HUB_OFFLINE:
        hint = (
            " HF_HUB_OFFLINE=1 is set, so the Hub is not asked: download the base model first (unset "
            "HF_HUB_OFFLINE, or `hf download` it) or point base_model_name_or_path at a local copy."
        )
    return CheckpointError(
        f"{info.path}: cannot load the {what} of the adapter's base model {base!r} "
        f"(base_model_name_or_path of adapter_config.json; {where}).{hint} "
        f"{type(err).__name__}: {err}"
    )


@torch.no_grad()
def convert_model_to_x_(model: nn.Module, optimizer_state: dict) -> None:
    """Turns a model holding y into x, in place, from a schedule-free optimizer's `state_dict()`.

    Parameters without state never took a step, so their x equals y. Tied parameters are converted once.

    Raises:
        CheckpointError: if the state does not match the model's parameters unambiguously.
    """
    positions = parameter_positions(model, optimizer_state["param_groups"], optimizer_state["state"])
    params = dict(model.named_parameters())
    by_beta1: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for group in optimizer_state["param_groups"]:
        beta1 = beta_of_y(group)
        for position in group["params"]:
            state = optimizer_state["state"].get(position, {})
            if "z" in state:
                ys, zs = by_beta1.setdefault(beta1, ([], []))
                ys.append(params[positions[position]].data)
                zs.append(state["z"].to(params[positions[position]].device))
    for beta1, (ys, zs) in by_beta1.items():
        y_to_x_(ys, zs, beta1)


def parameter_positions(model: nn.Module, param_groups: list, state: dict) -> dict[int, str]:
    """Maps each position of an optimizer `state_dict()` to the model parameter it belongs to.

    Candidate groupings: the Trainer's (weight-decayed parameters, then the others), `ScheduleFreeTrainer`'s
    `weight_decay_params="linear"` and a single group. One must match the group sizes and every z's shape,
    and all matching groupings must agree.

    Raises:
        CheckpointError: if no grouping matches, or matching ones disagree.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = {n: p.shape for n, p in model.named_parameters()}
    sizes = [len(g["params"]) for g in param_groups]
    found = {}
    for label, groups in _candidate_groupings(model, names).items():
        if [len(g) for g in groups] != sizes:
            continue
        mapping = {pos: name for g, group in zip(param_groups, groups) for pos, name in zip(g["params"], group)}
        if all(state[pos]["z"].shape == shapes[name] for pos, name in mapping.items() if "z" in state.get(pos, {})):
            found[label] = mapping
    if not found:
        raise CheckpointError(
            f"the optimizer state (groups of {sizes} parameters) does not match the model's {len(names)} trainable "
            "parameters under any known grouping; cannot convert y to x"
        )
    if len({tuple(sorted(m.items())) for m in found.values()}) > 1:
        raise CheckpointError(
            f"the optimizer state matches several parameter groupings ({', '.join(found)}) that "
            "disagree; cannot convert y to x safely"
        )
    return next(iter(found.values()))


def _candidate_groupings(model: nn.Module, names: list[str]) -> dict[str, list[list[str]]]:
    decay = decay_name_sets(model)
    hf_decay, linear_decay = decay["hf"], decay["linear"]
    return {
        "transformers.Trainer": [[n for n in names if n in hf_decay], [n for n in names if n not in hf_decay]],
        "weight_decay_params=linear": [
            [n for n in names if n in linear_decay],
            [n for n in names if n not in linear_decay],
        ],
        "single group": [names],
    }


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike | None = None) -> Path:
    """Writes a new folder holding the checkpoint at x; the source folder is only read.

    The new folder has the model (x weights), config, tokenizer, `trainer_state.json`, `eval_results.json` if
    present, and a `schedule_free.json` with `"weights": "x"`. It has no optimizer state: it is for evaluating
    and publishing, not for resuming training.

    Args:
        source (`str` or `os.PathLike`): the checkpoint folder (x or y).
        destination (`str` or `os.PathLike`, *optional*): the new folder; defaults to `x-<name>` beside the source
            (`x-checkpoint-500`: a name outside transformers' `checkpoint-*`, which its end of training with
            `save_total_limit=1` deletes, and outside sf_hf's `checkpoint-N`, which the pipeline evaluates). It must not
            exist yet and must not lie inside `source`.

    Returns:
        `Path`: the new folder.

    Raises:
        CheckpointError: the source is unusable, is not a schedule-free checkpoint, or `destination` is invalid.
    """
    source = Path(source).resolve()
    destination = Path(destination or source.parent / f"x-{source.name}").resolve()
    if destination.exists():
        raise CheckpointError(f"{destination} already exists; choose a new folder (convert never overwrites).")
    if destination.is_relative_to(source):
        raise CheckpointError(f"{destination} is inside {source}; convert never writes into its source.")
    info = inspect_checkpoint(source)
    if info.problem:
        raise CheckpointError(f"{source}: {info.problem}")
    if info.weights == "plain":
        raise CheckpointError(f"{source} was not trained with a schedule-free optimizer: it has no x and y.")
    model = load_model_at_x(info)
    destination.mkdir(parents=True)
    for name in sorted(set(published_files(source)) - set(weight_files(source))):
        shutil.copy2(source / name, destination / name)
    model.save_pretrained(destination)
    write_metadata(
        destination,
        weights="x",
        optimizer_name=info.optimizer_name,
        global_step=info.step,
        hyperparameters=info.hyperparameters,
        extra=dict(tokens_seen=info.tokens_seen, train_batch_size=info.train_batch_size, converted_from=info.weights),
    )
    logger.info("%s (%s) -> %s (x)", source, info.weights, destination)
    return destination
