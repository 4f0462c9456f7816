"""Is a run on the river? Branch a short linear lr decay from a checkpoint and measure what it gains.

    sf-hf probe runs/llama-small/checkpoint-600                    # decay over 10% of the steps so far
    sf-hf probe runs/llama-small/checkpoint-600 --decay-steps 60 --control

    from sf_hf.probe import probe_checkpoint
    print(probe_checkpoint("runs/llama-small/checkpoint-600", decay_steps=60).describe())

What a branch is. The checkpoint's run is resumed exactly as `trainer.train(resume_from_checkpoint=...)` would
resume it (weights, optimizer state, data order and RNG), with one change: from the checkpoint's step on,
the learning rate falls linearly from the value the optimizer holds at that step to 0 over K steps (the lr of
branch step j is lr_s * (1 - j / K), as the linear decay of a WSD schedule). After K steps the validation
loss is measured at x and compared with the loss at x in the checkpoint.

* Schedule-Free checkpoints: the optimizer keeps running (z, v, the averaging sums), only its lr (the size
  of z's steps) decays. The averaging weights c stay what the optimizer computes (weights lr_max^2 with
  `weight_lr_power` = 2, the reference's rule), so x keeps averaging, and is evaluated at the end.
  A run whose x already follows the river gains almost nothing; x that lags or drifts off it gains.
* AdamW checkpoints (adamw_cosine, adamw_wsd, adamw_ema): the same branch with AdamW, from its current lr.
  For a constant-lr run this is a WSD decay phase, which gains a lot: the iterate sits up the valley's walls.

The gain (loss before - loss after) also holds K steps of progress along the river. `control=True` runs a
second branch at constant lr for the same K steps, so `decay_gain` (control - after) is the decay's own
share. The checkpoint folder is only read; the branches train in a temporary folder (or `output_dir`).

Data: the run's `run_args.json` (written by recipes/pretrain.py next to the checkpoints) names the dataset,
text column and block size; they can be overridden, or ready datasets passed in. Training arguments that
are not stored with a checkpoint take the paper's values: gradient clipping 1.0 for AdamW and none for
Schedule-Free, unless `max_grad_norm` says otherwise; data order matches the original run when `seed` does.
"""

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checkpoints import CheckpointCorruptError, checkpoint_problems, read_json, safe_torch_load
from .configs import ScheduleFreeConfig
from .data import load_text_dataset, pack_into_blocks
from .distributed import base_optimizer
from .metadata import read_metadata
from .pipeline.errors import CheckpointError, PipelineError
from .pipeline.heldout import DataSpec
from .registry import OPTIMIZERS, get_optimizer_spec
from .trainer import ScheduleFreeTrainer
from .weight_decay import decay_name_sets

logger = logging.getLogger(__name__)

DEFAULT_DECAY_FRACTION = 0.1
DEFAULT_TOLERANCE = 0.01
REQUIRED_FILES = ("config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json")


@dataclass
class ProbeResult:
    """What a decay branch gained.

    Attributes:
        checkpoint (`str`): the probed folder.
        optimizer_name (`str`): the run's optimizer.
        step (`int`): the checkpoint's global step (where the branch starts).
        decay_steps (`int`): K, the length of the branch.
        start_lr (`float`): the lr at the start of the decay (it ends at 0).
        loss_before (`float`): validation loss at x in the checkpoint.
        loss_after (`float`): validation loss at x after the K-step decay.
        loss_control (`float`, *optional*): validation loss at x after K more steps at constant lr.
    """

    checkpoint: str
    optimizer_name: str
    step: int
    decay_steps: int
    start_lr: float
    loss_before: float
    loss_after: float
    loss_control: float | None = None

    @property
    def gain(self) -> float:
        """loss_before - loss_after, in nats per token (> 0: the decay helped)."""
        return self.loss_before - self.loss_after

    @property
    def decay_gain(self) -> float | None:
        """loss_control - loss_after: what the decay gains over the same steps at constant lr."""
        return None if self.loss_control is None else self.loss_control - self.loss_after

    def on_river(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        """Whether the decay gains less than `tolerance` nats (the decay's own share when a control ran)."""
        gain = self.decay_gain if self.decay_gain is not None else self.gain
        return gain < tolerance

    def to_dict(self) -> dict:
        return dict(asdict(self), gain=self.gain, decay_gain=self.decay_gain)

    def describe(self, tolerance: float = DEFAULT_TOLERANCE) -> str:
        """A few lines for people: the numbers and what they mean."""
        lines = [
            f"{self.checkpoint} ({self.optimizer_name}, step {self.step}): a {self.decay_steps}-step linear lr decay "
            f"from lr {self.start_lr:.3g} to 0",
            f"  validation loss at x: {self.loss_before:.4f} -> {self.loss_after:.4f}  gain {self.gain:+.4f} nats "
            f"({100 * self.gain / self.loss_before:+.2f}%)",
        ]
        if self.loss_control is not None:
            lines.append(
                f"  the same {self.decay_steps} steps at constant lr: {self.loss_control:.4f}  "
                f"the decay's own gain {self.decay_gain:+.4f} nats"
            )
        which = "the decay's own gain" if self.loss_control is not None else "the gain"
        if self.on_river(tolerance):
            lines.append(f"  {which} is below {tolerance} nats: near zero, the run is on the river")
        else:
            lines.append(f"  {which} is at least {tolerance} nats: the weights are off the river (a decay would help)")
        return "\n".join(lines)


class DecayBranchTrainer(ScheduleFreeTrainer):
    """`ScheduleFreeTrainer` resumed from a checkpoint with a linear lr decay (or a constant lr) from its step.

    The schedule replaces the checkpoint's own scheduler once the optimizer state is loaded: the lr of branch
    step j is lr_s * (1 - j / decay_steps), lr_s being each group's lr in the loaded state.
    """

    def __init__(self, *args, decay_steps: int, decay: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.decay_steps = decay_steps
        self.decay = decay
        self.start_lr: float | None = None

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        optimizer = base_optimizer(self.optimizer)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        self.start_lr = optimizer.param_groups[0]["lr"]
        steps = self.decay_steps
        factor = (lambda j: max(0.0, 1.0 - j / steps)) if self.decay else (lambda j: 1.0)
        self.lr_scheduler = LambdaLR(optimizer, factor)


def _check_checkpoint(folder: Path) -> tuple:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} cannot be resumed: it lacks {', '.join(missing)}. A probe continues training from the "
            "optimizer state, so it needs a full Trainer checkpoint (not a save_model folder)."
        )
    problems = checkpoint_problems(folder, training_state=True)
    if problems:
        raise CheckpointCorruptError(f"{folder} cannot be resumed: " + "; ".join(problems))
    metadata = read_metadata(folder)
    if (
        metadata is None
        or metadata.get("optimizer_name") not in OPTIMIZERS
        or metadata.get("weights") != OPTIMIZERS[metadata["optimizer_name"]].saved_weights
    ):
        raise CheckpointError(
            f"{folder} has no schedule_free.json naming an sf_hf optimizer ({', '.join(OPTIMIZERS)}): "
            "the probe resumes runs of ScheduleFreeTrainer. For a plain Trainer checkpoint, retrain with "
            "ScheduleFreeTrainer or evaluate it with `sf-hf evaluate`."
        )
    state = read_json(folder / "trainer_state.json")
    return metadata, state


def infer_weight_decay_params(model, optimizer_groups: Sequence[dict]) -> str:
    """'linear' or 'hf': the `weight_decay_params` whose parameter groups have the saved groups' sizes.

    Raises:
        CheckpointError: if neither matches.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [len(g["params"]) for g in optimizer_groups]
    for label, decay in decay_name_sets(model).items():
        if [sum(n in decay for n in names), sum(n not in decay for n in names)] == sizes:
            return label
    raise CheckpointError(
        f"the optimizer state has parameter groups of sizes {sizes}, which matches neither "
        "weight_decay_params='linear' nor 'hf'; pass weight_decay_params."
    )


def load_probe_data(folder: Path, tokenizer, dataset=None, dataset_config=None, text_column=None, block_size=None):
    """The run's train and validation splits, packed into blocks as training saw them (see `DataSpec.from_run`)."""
    spec = DataSpec.from_run(
        folder.parent, dataset=dataset, dataset_config=dataset_config, text_column=text_column, block_size=block_size
    )
    try:
        splits = load_text_dataset(
            spec.dataset_name, config_name=spec.dataset_config, text_column=spec.text_column, **spec.load_options
        )
        return tuple(
            pack_into_blocks(splits[name], tokenizer, spec.block_size, text_column=spec.text_column)
            for name in ("train", "validation")
        )
    except (ValueError, ImportError) as err:
        raise PipelineError(f"Cannot build the data of {spec.dataset_name!r}: {err}") from err


def probe_checkpoint(
    checkpoint: os.PathLike,
    *,
    decay_steps: int | None = None,
    decay_fraction: float = DEFAULT_DECAY_FRACTION,
    control: bool = False,
    train_dataset=None,
    eval_dataset=None,
    max_eval_blocks: int | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    text_column: str | None = None,
    block_size: int | None = None,
    batch_size: int | None = None,
    gradient_accumulation_steps: int = 1,
    eval_batch_size: int = 16,
    max_grad_norm: float | None = None,
    weight_decay_params: str | None = None,
    seed: int = 42,
    output_dir: os.PathLike | None = None,
    callbacks: Sequence = (),
    **training_overrides,
) -> ProbeResult:
    """Branches a K-step linear lr decay from `checkpoint` and returns the validation loss at x before and after.

    Args:
        checkpoint (`os.PathLike`): a `checkpoint-N` folder of a `ScheduleFreeTrainer` run (x weights, the
            tokenizer, `optimizer.pt`, `scheduler.pt`, `schedule_free.json`, `trainer_state.json`). Only read.
        decay_steps (`int`, *optional*): K. Default: `decay_fraction` of the checkpoint's step (at least 1).
        decay_fraction (`float`, *optional*, defaults to 0.1): K as a fraction of the steps so far.
        control (`bool`, *optional*, defaults to `False`): also run K steps at constant lr (doubles the cost).
        train_dataset, eval_dataset (*optional*): packed blocks (`input_ids`, `labels`); default: rebuilt from
            the run's `run_args.json` (and `dataset`, `dataset_config`, `text_column`, `block_size` overrides).
        max_eval_blocks (`int`, *optional*): evaluate on the first N validation blocks only.
        batch_size (`int`, *optional*): sequences per device and step; default: the run's global batch size
            (`schedule_free.json`), so one device with `gradient_accumulation_steps=1` takes the run's steps.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1): to fit the run's batch in memory.
        eval_batch_size (`int`, *optional*, defaults to 16): blocks per evaluation forward pass.
        max_grad_norm (`float`, *optional*): default 0 (none) for Schedule-Free, 1.0 for AdamW (the paper's).
        weight_decay_params (`str`, *optional*): 'linear' or 'hf'; default: inferred from the optimizer state.
        seed (`int`, *optional*, defaults to 42): the run's seed (it sets the data order).
        output_dir (`os.PathLike`, *optional*): where the branches train; default: a temporary folder, removed.
        callbacks (`Sequence`, *optional*): extra Trainer callbacks for the branches.
        **training_overrides: further `ScheduleFreeConfig` fields (e.g. `use_cpu=True`, `bf16=True`).

    Returns:
        `ProbeResult`.

    Raises:
        CheckpointError: the folder is not a resumable `ScheduleFreeTrainer` checkpoint.
        PipelineError: the data cannot be built.
    """
    folder = Path(checkpoint)
    metadata, state = _check_checkpoint(folder)
    step = int(state.get("global_step") or metadata.get("global_step") or 0)
    if step <= 0:
        raise CheckpointError(f"{folder}: trainer_state.json gives no global step.")
    decay_steps = decay_steps or max(1, round(decay_fraction * step))
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}.")
    optimizer_name = metadata["optimizer_name"]
    spec = get_optimizer_spec(optimizer_name)
    hyper = metadata.get("hyperparameters", {})

    if train_dataset is None or eval_dataset is None:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        train, valid = load_probe_data(folder, tokenizer, dataset, dataset_config, text_column, block_size)
        train_dataset = train if train_dataset is None else train_dataset
        eval_dataset = valid if eval_dataset is None else eval_dataset
    if max_eval_blocks is not None and hasattr(eval_dataset, "select"):
        eval_dataset = eval_dataset.select(range(min(max_eval_blocks, len(eval_dataset))))
    elif max_eval_blocks is not None:
        eval_dataset = eval_dataset.take(max_eval_blocks)

    if weight_decay_params is None:
        saved = safe_torch_load(folder / "optimizer.pt", mmap=True)
        weight_decay_params = infer_weight_decay_params(
            AutoModelForCausalLM.from_pretrained(folder), saved["param_groups"]
        )
    betas = hyper.get("betas", (0.9, 0.999))
    group_decay = [d for d in hyper.get("group_weight_decay", []) if d is not None]
    config = dict(
        optimizer_name=optimizer_name,
        learning_rate=hyper.get("lr", 1e-3),
        adam_beta1=betas[0],
        adam_beta2=betas[1],
        adam_epsilon=hyper.get("eps", 1e-8),
        weight_decay=max(group_decay, default=hyper.get("weight_decay", 0.0)),
        warmup_steps=int(hyper.get("warmup_steps", 0) or 0),
        weight_decay_params=weight_decay_params,
        max_grad_norm=max_grad_norm if max_grad_norm is not None else (0.0 if spec.schedule_free else 1.0),
        per_device_train_batch_size=batch_size
        or metadata.get("train_batch_size")
        or state.get("train_batch_size")
        or 8,
        gradient_accumulation_steps=gradient_accumulation_steps,
        per_device_eval_batch_size=eval_batch_size,
        max_steps=step + decay_steps,
        logging_steps=max(1, decay_steps // 10),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
    )
    for key in ("decoupling_c", "r", "weight_lr_power", "ema_decay"):
        if key in hyper:
            config[key] = hyper[key]
    config.update(training_overrides)

    def branch(decay: bool, workdir: Path) -> tuple:
        args = ScheduleFreeConfig(output_dir=str(workdir / ("decay" if decay else "constant")), **config)
        model = AutoModelForCausalLM.from_pretrained(folder)
        trainer = DecayBranchTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=list(callbacks),
            decay_steps=decay_steps,
            decay=decay,
        )
        before = trainer.evaluate()["eval_loss"] if decay else None
        trainer.train(resume_from_checkpoint=str(folder))
        return before, trainer.evaluate()["eval_loss"], trainer.start_lr

    with tempfile.TemporaryDirectory(prefix="sf-hf-probe-") as tmp:
        workdir = Path(output_dir) if output_dir is not None else Path(tmp)
        before, after, start_lr = branch(True, workdir)
        constant = branch(False, workdir)[1] if control else None
    result = ProbeResult(
        checkpoint=str(folder),
        optimizer_name=optimizer_name,
        step=step,
        decay_steps=decay_steps,
        start_lr=start_lr,
        loss_before=before,
        loss_after=after,
        loss_control=constant,
    )
    logger.info("sf_hf probe: %s", result.describe().replace("\n", " |"))
    return result
