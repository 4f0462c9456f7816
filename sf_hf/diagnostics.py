"""River diagnostics: where x and y are on the loss landscape, logged at every evaluation of any run.

    from sf_hf.diagnostics import RiverDiagnosticsCallback
    trainer = ScheduleFreeTrainer(..., callbacks=[RiverDiagnosticsCallback()])
    trainer.train()     # every eval entry of trainer.state.log_history gains eval_river_* keys

Song et al. (2025, arXiv:2507.09846) read a Schedule-Free run through the "river valley" picture: y is the
point that takes the steps and bounces on the valley's walls; x, a weighted average of the iterates,
should sit near the river at the bottom. At each evaluation the callback adds, next to `eval_loss`:

    eval_river_loss_x             validation loss at x (what is evaluated and published)
    eval_river_loss_y             validation loss at y (the training point)
    eval_river_loss_gap           loss_y - loss_x: > 0 when averaging helps, < 0 when x lags behind y
    eval_river_xy_distance        ||x - y||_2 over all parameters (= (1 - b1) ||x - z|| for Schedule-Free)
    eval_river_xy_relative        ||x - y|| / ||x||
    eval_river_averaging_weight   c of the last step (weight of the newest iterate in x)
    eval_river_averaging_window   (1 - b1) / c steps: x is close to an EMA of y with rate c / (1 - b1), so
                                  this is the number of recent y's it averages over; ~(1 - b1) t for vanilla
                                  SF, ~t / C for the refined variant, 1 / (1 - decay) for AdamW + EMA

The loss at y is computed on the same evaluation batches without changing the model's mode: y is built from x
and the optimizer state (y = (1 - b1) z + b1 x; the raw iterate for AdamW + EMA) and passed to the model with
`torch.func.functional_call`, so `ScheduleFreeTrainer` stays the one place where the weights switch. For an
optimizer without a second point (plain AdamW) x = y: the distance is 0 and no second pass is made.

The keys are merged into the evaluation's entry of `state.log_history` and into the dict `evaluate()` returns.
Reporting integrations (TensorBoard, W&B) have already received that entry when `on_evaluate` runs, so they
do not see them. Single-process and DDP runs only (under DDP the losses are summed over processes); with
ZeRO or FSDP the parameters are sharded and the callback raises.
"""

import math

import torch
from torch import nn
from torch.func import functional_call
from transformers import TrainerCallback

from .distributed import base_optimizer
from .optim.averaging import averaging_window
from .optim.conversion import beta_of_y, x_to_y_, y_to_x_

KEYS = ("loss_x", "loss_y", "loss_gap", "xy_distance", "xy_relative", "averaging_weight", "averaging_window")


def _named_state(model: nn.Module, optimizer) -> dict[str, dict]:
    """Parameter name -> (its optimizer state, its group) for the parameters the optimizer holds state for."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in by_id and optimizer.state.get(p):
                found[by_id[id(p)]] = (optimizer.state[p], group)
    return found


@torch.no_grad()
def averaged_and_training_points(model: nn.Module, optimizer) -> tuple:
    """The weights x and y as `{name: tensor}`, read from the model and the optimizer state, changing neither.

    Args:
        model (`nn.Module`): the model, holding x (eval mode) or y (train mode) as the optimizer says.
        optimizer: a Schedule-Free optimizer (state `z`), `AdamWWithEMA` (state `ema`), any other optimizer, or
            None.

    Returns:
        `tuple`: `(x, y)`; `y` is None when the optimizer keeps no second point (x = y = the weights). The point
        the model holds is returned as views of its parameters (they change with it), the other as new tensors.
    """
    optimizer = base_optimizer(optimizer)
    held = {name: p.detach() for name, p in model.named_parameters()}
    if optimizer is None or not hasattr(optimizer, "train_mode"):
        return held, None
    in_train_mode = optimizer.train_mode
    other = {}
    for name, (state, group) in _named_state(model, optimizer).items():
        point = held[name].clone()
        if "z" in state:  # Schedule-Free: lerp toward z, the same conversions as train()/eval()
            (y_to_x_ if in_train_mode else x_to_y_)([point], [state["z"]], beta_of_y(group))
        elif "ema" in state:  # AdamW + EMA: the state holds whichever of (raw, EMA) the model does not
            point = state["ema"].detach()
        else:
            continue
        other[name] = point
    if not other:
        return held, None
    swapped = {**held, **other}
    return (swapped, held) if in_train_mode else (held, swapped)


def averaging_weight_and_window(optimizer) -> tuple:
    """`(c, window)` of the first parameter group, or `(None, None)` for an optimizer without averaging.

    c is the weight of the newest iterate in x at the last step; the window is (1 - b1) / c steps for
    Schedule-Free (`sf_hf.optim.averaging.averaging_window`: x is close to an EMA of y with rate c / (1 - b1))
    and 1 / (1 - decay) for AdamW + EMA.
    """
    optimizer = base_optimizer(optimizer)
    if optimizer is None:
        return None, None
    group = optimizer.param_groups[0]
    if "averaging_weight" in group:
        return float(group["averaging_weight"]), averaging_window(group)
    if hasattr(optimizer, "ema_decay"):
        c = 1 - optimizer.ema_decay
        return c, (1 / c if c > 0 else math.inf)
    return None, None


@torch.no_grad()
def mean_loss(
    model: nn.Module, batches, weights: dict[str, torch.Tensor] | None = None, max_batches: int | None = None
) -> float:
    """Token-weighted mean causal-LM loss of `model` (at `weights` when given, else as it is) over `batches`.

    Args:
        model (`nn.Module`): a Hugging Face causal LM (returns `.loss` when given `labels`).
        batches (iterable of `dict`): model inputs with `labels` (-100 is ignored), e.g. the eval dataloader.
        weights (`dict`, *optional*): parameter name -> tensor, used through `torch.func.functional_call`; the
            model's own parameters are not touched.
        max_batches (`int`, *optional*): stop after this many batches.

    Returns:
        `float`: the sum of per-token losses over the number of predicted tokens (summed over processes under DDP).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            outputs = functional_call(model, weights, args=(), kwargs=batch) if weights else model(**batch)
            count = (batch["labels"][..., 1:] != -100).sum()
            loss_sum += outputs.loss.double() * count
            tokens += count
    finally:
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(tokens)
    if tokens.item() == 0:
        raise ValueError("The evaluation batches hold no tokens to predict.")
    return (loss_sum / tokens).item()


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


class RiverDiagnosticsCallback(TrainerCallback):
    """Adds loss at x and y, the x-y distance, c and the averaging window to every evaluation (module docstring).

    Args:
        max_eval_batches (`int`, *optional*): compute the losses on at most this many evaluation batches (the
            trainer's own `eval_loss` still covers the whole set). By default all of them, and the loss at x is
            the trainer's `eval_loss`.
    """

    def __init__(self, max_eval_batches: int | None = None):
        self.max_eval_batches = max_eval_batches

    def on_evaluate(
        self, args, state, control, metrics=None, model=None, optimizer=None, eval_dataloader=None, **kwargs
    ):
        if metrics is None or model is None or eval_dataloader is None:
            return
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise RuntimeError("RiverDiagnosticsCallback needs full parameters on every process: not with ZeRO/FSDP.")
        loss_keys = [k for k in metrics if k.endswith("_loss") and not k.endswith("_river_loss")]
        prefix = loss_keys[0][: -len("_loss")] if len(loss_keys) == 1 else "eval"
        x, y = averaged_and_training_points(model, optimizer)
        if self.max_eval_batches is None and len(loss_keys) == 1 and _model_holds(model, x):
            loss_x = float(metrics[loss_keys[0]])
        else:
            loss_x = mean_loss(model, eval_dataloader, None if _model_holds(model, x) else x, self.max_eval_batches)
        if y is None:
            loss_y, distance = loss_x, 0.0
        else:
            loss_y = mean_loss(model, eval_dataloader, None if _model_holds(model, y) else y, self.max_eval_batches)
            distance = _norm(x[n] - y[n] for n in x)
        c, window = averaging_weight_and_window(optimizer)
        values = dict(
            loss_x=loss_x,
            loss_y=loss_y,
            loss_gap=loss_y - loss_x,
            xy_distance=distance,
            xy_relative=distance / max(_norm(x.values()), 1e-30),
            averaging_weight=c,
            averaging_window=window,
        )
        record = {f"{prefix}_river_{k}": v for k, v in values.items() if v is not None}
        metrics.update(record)
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and any(k in last for k in loss_keys):
            last.update(record)
        else:
            state.log_history.append({**record, "step": state.global_step})


def _model_holds(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    """Whether the model's parameters are (the same tensors as) `weights`."""
    return all(p.detach().data_ptr() == weights[n].data_ptr() for n, p in model.named_parameters())
