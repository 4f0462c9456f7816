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
import weakref
from datetime import timedelta

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.optimization import get_scheduler
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from . import checkpoints
from .configs import ScheduleFreeConfig, ScheduleFreeFields
from .distributed import resolve_optimizer, switch_weights
from .metadata import optimizer_hyperparameters, read_metadata, write_metadata
from .optim.averaging import averaging_window, no_averaging_message
from .registry import get_optimizer_spec, lr_schedule
from .trainer_hub import HubPublishing
from .weight_decay import linear_weight_names  # noqa: F401  (sf_hf.trainer.linear_weight_names, as before)

logger = logging.getLogger(__name__)


class ScheduleFreeMixin(HubPublishing):
    """The Schedule-Free behaviour for any `transformers.Trainer` subclass, mixed in first:
    `class ScheduleFreeSFTTrainer(ScheduleFreeMixin, SFTTrainer)` (see the module docstring).

    It builds the optimizer from `args.optimizer_name` (with a constant lr scheduler for the Schedule-Free ones),
    decides the weights' mode (y for training steps, x for everything else), writes crash-safe checkpoints with
    `schedule_free.json`, hands the gradient norm and the loss to the optimizer, logs the lr and averaging weight,
    checks checkpoints before resuming, and publishes x through the parent's own Hub methods (`HubPublishing`,
    `sf_hf.trainer_hub`). The parent's own work is kept: TRL's dataset preparation, `peft_config`, reference model,
    logging and its model card, written before each checkpoint as TRL does (`create_model_card` is the parent's card
    with a Schedule-Free section; with a plain `Trainer` parent it is sf_hf's card). Not kept: what a parent does in
    `_save_checkpoint` besides its card (sf_hf writes the checkpoint itself; TRL 1.16's GRPO adaptive-entropy state
    is not saved).

    Args:
        args: an instance of a `sf_hf.schedule_free_config(...)` class (e.g. of TRL's `SFTConfig`); a `TypeError`
            otherwise.
        **kwargs: as for the parent; `optimizers` and `optimizer_cls_and_kwargs` are not accepted (the optimizer is
            chosen by `args.optimizer_name`).
    """

    _sf_default_args = None
    """A function building the args when none are passed (`ScheduleFreeTrainer`: a default `ScheduleFreeConfig`)."""

    def __init_subclass__(cls, **kwargs):
        """Refuses `class C(SFTTrainer, ScheduleFreeMixin)`: there transformers' `Trainer` comes before the mixin in
        the MRO, so none of its methods would run (checkpoints at y, no crash safety) without a word."""
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

    def __init__(self, *args, **kwargs):
        try:
            bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        except TypeError:  # the parent's own call will say what is wrong
            bound = kwargs
        training_args = bound.get("args")
        if training_args is None and ("args" in kwargs or "args" not in bound) and self._sf_default_args is not None:
            training_args = kwargs["args"] = self._sf_default_args()
            logger.info(
                "sf_hf: no args passed, using a default %s(output_dir='tmp_trainer').", type(training_args).__name__
            )
        if not isinstance(training_args, ScheduleFreeFields):
            raise TypeError(
                f"{type(self).__name__} needs args with the Schedule-Free fields (optimizer_name, decoupling_c, ...), "
                f"got {type(training_args).__name__}: build them with sf_hf.schedule_free_config("
                f"{type(training_args).__name__ if training_args is not None else 'TrainingArguments'})(...), or "
                "ScheduleFreeConfig(...) for a plain Trainer."
            )
        if (
            bound.get("optimizer_cls_and_kwargs") is not None
            or (bound.get("optimizers") or (None, None))[0] is not None
        ):
            raise ValueError(f"{type(self).__name__} builds its optimizer from args.optimizer_name; do not pass one.")
        super().__init__(*args, **kwargs)
        self._num_training_steps: int | None = None
        self._sf_loaded_from: dict | None = None  # the best checkpoint's metadata while the model holds its weights
        self._sf_end_limit = None  # save_total_limit, while the end of training is sf_hf's (see _finalize_training)
        self.callback_handler.callbacks.insert(0, _EndOfTraining(self))

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
        if getattr(self, "_sf_logged_decay_for", None) is not model:  # the Trainer asks more than once
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
        optimizer; the baseline's own otherwise), with the user's `lr_scheduler_kwargs` on top."""
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
        return self.lr_scheduler

    def _warn_if_no_averaging(self, num_training_steps: int) -> None:
        """Warns once when the averaging weight stays 1 at every step of the run, so x = y (see
        `sf_hf.optim.averaging`): a short fine-tune with the paper's decoupling_c."""
        if getattr(self, "_sf_warned_no_averaging", False) or not self.is_world_process_zero():
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
        DeepSpeed or accelerate swapped in for ours, readies ZeRO-3, warns about accelerate's silent fallbacks.
        """
        if self.optimizer is None:
            return None
        if getattr(self, "_sf_resolved_for", None) is not self.optimizer:
            self._sf_base = resolve_optimizer(
                self.optimizer, self.get_optimizer_cls_and_kwargs(self.args)[0], self.accelerator
            )
            self._sf_resolved_for = self.optimizer
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
        if getattr(self, "_sf_in_training_step", False):
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
        total = getattr(self, "_sf_step_loss", None)
        self._sf_step_loss = part if total is None else total + part
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

    def _finalize_training(self, *args, **kwargs):
        """transformers' end of training, from x on (for the final log, the best-model reload and `on_train_end`).

        With `save_total_limit=1` and a best checkpoint, transformers deletes every `checkpoint-*` folder but the best
        one, `sf-hf convert`'s `checkpoint-N-x` included: sf_hf deletes the other `checkpoint-N` itself (through a
        hidden name, as its rotation does) and hands transformers no limit until `on_train_end`."""
        self.use_averaged_weights()
        best = self.state.best_model_checkpoint
        if self.args.save_total_limit == 1 and best is not None:
            if self.args.should_save and os.path.isdir(best):
                checkpoints.keep_only_checkpoints(
                    self._get_output_dir(kwargs.get("trial", args[0] if args else None)), keep=[best]
                )
            self._sf_end_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            return super()._finalize_training(*args, **kwargs)
        finally:
            self._restore_save_total_limit()

    def _restore_save_total_limit(self) -> None:
        if self._sf_end_limit is not None:
            self.args.save_total_limit, self._sf_end_limit = self._sf_end_limit, None

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
        if getattr(self, "_sf_norm_checked_for", None) is not optimizer:
            in_model = {id(p) for p in model.parameters()}
            self._sf_norm_covers = all(id(p) in in_model for group in optimizer.param_groups for p in group["params"])
            self._sf_norm_checked_for = optimizer
        return self._sf_norm_covers

    # ------------------------------------------------------------------ crash-safe checkpoints (sf_hf.checkpoints)

    def _save_checkpoint(self, model, trial) -> None:
        """The parent's checkpoint (model at x, optimizer, scheduler, scaler, RNG, trainer state), written into
        `.partial-checkpoint-N` and renamed to `checkpoint-N` once every process has written its part: a crash or a
        full disk never leaves a partial `checkpoint-N` (transformers writes straight into it). A parent with a model
        card of its own (TRL's trainers) gets it written first, as its `_save_checkpoint` does (pinned by
        tests/test_trl.py against a plain TRL run)."""
        if self._parent_card_owner() is not None:  # TRL writes its card before each checkpoint (into output_dir)
            self.create_model_card(model_name=self._card_model_name())
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        staging = str(checkpoints.staging_path(final))
        writer = self.args.should_save
        error = None
        try:
            if writer:
                checkpoints.prepare_staging(staging)
            self.accelerator.wait_for_everyone()
            self.save_model(staging, _internal_call=True)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(staging)
                self._save_scaler(staging)
                self._save_rng_state(staging)
            if (
                self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
                and self.state.best_global_step
            ):
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if best == final or os.path.isdir(best):
                    self.state.best_model_checkpoint = best
            if writer:
                self._save_trainer_state(staging)
        except Exception as err:  # safetensors reports a full disk as SafetensorError, not OSError
            error = err
        if self._all_processes_ok(error is None) and writer:
            try:
                checkpoints.commit_staged_checkpoint(staging, final, global_step=self.state.global_step)
            except Exception as err:
                error = err
        node_local = not writer and self.args.local_process_index == 0  # a node-local disk: this node's part
        if not self._all_processes_ok(error is None):
            cause = error or RuntimeError("another process failed to write its part (see its error)")
            failure = checkpoints.save_error(final, cause, run_dir)
            if writer or node_local:
                checkpoints.discard_staging(staging)
            raise failure from error
        if node_local:
            checkpoints.commit_node_part(
                staging, final, self.args.save_total_limit, keep=[final, self.state.best_model_checkpoint]
            )
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if writer:
            checkpoints.rotate_checkpoints(
                run_dir, self.args.save_total_limit, keep=[final, self.state.best_model_checkpoint]
            )

    def _save_trainer_state(self, folder: str) -> None:
        """`trainer_state.json` with the exportable callbacks' states, as the parent's `_save_checkpoint` writes it."""
        for cb in [c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]:
            name = cb.__class__.__name__
            if isinstance(self.state.stateful_callbacks[name], list):
                self.state.stateful_callbacks[name].append(cb.state())
            else:
                self.state.stateful_callbacks[name] = cb.state()
        self.state.save_to_json(os.path.join(folder, "trainer_state.json"))

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
        args (`ScheduleFreeConfig`, *optional*): training arguments with the Schedule-Free fields. Without them, a
            default `ScheduleFreeConfig(output_dir="tmp_trainer")`, as `Trainer` builds default `TrainingArguments`.
        **kwargs: as for `transformers.Trainer`; `optimizers` and `optimizer_cls_and_kwargs` are not accepted
            (the optimizer is chosen by `args.optimizer_name`).
    """

    _sf_default_args = staticmethod(functools.partial(ScheduleFreeConfig, output_dir="tmp_trainer"))


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


class _EndOfTraining(TrainerCallback):
    """The first of a `ScheduleFreeMixin`'s callbacks: at `on_train_end`, before any other callback (W&B's and
    DVCLive's `log_model` save the model there), the model holds x and `save_total_limit` is the user's again (see
    `_finalize_training`), whichever path fires the event (a pruned hyperparameter-search trial fires it too)."""

    def __init__(self, trainer: ScheduleFreeMixin):
        self._trainer = weakref.ref(trainer)

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            trainer.use_averaged_weights()
            trainer._restore_save_total_limit()
