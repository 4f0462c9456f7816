"""`ScheduleFreeMixin` (any `transformers.Trainer` subclass) and `ScheduleFreeTrainer`: train at y; evaluate, save and
publish x.

    from sf_hf import ScheduleFreeConfig, ScheduleFreeTrainer
    args = ScheduleFreeConfig(output_dir="out", optimizer_name="sf_adamw_refined", learning_rate=2e-3, max_steps=1000)
    trainer = ScheduleFreeTrainer(model=model, args=args, train_dataset=train, eval_dataset=valid)
    trainer.train()          # returns with the model at x

    from trl import SFTConfig, SFTTrainer
    from sf_hf import ScheduleFreeMixin, schedule_free_config
    class ScheduleFreeSFTTrainer(ScheduleFreeMixin, SFTTrainer): ...       # or sf_hf.schedule_free_trainer(SFTTrainer)
    args = schedule_free_config(SFTConfig)(output_dir="out", decoupling_c=50)
    ScheduleFreeSFTTrainer(model="Qwen/Qwen2.5-0.5B", train_dataset=data)   # TRL's quick start: its default config,
                                                                           # made Schedule-Free (see ScheduleFreeMixin)

`ScheduleFreeMixin` in this file is the one place where the weights' mode is decided:
`use_training_weights()` before every training step, `use_averaged_weights()` before every evaluation,
prediction, checkpoint, `save_model`, `push_to_hub`, best-model reload and when `train()` returns. The
switch back to y happens lazily at the next training step, so an evaluation followed by a checkpoint is
one switch, and a run resumed from a checkpoint (which holds x) rebuilds exactly the y of an uninterrupted
run. Only the optimizer's parameters switch: a frozen reference model (TRL's DPO and GRPO `ref_model`)
never does.

The lr schedule and warmup are not decided here: `create_scheduler` asks `sf_hf.registry.lr_schedule` (the one
place: constant for Schedule-Free with the warmup inside the optimizer, the baseline's scheduler otherwise), and the
defaults are `sf_hf.registry`'s too.

On-policy trainers (TRL's GRPO, RLOO, online DPO) generate their rollouts inside `training_step`
(`_prepare_inputs`), after the switch: from y, the policy that takes the gradient steps, as the
algorithms assume. Rollouts buffered for later steps (`steps_per_generation`, `num_iterations`) come
from the y of the step that generated them, as without Schedule-Free. Generations during evaluation,
and every checkpoint and push, use x.
"""

import functools
import inspect
import logging
import os
import typing
import warnings
from datetime import timedelta

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.optimization import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import checkpoints
from .configs import ScheduleFreeFields, as_schedule_free_config, schedule_free_config
from .distributed import resolve_optimizer, switch_weights
from .metadata import optimizer_hyperparameters, read_metadata, write_metadata
from .optim.averaging import averaging_window, no_averaging_message
from .registry import get_optimizer_spec, lr_schedule
from .trainer_hub import HubPublishing
from .trainer_upstream import UpstreamChangedError, UpstreamChangedWarning, check_overrides
from .weight_decay import linear_weight_names  # noqa: F401  (sf_hf.trainer.linear_weight_names, as before)

logger = logging.getLogger(__name__)


class ScheduleFreeMixin(HubPublishing):
    """The Schedule-Free behaviour for any `transformers.Trainer` subclass, mixed in first:
    `class ScheduleFreeSFTTrainer(ScheduleFreeMixin, SFTTrainer)` (see the module docstring).

    It builds the optimizer from `args.optimizer_name` (with a constant lr scheduler for the Schedule-Free ones),
    decides the weights' mode (y for training steps, x for everything else), writes crash-safe checkpoints with
    `schedule_free.json`, hands the gradient norm and the loss to the optimizer, logs the lr and averaging weight,
    checks checkpoints before resuming, and publishes x through the parent's own Hub methods (`HubPublishing`,
    `sf_hf.trainer_hub`). The parent's own work is kept, every override calls it: TRL's dataset preparation,
    `peft_config`, reference model, logging, and whatever its `_save_checkpoint` writes (TRL's model card before each
    checkpoint, GRPO's adaptive-entropy state, a user's subclass's files), made crash-safe around it
    (`sf_hf.checkpoints.saving`). `create_model_card` is the parent's card with a Schedule-Free section; with a plain
    `Trainer` parent it is sf_hf's card. The table of
    overrides is in docs/architecture.md; each one is checked against the parent when the class is created.

    The parent's argument handling is kept, and the config it ends up with is made Schedule-Free
    (`sf_hf.configs.as_schedule_free_config`: every value kept, plus `optimizer_name` and `decoupling_c` at sf_hf's
    defaults), so TRL's quick start works: without `args` the parent builds its own default (TRL's
    `SFTConfig("<model>-SFT")`, `Trainer`'s `TrainingArguments("tmp_trainer")`), which is converted once the parent's
    `__init__` returns. Given `args` are converted before the parent sees them (a new object, so the user's keeps its
    class and fields); args that are not of the config class the parent's `__init__` declares (a plain
    `TrainingArguments` for TRL's trainers) are first converted into it as TRL's `SFTTrainer` does (`to_dict()` plus
    `hub_token`; TRL 1.16's DPO, reward and GRPO trainers would fail on them). Both are safe because nothing the
    parents build in `__init__` (transformers 5.18 to 5.25, TRL 1.16) depends on the optimizer: it and its scheduler
    are built in `train()` from `self.args.optimizer_name`.

    Args:
        args (`TrainingArguments`, *optional*): a `sf_hf.schedule_free_config(...)` instance (e.g. of TRL's
            `SFTConfig`), or any `TrainingArguments`, or none (see above). An `optim` other than the class's default,
            or a decaying `lr_scheduler_type` set by hand, is a `ValueError`.
        **kwargs: as for the parent; `optimizers` and `optimizer_cls_and_kwargs` are not accepted (the optimizer is
            chosen by `args.optimizer_name`).
    """

    def __init_subclass__(cls, **kwargs):
        """Refuses `class C(SFTTrainer, ScheduleFreeMixin)`: there transformers' `Trainer` comes before the mixin in
        the MRO, so none of its methods would run (checkpoints at y, no crash safety) without a word. Then checks
        that every method the mixins override still exists on the parent, with parameters that fit
        (`sf_hf.trainer_upstream.check_overrides`): a rename upstream warns here (`UpstreamChangedWarning`, so that
        `import sf_hf` still works for its optimizers) and raises `UpstreamChangedError` when the trainer is built."""
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        before = [
            k
            for k in mro[1 : mro.index(ScheduleFreeMixin)]
            if issubclass(k, Trainer) and not issubclass(k, ScheduleFreeMixin)
        ]
        if before:
            raise TypeError(
                f"{cls.__name__}: put ScheduleFreeMixin before {before[0].__name__} in the bases "
                f"(class {cls.__name__}(ScheduleFreeMixin, {before[0].__name__})), or use "
                f"sf_hf.schedule_free_trainer({before[0].__name__})."
            )
        cls._sf_upstream_error = None
        if issubclass(cls, Trainer):
            try:
                check_overrides(cls, tuple(k for k in ScheduleFreeMixin.__mro__ if k is not object))
            except UpstreamChangedError as err:  # `import sf_hf` still works (the optimizers need no Trainer)
                cls._sf_upstream_error = str(err)
                warnings.warn(cls._sf_upstream_error, UpstreamChangedWarning, stacklevel=2)

    _sf_upstream_error: str | None = None
    """Why the parent does not fit the mixins' overrides (see `__init_subclass__`): raised when the trainer is built."""

    def __init__(self, *args, **kwargs):
        if self._sf_upstream_error is not None:
            raise UpstreamChangedError(self._sf_upstream_error)
        try:
            bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs)
        except TypeError:  # the parent's own call will say what is wrong
            bound = None
        if bound is not None:
            given = bound.arguments
            if (
                given.get("optimizer_cls_and_kwargs") is not None
                or (given.get("optimizers") or (None, None))[0] is not None
            ):
                raise ValueError(
                    f"{type(self).__name__} builds its optimizer from args.optimizer_name; do not pass one."
                )
            if given.get("args") is not None:
                given["args"] = _schedule_free_args(given["args"], _parent_config_class(type(self)))
                args, kwargs = bound.args, bound.kwargs
        self._num_training_steps: int | None = None
        self._sf_loaded_from: dict | None = None  # the best checkpoint's metadata while the model holds its weights
        self._sf_in_training_step = False  # compute_loss hands the loss to the optimizer only inside training_step
        self._sf_step_loss: torch.Tensor | None = None  # this step's loss so far, over its micro-batches
        self._sf_resolved_for = self._sf_base = None  # the prepared optimizer, and the one inside it that steps
        self._sf_norm_checked_for, self._sf_norm_covers = None, False  # the optimizer whose params the norm covers
        self._sf_logged_decay_for = None  # the model whose decayed weights were logged
        self._sf_warned_no_averaging = False
        self._sf_pushes: list | None = None  # the parent's checkpoint pushes, while its _save_checkpoint runs
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ScheduleFreeFields):  # no args passed: the parent's own default config
            self.args = _schedule_free_args(self.args, type(self.args))

    # ------------------------------------------------------------------ optimizer and scheduler

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        # The optimizer is built here without the step count; a warmup ratio needs it.
        self._num_training_steps = max_steps
        return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)

    def get_optimizer_cls_and_kwargs(self, args, model=None):
        spec = get_optimizer_spec(args.optimizer_name)
        return spec.build(args, self._num_training_steps)

    def get_decay_parameter_names(self, model: nn.Module) -> list:
        if self.args.weight_decay_params != "linear":
            return super().get_decay_parameter_names(model)
        names = linear_weight_names(model)
        if self._sf_logged_decay_for is not model:  # the Trainer asks more than once
            self._sf_logged_decay_for = model
            trained = {n for n, p in model.named_parameters() if p.requires_grad}
            decayed = [n for n in names if n in trained]
            if decayed:
                logger.info(
                    "sf_hf: weight_decay_params='linear': weight decay on %d linear weights (%s)",
                    len(decayed),
                    ", ".join(decayed[:4]) + (", ..." if len(decayed) > 4 else ""),
                )
            else:
                logger.warning(
                    "sf_hf: weight_decay_params='linear' found no trained nn.Linear or Conv1D weight in %s: "
                    "nothing decays.",
                    type(model).__name__,
                )
        return names

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The scheduler `sf_hf.registry.lr_schedule` decides (constant for Schedule-Free, whose warmup is in the
        optimizer; the baseline's own otherwise), with the user's `lr_scheduler_kwargs` on top, set before the
        parent's `create_scheduler` runs: it keeps a scheduler already set (transformers': and recreates it at the next
        `train()`, as one it created), and does whatever else a parent does there."""
        if self.lr_scheduler is None:
            schedule = lr_schedule(self.args, num_training_steps)
            self.lr_scheduler = get_scheduler(
                schedule.name,
                optimizer=optimizer or self.optimizer,
                num_warmup_steps=schedule.scheduler_warmup_steps,
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs={**schedule.kwargs, **self._user_kwargs()},
            )
            self._created_lr_scheduler = True
            self._log_schedule(schedule, num_training_steps)
            self._warn_if_no_averaging(num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def _warn_if_no_averaging(self, num_training_steps: int) -> None:
        """Warns once when the averaging weight stays 1 at every step of the run, so x = y (see
        `sf_hf.optim.averaging`): a short fine-tune with the paper's decoupling_c."""
        if self._sf_warned_no_averaging or not self.is_world_process_zero():
            return
        message = no_averaging_message(self._base_optimizer(), num_training_steps)
        if message:
            self._sf_warned_no_averaging = True
            logger.warning(message)

    def _user_kwargs(self) -> dict:
        kwargs = self.args.lr_scheduler_kwargs
        return kwargs if isinstance(kwargs, dict) else {}

    def _log_schedule(self, schedule, num_training_steps: int) -> None:
        spec = get_optimizer_spec(self.args.optimizer_name)
        group = self._base_optimizer().param_groups[0]
        window = ""
        if spec.schedule_free:  # sf_hf.optim.averaging: (1 - b) / c, ~T(1 - b1) vanilla, ~T/C refined
            window = f", averaging window ~{averaging_window(group, num_training_steps):.1f} steps at the end"
        where = "in the optimizer" if spec.schedule_free else f"{schedule.name} scheduler"
        logger.info(
            "sf_hf: %s for %d steps, warmup %d steps (%s)%s",
            spec.name,
            num_training_steps,
            schedule.optimizer_warmup_steps or schedule.scheduler_warmup_steps,
            where,
            window,
        )

    def _base_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that steps, inside accelerate's and DeepSpeed's wrappers (None before there is one).

        Resolved once per prepared optimizer (see `sf_hf.distributed.resolve_optimizer`): refuses an optimizer that
        DeepSpeed or accelerate swapped in for ours, readies ZeRO-3, warns about accelerate's silent fallbacks, and
        hooks `_y_before_step` to an optimizer with modes.
        """
        if self.optimizer is None:
            return None
        if self._sf_resolved_for is not self.optimizer:
            base = resolve_optimizer(self.optimizer, self.get_optimizer_cls_and_kwargs(self.args)[0], self.accelerator)
            if hasattr(base, "train_mode") and base is not self._sf_base:
                base.register_step_pre_hook(self._y_before_step)
            self._sf_base, self._sf_resolved_for = base, self.optimizer
        return self._sf_base

    # ------------------------------------------------------------------ the one place modes are decided

    def use_training_weights(self) -> None:
        """Puts y into the weights the model computes with, on every rank (no-op for optimizers without modes)."""
        if self._base_optimizer() is not None:
            switch_weights(self.optimizer, train=True, model=self.model_wrapped)

    def use_averaged_weights(self) -> None:
        """Puts x (the EMA for adamw_ema) into the weights the model computes with, on every rank (see
        `sf_hf.distributed`: DeepSpeed's partitions and FSDP2's shards included; no-op without modes)."""
        if self._base_optimizer() is not None:
            switch_weights(self.optimizer, train=False, model=self.model_wrapped)

    def _y_before_step(self, optimizer, args, kwargs) -> None:
        """y back in the weights before the optimizer steps (a step hook; a no-op while they hold y): a save or an
        evaluation between the last backward and the step put x there (a callback's `on_pre_optimizer_step`, such as
        transformers' JIT checkpoint on SIGTERM), and Schedule-Free refuses to step at x."""
        if not optimizer.train_mode:
            self.use_training_weights()

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.use_training_weights()
        self._sf_loaded_from = None
        self._sf_in_training_step = True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._sf_in_training_step = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self._sf_in_training_step:
            self._hand_over_loss(result[0] if return_outputs else result, num_items_in_batch)
        return result

    def _hand_over_loss(self, loss: torch.Tensor, num_items_in_batch) -> None:
        """For optimizers that need the loss (ScheduleFree+'s `set_loss`): the step's loss on this rank, i.e. the sum
        of its micro-batches' losses as `training_step` passes them to backward (divided by the accumulation steps
        unless already normalized over them: the same rule as `training_step`'s), handed over before the last
        backward, inside which DeepSpeed steps. The optimizer averages it over the ranks; it is the logged loss.

        The scaling rule is copied: transformers (5.18 to 5.24) decides it inline in `training_step` (from
        `loss_is_scaled_for_ga`, `model_accepts_loss_kwargs`, `compute_loss_func`), with no method to call."""
        optimizer = self._base_optimizer()
        if not hasattr(optimizer, "set_loss"):
            return
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        part = loss.detach().mean() if self.args.n_gpu > 1 else loss.detach()
        if not scaled:
            part = part / self.current_gradient_accumulation_steps
        self._sf_step_loss = part if self._sf_step_loss is None else self._sf_step_loss + part
        if self.accelerator.sync_gradients:
            optimizer.set_loss(self._sf_step_loss)
            self._sf_step_loss = None

    def evaluate(self, *args, **kwargs):
        self.use_averaged_weights()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self.use_averaged_weights()
        return super().predict(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        self.use_averaged_weights()
        output_dir = output_dir or self.args.output_dir
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            self._write_metadata(output_dir)

    def _load_best_model(self) -> None:
        self.use_averaged_weights()
        with checkpoints.loads_saved_names(self.model), checkpoints.keeps_adapter_dtypes(self.model):
            super()._load_best_model()  # see _load_from_checkpoint
        self._sf_loaded_from = read_metadata(self.state.best_model_checkpoint)

    def _finalize_training(self, trial, num_train_samples, start_time):
        """transformers' end of training, from x on (for the final log, the best-model reload and `on_train_end`).

        With `save_total_limit=1` and a best checkpoint, transformers deletes every `checkpoint-*` folder but the best
        one (`sf-hf convert` names its folders `x-checkpoint-N`, out of that pattern): the complete checkpoints are
        held meanwhile (`sf_hf.checkpoints.hold_checkpoints`), so that one whose deletion a crash interrupts is
        refused by every reader, and comes back at the next resume."""
        self.use_averaged_weights()
        held = {}
        if self.args.should_save and self.args.save_total_limit:
            held = checkpoints.hold_checkpoints(self._get_output_dir(trial))
        try:
            return super()._finalize_training(trial, num_train_samples, start_time)
        finally:
            checkpoints.drop_holds(held)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._bound_collective_timeout()
        self._sf_loaded_from = None
        resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        try:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        except Exception as err:
            if self.args.world_size > 1 and checkpoints.is_lost_peer(err):
                # No switch to x here: under ZeRO it is a collective, which would wait another ddp_timeout for the
                # lost peer and then replace this message with its own timeout.
                raise checkpoints.lost_peer_error(
                    err, self.state.global_step, self.args.ddp_timeout, self.args.output_dir
                ) from err
            try:
                self.use_averaged_weights()
            except Exception as switch_err:  # the training error is the one to report
                logger.warning("sf_hf: could not switch the weights to x after the error: %s", switch_err)
            raise
        self.use_averaged_weights()
        return result

    def _write_metadata(self, output_dir: str) -> None:
        """`schedule_free.json` for the weights the model holds: the current step's, or after a best-model reload the
        best checkpoint's step and tokens seen."""
        optimizer = self._base_optimizer()
        loaded = self._sf_loaded_from or {}
        os.makedirs(output_dir, exist_ok=True)
        write_metadata(
            output_dir,
            weights=get_optimizer_spec(self.args.optimizer_name).saved_weights,
            optimizer_name=self.args.optimizer_name,
            global_step=loaded.get("global_step", self.state.global_step),
            hyperparameters=optimizer_hyperparameters(optimizer) if optimizer is not None else {},
            extra=dict(
                train_batch_size=self.args.per_device_train_batch_size
                * self.args.gradient_accumulation_steps
                * self.args.world_size,
                num_training_steps=self._num_training_steps,
                tokens_seen=loaded.get("tokens_seen", self.state.num_input_tokens_seen or None),
            ),
        )

    # ------------------------------------------------------------------ the non-finite check, from the grad norm

    def _get_grad_norm(self, model, grad_norm=None):
        """The parent's gradient norm (every step: the one clipping measured, or one taken for logging), also handed
        to the optimizer as its non-finite check, so its step does not read every gradient once more.

        Not under DeepSpeed, whose engine has already stepped by now (its norm belongs to that past step), and not
        if the optimizer steps parameters outside `model` (the norm would not cover them)."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        optimizer = self._base_optimizer()
        if (
            isinstance(grad_norm, torch.Tensor)
            and hasattr(optimizer, "set_grad_norm")
            and not self.is_deepspeed_enabled
            and self._norm_covers_optimizer(model, optimizer)
        ):
            optimizer.set_grad_norm(grad_norm)
        return grad_norm

    def _norm_covers_optimizer(self, model, optimizer) -> bool:
        if self._sf_norm_checked_for is not optimizer:
            in_model = {id(p) for p in model.parameters()}
            self._sf_norm_covers = all(id(p) in in_model for group in optimizer.param_groups for p in group["params"])
            self._sf_norm_checked_for = optimizer
        return self._sf_norm_covers

    # ------------------------------------------------------------------ crash-safe checkpoints (sf_hf.checkpoints)

    def _save_checkpoint(self, model, trial) -> None:
        """The parent's checkpoint (the model at x: see `save_model`), made crash-safe around it (see
        `sf_hf.checkpoints.saving`): the saving process marks the new `checkpoint-N` pending and holds the complete
        checkpoints before the parent writes (and, with `save_total_limit`, rotates); once every process has written
        its part, the manifest is written last, then the parent's push of the checkpoint and its deletions happen.

        Whatever the parent writes into the checkpoint is in it (TRL's card before it, GRPO's adaptive-entropy state,
        a user's subclass's files). A failure on any process raises `CheckpointSaveError` on every process, with the
        earlier checkpoints as they were."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        writer = self.args.should_save
        save, error = None, None
        try:
            if writer:
                save = checkpoints.CheckpointSave.begin(
                    folder, self.state.global_step, hold=bool(self.args.save_total_limit)
                )
        except Exception as err:
            error = err
        pushes = []
        if self._all_processes_ok(error is None):
            self._sf_pushes = pushes
            try:
                super()._save_checkpoint(model, trial)
                if save is not None:
                    save.restore_held()
            except Exception as err:  # safetensors reports a full disk as SafetensorError, not OSError
                error = err
            finally:
                self._sf_pushes = None
        if self._all_processes_ok(error is None) and save is not None:
            try:
                save.complete()
            except Exception as err:
                error = err
        if not self._all_processes_ok(error is None):
            if save is not None:
                save.abandon()  # best effort: the partial folder removed, what the parent deleted back
            failure = checkpoints.save_error(
                folder, error or RuntimeError("another process failed to write its part (see its error)"), run_dir
            )
            raise failure from error
        if not writer and self.args.local_process_index == 0:  # a node-local disk: this node's part
            checkpoints.finish_node_part(
                folder, self.args.save_total_limit, keep=[folder, self.state.best_model_checkpoint]
            )
        for pushed in pushes:
            self._push_from_checkpoint(pushed)
        if save is not None:
            save.release()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The parent's push of a checkpoint (`push_to_hub=True`), which it starts inside its `_save_checkpoint`: there
        it waits until the checkpoint is recorded complete (a failed save pushes nothing)."""
        if self._sf_pushes is not None:
            self._sf_pushes.append(checkpoint_folder)
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _bound_collective_timeout(self) -> None:
        """Applies `ddp_timeout` to the process group: transformers 5.23 passes it on GPUs only, so on CPU (gloo) a
        stopped or unreachable peer would block every other process for torch's default 30 minutes."""
        dist = torch.distributed
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            try:
                dist.distributed_c10d._set_pg_timeout(timedelta(seconds=self.args.ddp_timeout))
            except Exception as err:  # a private torch helper: keep training with the default timeout
                logger.warning(
                    "sf_hf: could not set the process group timeout to ddp_timeout=%ss: %s", self.args.ddp_timeout, err
                )

    def _all_processes_ok(self, ok: bool) -> bool:
        """True when `ok` holds on every process (one all-reduce; so no process waits forever for a failed one)."""
        if self.args.world_size <= 1 or not torch.distributed.is_initialized():
            return ok
        flag = torch.tensor([1 if ok else 0], device=self.args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def _checkpoint_to_resume(self, resume_from_checkpoint):
        """`True` -> the newest *complete* checkpoint (transformers would take the newest `checkpoint-N` folder,
        complete or not); a path -> that folder, checked first. Raises `CheckpointCorruptError` naming the file."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if self.args.should_save:
            checkpoints.recover_leftovers(self.args.output_dir)
        self.accelerator.wait_for_everyone()
        if not self.args.should_save and self.args.local_process_index == 0:  # none left unless on a node-local disk
            checkpoints.recover_leftovers(self.args.output_dir)
        resume_from_checkpoint = checkpoints.checkpoint_to_resume(self.args.output_dir, resume_from_checkpoint)
        # The model weights are judged only where transformers loads them from model.safetensors (DeepSpeed and FSDP
        # load their own files into partitioned or sharded parameters); the optimizer-state check judges the rest.
        loads_safetensors = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        checkpoints.verify_checkpoint(
            resume_from_checkpoint, deep=False, training_state=True, model=self.model if loads_safetensors else None
        )
        logger.info("sf_hf: resuming from %s", resume_from_checkpoint)
        return str(resume_from_checkpoint)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        """A resume from a checkpoint of the last step trains nothing (transformers would take one more step, so a
        re-run of a finished command, or one killed after its last checkpoint, would change the final weights)."""
        epochs, steps = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None and self.state.global_step >= max_steps:
            logger.info(
                "sf_hf: %s is at step %d of %d: nothing left to train",
                resume_from_checkpoint,
                self.state.global_step,
                max_steps,
            )
            return num_train_epochs, 0
        return epochs, steps

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        """The parent's load, with the weights that transformers 5 saves under other names (GPT-NeoX's `embed_out`)
        put back where they belong (see `sf_hf.checkpoints.saved_names`), and PEFT adapters kept in their dtype
        (see `sf_hf.checkpoints.adapters`)."""
        model = model if model is not None else self.model
        with checkpoints.loads_saved_names(model), checkpoints.keeps_adapter_dtypes(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _issue_warnings_after_load(self, load_result) -> None:
        """The parent's warnings about missing keys, without the tied copies (`checkpoints.tied_copies`: a tied
        `lm_head.weight`): saved once, under the name of the weight it shares, it is loaded with it; transformers 5
        only leaves out the keys of `_keys_to_ignore_on_save`, which its models no longer use for tied weights."""
        tied = checkpoints.tied_copies(self.model)
        missing = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        """Checks the training state before transformers loads it: a missing `optimizer.pt` (transformers would go on
        with a fresh optimizer, which for Schedule-Free silently restarts the average), another optimizer's state,
        other parameters, truncated files and pickles carrying code are refused with the file named. DeepSpeed
        loads its files with `weights_only=False`: they are scanned for code first."""
        if checkpoint is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                checkpoints.scan_pickles(checkpoint, allowed_prefixes=checkpoints.DEEPSPEED_GLOBALS)
            else:
                problems = checkpoints.optimizer_state_problems(
                    checkpoint, self._base_optimizer(), world_size=self.args.world_size
                )
                if problems:
                    raise checkpoints.CheckpointCorruptError(
                        f"Can't find a valid checkpoint at {checkpoint}; sf_hf found:\n  - " + "\n  - ".join(problems)
                    )
        super()._load_optimizer_and_scheduler(checkpoint)

    # ------------------------------------------------------------------ logging

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Adds the optimizer's scheduled lr (ScheduleFree+: its Polyak step, and F + I) and averaging weight c to
        training logs (train loss is at y)."""
        optimizer = self._base_optimizer()
        if "loss" in logs and optimizer is not None and "scheduled_lr" in optimizer.param_groups[0]:
            group = optimizer.param_groups[0]
            logs["learning_rate"] = group["scheduled_lr"]
            logs["averaging_weight"] = group["averaging_weight"]
            if "polyak_numerator" in group:  # ScheduleFree+: learning_rate is the Polyak step, this its F + I
                logs["polyak_numerator"] = group["polyak_numerator"]
        super().log(logs, start_time)


class ScheduleFreeTrainer(ScheduleFreeMixin, Trainer):
    """`Trainer` for the optimizers of `sf_hf.registry` (see the module docstring): `ScheduleFreeMixin` on
    `transformers.Trainer`, with sf_hf's model card.

    Args:
        args (`ScheduleFreeConfig`, *optional*): training arguments with the Schedule-Free fields. A plain
            `TrainingArguments` is made a `ScheduleFreeConfig` with the same values; without args, `Trainer`'s default
            `TrainingArguments(output_dir="tmp_trainer")` is (see `ScheduleFreeMixin`).
        **kwargs: as for `transformers.Trainer`; `optimizers` and `optimizer_cls_and_kwargs` are not accepted
            (the optimizer is chosen by `args.optimizer_name`).
    """


@functools.cache
def schedule_free_trainer(trainer_cls: type) -> type:
    """`class ScheduleFree<Name>(ScheduleFreeMixin, trainer_cls)`, made once per class: e.g.
    `schedule_free_trainer(trl.SFTTrainer)(model=..., args=schedule_free_config(SFTConfig)(...), ...)`."""
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, Trainer)):
        raise TypeError(f"schedule_free_trainer needs a transformers.Trainer subclass, got {trainer_cls!r}.")
    if issubclass(trainer_cls, ScheduleFreeMixin):
        return trainer_cls
    if trainer_cls is Trainer:
        return ScheduleFreeTrainer
    name = f"ScheduleFree{trainer_cls.__name__}"
    namespace = {"__module__": __name__, "__qualname__": name, "__doc__": f"{trainer_cls.__name__} + ScheduleFreeMixin"}
    return type(name, (ScheduleFreeMixin, trainer_cls), namespace)


@functools.cache
def _parent_config_class(trainer_cls: type) -> type:
    """The config class that `trainer_cls`'s parent declares for `args` in its `__init__` (TRL's `DPOConfig` for
    `DPOTrainer`, `SFTConfig` for `SFTTrainer`'s `SFTConfig | TrainingArguments | None`); `TrainingArguments` where
    none is declared."""
    for klass in trainer_cls.__mro__:
        if issubclass(klass, ScheduleFreeMixin) or "__init__" not in vars(klass):
            continue
        try:
            annotation = inspect.signature(klass.__init__, eval_str=True).parameters["args"].annotation
        except (KeyError, NameError, TypeError, ValueError):  # no `args`, or an annotation that does not resolve
            continue
        declared = [
            c
            for c in typing.get_args(annotation) or (annotation,)
            if isinstance(c, type) and issubclass(c, TrainingArguments)
        ]
        if declared:
            return max(declared, key=lambda c: len(c.__mro__))  # the most derived: SFTConfig before TrainingArguments
    return TrainingArguments


def _schedule_free_args(args, config_cls: type) -> ScheduleFreeFields:
    """`args` made Schedule-Free (`sf_hf.configs.as_schedule_free_config`), converted into `config_cls` first when
    they are not of it, as TRL's `SFTTrainer` converts a plain `TrainingArguments` into its `SFTConfig` (a
    `ScheduleFreeConfig` into `schedule_free_config(SFTConfig)`)."""
    if isinstance(args, TrainingArguments) and not isinstance(args, config_cls):
        values = {**args.to_dict(), "hub_token": args.hub_token}  # to_dict hides the token
        args = (schedule_free_config(config_cls) if isinstance(args, ScheduleFreeFields) else config_cls)(**values)
    made = as_schedule_free_config(args)
    if made is not args:
        logger.info(
            "sf_hf: %s made Schedule-Free as %s (optimizer_name=%r, decoupling_c=%g)",
            type(args).__name__,
            type(made).__name__,
            made.optimizer_name,
            made.decoupling_c,
        )
    return made
