"""The Hub methods of a `ScheduleFreeMixin` trainer: `push_to_hub()`, the pushes during training (`push_to_hub=True`,
`hub_strategy`) and `create_model_card()`. `push_to_hub` and `_push_from_checkpoint` wrap the parent's (transformers',
TRL's, a user's subclass'), so what is uploaded, when, in which order and with which retries is the parent's own;
sf_hf decides only what `output_dir` holds when the parent uploads it. `create_model_card` wraps a parent's own card
(TRL's) and replaces only transformers' generic one, with sf_hf's.

    args = ScheduleFreeConfig("out", push_to_hub=True, hub_model_id="org/name", hub_strategy="every_save")
    trainer = ScheduleFreeTrainer(model=model, args=args, train_dataset=train)
    trainer.train()          # every save: out/ at that checkpoint's x, with its schedule_free.json and sf_hf's card
    trainer.push_to_hub()    # the final model at x

transformers uploads `output_dir` less its top-level `_*` and `checkpoint-*` (`run_inventory.UPLOAD_IGNORED`); for
a save, it first copies the checkpoint's weights, configs and tokenizer there and writes `training_args.bin`. So:

- the weights are x: `save_model` saves x with `schedule_free.json` beside it, and a save's push copies the
  checkpoint's `schedule_free.json` with the weights transformers copies, so every commit of the root says which
  weights it holds;
- the card is sf_hf's (`sf_hf.publishing.card`, the one `sf-hf push` writes) for a plain `Trainer` parent, else the
  parent's own (TRL's) with a Schedule-Free section;
- `training_args.bin` goes up as transformers uploads it and holds no token: sf_hf's config classes pickle without
  their `*_token` fields (`ScheduleFreeFields.__getstate__`);
- sf_hf's working folders in `output_dir` start with `_` (checkpoints being written or removed, the pipeline
  callback's workspace), so they never go up; training state anywhere else in `output_dir` (an `optimizer.pt`,
  RNG states: `run_inventory.NEVER_PUBLISHED`) stops the push instead of leaving the machine;
- a checkpoint is pushed once complete: called before its completion record exists (the parent's `_save_checkpoint`
  calls `_push_from_checkpoint` as soon as it has written the files), the push waits for the call that
  `ScheduleFreeMixin._save_checkpoint` makes once the checkpoint is committed.

Uploads are transformers': one shared client (`transformers.utils.hub.hf_api`) whose single background worker commits
the pushes in the order they started; huggingface_hub retries the file uploads, the commit itself is one attempt (a
failed push during training is logged here, transformers drops the error, and the next save pushes again).
"""

import inspect
import logging
import os
import shutil

from transformers import Trainer
from transformers.trainer_utils import HubStrategy

from .checkpoints import read_manifest
from .metadata import METADATA_NAME, optimizer_hyperparameters
from .publishing.card import CARD_NAME, trainer_model_card
from .publishing.errors import PushError
from .publishing.records import EVAL_RESULTS_NAME
from .publishing.run_inventory import training_state_in
from .registry import get_optimizer_spec

logger = logging.getLogger(__name__)
WEIGHT_RECORDS = (METADATA_NAME, EVAL_RESULTS_NAME)
"""The records that describe a folder's weights: which they are, and their evaluation (`sf-hf evaluate`)."""
SCHEDULE_FREE_SECTION = """

## Schedule-Free

Trained with sf_hf's `{optimizer_name}`: {description}. {weights_text} `schedule_free.json` beside the
weights says which weights they are, with the optimizer's hyperparameters ({hyperparameters}).
"""
WEIGHTS_TEXT = {
    "x": "The weights are **x**, the Schedule-Free average (gradients were taken at y): use them as they are.",
    "ema": "The weights are the EMA of the iterates (`adamw_ema`).",
    "plain": "The weights are the optimizer's only iterate (an AdamW baseline).",
}


class HubPublishing:
    """Mixed into `ScheduleFreeMixin` (before the `transformers.Trainer` subclass): the Trainer's Hub methods, each
    wrapping the parent's (see the module docstring)."""

    def push_to_hub(self, *args, **kwargs):
        """The parent's `push_to_hub` (`Trainer.push_to_hub`: the model saved at x into `output_dir` with
        `schedule_free.json`, the card written by `create_model_card`, then `output_dir` uploaded to the repo root,
        less `_*` and `checkpoint-*`), after checking that `output_dir` holds no training state.

        Args:
            *args, **kwargs: as for the parent's `push_to_hub` (`commit_message`, `blocking`, `token`, `revision`,
                `private` in transformers 5.25, and `create_model_card`'s arguments).

        Returns:
            the parent's: the `CommitInfo`, or a `Future` of it when `blocking` is False; None on other processes.

        Raises:
            PushError: `output_dir` holds training state outside sf_hf's `_` working folders (named in the message).
        """
        self._refuse_training_state()
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The parent's push of a saved checkpoint (`Trainer._push_from_checkpoint`: the checkpoint's model files
        copied into `output_dir`, which is uploaded to the repo root in the background, and for
        `hub_strategy="checkpoint"` / `"all_checkpoints"` the whole checkpoint to `last-checkpoint/` /
        `checkpoint-N/`), for a complete checkpoint only, with the checkpoint's `schedule_free.json` and card in
        `output_dir` when the parent's push starts; with `hub_always_push`, once the running push is done (transformers
        would copy the files under it). A push that cannot be prepared (training state in `output_dir`,
        a broken `run_args.json`) is skipped with an error in the log: training never stops for it."""
        if (read_manifest(checkpoint_folder) or {"pending": True}).get("pending"):  # no record, or a save under way
            logger.debug("sf_hf: %s is pushed once it is complete", checkpoint_folder)
            return
        if self.args.hub_always_push:  # else transformers copies this checkpoint's files under the running upload
            self._finish_current_push()
        if self._push_starts():
            try:
                self._refuse_training_state()
                self._prepare_root_push(checkpoint_folder)
            except Exception as err:  # never stop training for a push
                logger.error("sf_hf: not pushing %s: %s", checkpoint_folder, err)
                return
        running = set(map(id, self.push_in_progress.jobs)) if self.push_in_progress is not None else set()
        super()._push_from_checkpoint(checkpoint_folder)
        for job in self.push_in_progress.jobs if self.push_in_progress is not None else []:
            if id(job) not in running:
                job.add_done_callback(_log_failed_push)

    def _push_starts(self) -> bool:
        """Whether the parent's `_push_from_checkpoint` pushes now: on the main process, unless `hub_strategy` is
        "end" or a push is still running (transformers 5.18 to 5.25 skip the checkpoint then, unless
        `hub_always_push`, for which sf_hf first waits for the running push). sf_hf writes into `output_dir` only
        then, never under a running upload."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return False
        return self.push_in_progress is None or self.push_in_progress.is_done()

    def _prepare_root_push(self, checkpoint_folder: str) -> None:
        """Puts into `output_dir`, beside the model files the parent copies there, the checkpoint's records of its
        weights (`WEIGHT_RECORDS`: an `output_dir` record the checkpoint lacks is removed, it described the weights
        being replaced) and, for a plain `Trainer` parent, sf_hf's card for the checkpoint. A parent with its own
        card (TRL's) wrote it before the checkpoint, as its `_save_checkpoint` does."""
        output_dir = self.args.output_dir
        if self._parent_card_owner() is None:
            card = trainer_model_card(
                checkpoint_folder, repo_id=self.hub_model_id, run_dir=output_dir, revision=self.args.hub_revision
            )
            card.save(os.path.join(output_dir, CARD_NAME))
        for name in WEIGHT_RECORDS:
            source, target = os.path.join(checkpoint_folder, name), os.path.join(output_dir, name)
            if os.path.isfile(source):
                shutil.copy(source, target)
            elif os.path.isfile(target):
                os.remove(target)

    def _refuse_training_state(self) -> None:
        found = training_state_in(self.args.output_dir)
        if found:
            raise PushError(
                f"{self.args.output_dir} holds training state that a push would upload: {', '.join(found)}. Move it "
                "out of output_dir (or into a folder whose name starts with '_'), then push again."
            )

    def create_model_card(
        self,
        language=None,
        license=None,
        tags=None,
        model_name=None,
        finetuned_from=None,
        tasks=None,
        dataset_tags=None,
        dataset=None,
        dataset_args=None,
        **kwargs,
    ) -> None:
        """Writes the model card for the model saved in `output_dir` into its `README.md`.

        With a parent that writes its own card (TRL's trainers: `create_model_card(model_name, dataset_name, tags)`),
        that card, called with the arguments it takes, plus a Schedule-Free section. Otherwise (a plain `Trainer`,
        whose generic card this replaces) sf_hf's model card (`sf_hf.publishing.card`, the one `sf-hf push` writes);
        `tasks`, `dataset_tags`, `dataset` and `dataset_args` are then not used: the card names the data from the
        run's `run_args.json`."""
        if self._parent_card_owner() is not None:
            self._parent_model_card(
                dict(
                    kwargs,
                    language=language,
                    license=license,
                    tags=tags,
                    model_name=model_name,
                    finetuned_from=finetuned_from,
                    tasks=tasks,
                    dataset_tags=dataset_tags,
                    dataset=dataset,
                    dataset_args=dataset_args,
                )
            )
            return
        if not self.is_world_process_zero():
            return
        card = trainer_model_card(
            self.args.output_dir,
            repo_id=self._repo_id(model_name),
            run_dir=self.args.output_dir,
            revision=self.args.hub_revision,
            base_model=finetuned_from,
            tags=[tags] if isinstance(tags, str) else tags or (),
            language=language,
            license=license,
        )
        card.save(os.path.join(self.args.output_dir, CARD_NAME))

    def _parent_card_owner(self) -> type | None:
        """The class after the Schedule-Free mixins that defines `create_model_card`, unless it is transformers'
        `Trainer` (whose generic card sf_hf's replaces): e.g. TRL's `_BaseTrainer`."""
        mro = type(self).__mro__
        for klass in mro[mro.index(HubPublishing) + 1 :]:
            if "create_model_card" in vars(klass):
                return None if klass is Trainer else klass
        return None

    def _parent_model_card(self, arguments: dict) -> None:
        """The parent's card, called with the arguments it takes (those set), and the Schedule-Free section after it."""
        parent_card = super().create_model_card
        accepted = inspect.signature(parent_card).parameters
        parent_card(**{name: value for name, value in arguments.items() if name in accepted and value is not None})
        path = os.path.join(self.args.output_dir, CARD_NAME)
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        optimizer = self._base_optimizer()
        hyperparameters = optimizer_hyperparameters(optimizer) if optimizer is not None else {}
        shown = (
            ", ".join(
                f"{key}={hyperparameters[key]}"
                for key in ("lr", "betas", "decoupling_c", "warmup_steps")
                if key in hyperparameters
            )
            or "see the file"
        )
        spec = get_optimizer_spec(self.args.optimizer_name)
        section = SCHEDULE_FREE_SECTION.format(
            optimizer_name=spec.name,
            description=spec.description,
            hyperparameters=shown,
            weights_text=WEIGHTS_TEXT[spec.saved_weights],
        )
        with open(path, "a") as f:
            f.write(section)

    def _repo_id(self, model_name: str | None = None) -> str:
        return (
            getattr(self, "hub_model_id", None)
            or self.args.hub_model_id
            or model_name
            or os.path.basename(os.path.abspath(self.args.output_dir))
        )


def _log_failed_push(job) -> None:
    """transformers keeps a failed push's error in its future and never reads it: say it."""
    if not job.cancelled() and job.exception() is not None:
        logger.error("sf_hf: a push to the Hub failed (the next save pushes again): %s", job.exception())
