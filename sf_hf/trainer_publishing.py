"""What a `ScheduleFreeMixin` trainer publishes: `push_to_hub()`, the pushes during training (`push_to_hub=True`,
`hub_strategy`) and `create_model_card()`, as transformers does them and when it would, but only published files
(see `sf_hf.pipeline.trainer_hub` for why transformers' own uploads cannot be wrapped), with sf_hf's card, or with
the parent trainer's own card (TRL's) plus a Schedule-Free section.
"""

import inspect
import logging
import os
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils.hub import PushInProgress

logger = logging.getLogger(__name__)


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
    """Mixed into `ScheduleFreeMixin` (before the `transformers.Trainer` subclass): the Trainer's Hub methods,
    re-implemented around `sf_hf.pipeline.trainer_hub` (imported when first used: `sf_hf.pipeline` imports the
    trainer)."""

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """As `Trainer.push_to_hub` (the model saved at x into `output_dir`, then uploaded to the repo root), but what
        is uploaded is `output_dir`'s published files only, with sf_hf's model card (see `create_model_card`): never
        its checkpoints, hidden folders, `training_args.bin` or other files.

        Returns:
            the `CommitInfo`, or a `Future` of it when `blocking` is False; None on other processes than the first.
        """
        from .pipeline import trainer_hub

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:  # init_hf_repo takes `private` only in releases after 5.18
            self.init_hf_repo(token=token) if private is None else self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        tags = kwargs.pop("tags", None) or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        tags += [tag for tag in getattr(self.model, "model_tags", None) or [] if tag not in tags]
        self.create_model_card(tags=tags, **kwargs)
        self._finish_current_push()
        with open(os.path.join(self.args.output_dir, trainer_hub.CARD_NAME), "rb") as f:
            card = f.read()
        folder = trainer_hub.published_snapshot(self.args.output_dir, self.args.output_dir, card)
        return trainer_hub.upload_snapshot(
            folder,
            repo_id=self.hub_model_id,
            commit_message=commit_message,
            token=token,
            blocking=blocking,
            revision=revision if revision is not None else self.args.hub_revision,
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
        that card, called with the arguments it takes, plus a Schedule-Free section. Otherwise sf_hf's model card
        (`sf_hf.pipeline.card`, the one `sf-hf push` writes); `tasks`, `dataset_tags`, `dataset` and `dataset_args`
        are then not used: the card names the data from the run's `run_args.json`."""
        from .pipeline import trainer_hub

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
        card = trainer_hub.trainer_model_card(
            self.args.output_dir,
            repo_id=self._repo_id(model_name),
            run_dir=self.args.output_dir,
            revision=self.args.hub_revision,
            base_model=finetuned_from,
            tags=[tags] if isinstance(tags, str) else tags or (),
            language=language,
            license=license,
        )
        card.save(os.path.join(self.args.output_dir, trainer_hub.CARD_NAME))

    def _parent_card_owner(self) -> type | None:
        """The class after the Schedule-Free mixins that defines `create_model_card`, unless it is transformers'
        `Trainer` (whose generic card sf_hf's replaces): e.g. TRL's `_BaseTrainer`."""
        mro = type(self).__mro__
        for klass in mro[mro.index(HubPublishing) + 1 :]:
            if "create_model_card" in vars(klass):
                return None if klass is Trainer else klass
        return None

    def _card_model_name(self) -> str:
        """The name TRL's `_save_checkpoint` gives its card: the hub_model_id's last part, or output_dir's name."""
        if self.args.hub_model_id is None:
            return Path(self.args.output_dir).name
        return self.args.hub_model_id.split("/")[-1]

    def _parent_model_card(self, arguments: dict) -> None:
        """The parent's card, called with the arguments it takes (those set), and the Schedule-Free section after it."""
        from .metadata import optimizer_hyperparameters
        from .pipeline import trainer_hub
        from .registry import get_optimizer_spec

        parent_card = super().create_model_card
        accepted = inspect.signature(parent_card).parameters
        parent_card(**{name: value for name, value in arguments.items() if name in accepted and value is not None})
        path = os.path.join(self.args.output_dir, trainer_hub.CARD_NAME)
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

    def _checkpoint_card(self, checkpoint_folder: str) -> bytes:
        """The card of a checkpoint's push: sf_hf's for that folder, or the parent's (written into `output_dir` just
        before the checkpoint, see `ScheduleFreeMixin._save_checkpoint`)."""
        from .pipeline import trainer_hub

        parent_card = os.path.join(self.args.output_dir, trainer_hub.CARD_NAME)
        if self._parent_card_owner() is not None and os.path.isfile(parent_card):
            with open(parent_card, "rb") as f:
                return f.read()
        return trainer_hub.trainer_model_card(
            checkpoint_folder, repo_id=self.hub_model_id, run_dir=self.args.output_dir, revision=self.args.hub_revision
        ).content.encode()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The push of a saved checkpoint to the repo root (and, for `hub_strategy="checkpoint"` / `"all_checkpoints"`,
        of the whole checkpoint to `last-checkpoint/` / `checkpoint-N/`), in the background, as transformers does it
        and when it would: the root gets the checkpoint's published files, its `schedule_free.json` included, and
        sf_hf's card, from a snapshot taken now (nothing of `output_dir` is listed or written)."""
        from .pipeline import trainer_hub

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        uploads = []
        try:
            uploads.append(
                (
                    trainer_hub.published_snapshot(
                        checkpoint_folder, self.args.output_dir, self._checkpoint_card(checkpoint_folder)
                    ),
                    None,
                    message,
                )
            )
            if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
                path_in_repo = (
                    "last-checkpoint"
                    if self.args.hub_strategy == HubStrategy.CHECKPOINT
                    else os.path.basename(checkpoint_folder)
                )
                uploads.append(
                    (
                        trainer_hub.checkpoint_snapshot(checkpoint_folder, self.args.output_dir),
                        path_in_repo,
                        message + ", checkpoint",
                    )
                )
        except Exception as err:  # a broken run_args.json or record: skip this push, never stop training for it
            logger.error("sf_hf: not pushing %s: %s", checkpoint_folder, err)
            for folder, _, _ in uploads:
                trainer_hub.discard_snapshot(folder)
            return
        jobs = [
            trainer_hub.upload_snapshot(
                folder,
                repo_id=self.hub_model_id,
                path_in_repo=path_in_repo,
                commit_message=text,
                token=self.args.hub_token,
                revision=self.args.hub_revision,
                blocking=False,
            )
            for folder, path_in_repo, text in uploads
        ]
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)
