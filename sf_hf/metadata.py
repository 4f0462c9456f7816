"""`schedule_free.json`: what every sf_hf checkpoint and saved model says about its weights.

    {"weights": "x", "optimizer_name": "sf_adamw_refined", "global_step": 500,
     "hyperparameters": {"lr": 0.002, "betas": [0.95, 0.99], "decoupling_c": 200.0, ...}, ...}

"x" means the folder holds the averaged weights of Schedule-Free training (evaluate and publish them as
they are); "ema" the EMA of the weights (`adamw_ema`); "plain" the only iterate of an optimizer without an
average (`adamw_cosine`, `adamw_wsd`). "y" would mean the training point, which sf_hf never writes but
`sf_hf.pipeline` can convert.
"""

import json
import os

METADATA_NAME = "schedule_free.json"
HYPERPARAMETER_KEYS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "warmup_steps",
    "r",
    "weight_lr_power",
    "decoupling_c",
    "ema_decay",
    "sf_beta1",
    "sf_beta1_max",
    "sf_beta1_anneal_steps",
    "polyak_beta",
    "c_warmup",
    "sf_beta1_y",
)


def optimizer_hyperparameters(optimizer) -> dict:
    """The first parameter group's hyperparameters (and per-group lr/weight decay when groups differ)."""
    groups = optimizer.param_groups
    found = {k: groups[0][k] for k in HYPERPARAMETER_KEYS if k in groups[0]}
    if hasattr(optimizer, "ema_decay"):
        found["ema_decay"] = optimizer.ema_decay
    found["group_weight_decay"] = [g.get("weight_decay") for g in groups]
    found["group_lr"] = [g.get("lr") for g in groups]
    return found


def write_metadata(
    folder: str,
    *,
    weights: str,
    optimizer_name: str,
    global_step: int,
    hyperparameters: dict,
    extra: dict | None = None,
) -> str:
    """Writes `schedule_free.json` into `folder` and returns its path."""
    record = dict(
        weights=weights,
        optimizer_name=optimizer_name,
        global_step=global_step,
        hyperparameters=hyperparameters,
        **(extra or {}),
    )
    path = os.path.join(folder, METADATA_NAME)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=list)
    return path


def read_metadata(folder: str) -> dict | None:
    """The folder's `schedule_free.json`, or None when it has none (e.g. a plain Trainer checkpoint)."""
    path = os.path.join(folder, METADATA_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
