"""What `ScheduleFreeTrainer`'s `push_to_hub` (the argument and the method) publishes, against the local fake Hub.

    pytest tests/test_trainer_hub.py -q

Each test lists what the repo holds after the push (every commit of `main`, for the pushes during training). The
pushes are transformers' own (`sf_hf.trainer_hub` wraps them): `output_dir` less `_*` and `checkpoint-*`, with
`training_args.bin`, whose pickle holds no token (tests/reliability/test_secrets.py).
"""

import fnmatch
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load
from transformers import Trainer, TrainingArguments

from sf_hf import ScheduleFreeTrainer, schedule_free_trainer
from sf_hf import checkpoints as sf_checkpoints
from sf_hf.pipeline import CheckpointPipelineCallback, PushError, RetryPolicy
from sf_hf.publishing.run_inventory import NEVER_PUBLISHED, PUBLISHED_PATTERNS
from sf_hf.trainer_hub import HubPublishing

from .test_trainer_end import best_is_first_run
from .trainer_utils import TokenDataset, config, max_abs_diff, saved_weights, tiny_model

TRAIN_SET = TokenDataset(64, seed=1)
PUBLISHED = PUBLISHED_PATTERNS + ("README.md", ".gitattributes", "training_args.bin")


def unpublished(paths, under=""):
    """The paths (top level of `under`) that are not published files: hidden folders, optimizer state, ..."""
    found = []
    for path in paths:
        if under and not path.startswith(under):
            continue
        name = path[len(under) :]
        if (
            "/" in name
            or not any(fnmatch.fnmatch(name, p) for p in PUBLISHED)
            or any(fnmatch.fnmatch(name, p) for p in NEVER_PUBLISHED)
        ):
            found.append(path)
    return found


def root_files(files: dict) -> dict:
    return {path: data for path, data in files.items() if "/" not in path}


def commits_of_main(hub_server, repo_id):
    """`(message, files)` of every commit of main, oldest first, the repo's initial commit left out."""
    return [(c.message, hub_server.files(repo_id, c.oid)) for c in reversed(hub_server.commits(repo_id))][1:]


def hub_trainer(tmp_path, repo_id, callbacks=(), trainer_cls=ScheduleFreeTrainer, **overrides):
    args = dict(max_steps=6, save_strategy="steps", save_steps=3, push_to_hub=True, hub_model_id=repo_id)
    args.update(overrides)
    return trainer_cls(
        model=tiny_model(), args=config(tmp_path, **args), train_dataset=TRAIN_SET, callbacks=list(callbacks)
    )


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint", "end", "always"])
def test_every_push_of_the_root_says_which_weights_it_holds(hub_server, tmp_path, strategy):
    always = strategy == "always"  # hub_always_push: every save pushed, none copied under a running upload
    trainer = hub_trainer(
        tmp_path, f"org/{strategy}", hub_strategy="every_save" if always else strategy, hub_always_push=always
    )
    trainer.train()
    trainer.push_to_hub()
    commits = commits_of_main(hub_server, f"org/{strategy}")
    steps = [json.loads(files["schedule_free.json"])["global_step"] for _, files in commits]
    if strategy == "end":
        assert steps == [6]
    elif always:  # the end's push is a commit only where it changes a file
        assert steps[:2] == [3, 6] and set(steps[2:]) <= {6}
    else:
        assert steps[0] == 3 and steps[-1] == 6  # a save's push is skipped while one runs
    for message, files in commits:
        root = root_files(files)
        step = json.loads(root["schedule_free.json"])["global_step"]
        weights = load(root["model.safetensors"])
        assert max_abs_diff(weights, saved_weights(tmp_path / f"checkpoint-{step}")) == 0.0, message
        assert unpublished(root) == [], message
    assert step == 6 and max_abs_diff(weights, saved_weights(tmp_path)) == 0.0  # the final model, saved by push_to_hub
    if strategy == "checkpoint":  # the resumable checkpoint the user asked for, optimizer state included
        files = commits[-1][1]
        step = json.loads(files["last-checkpoint/schedule_free.json"])["global_step"]
        weights = load(files["last-checkpoint/model.safetensors"])
        assert max_abs_diff(weights, saved_weights(tmp_path / f"checkpoint-{step}")) == 0.0
        assert "last-checkpoint/optimizer.pt" in files


class HeldJobs(CheckpointPipelineCallback):
    """The pipeline callback with its background jobs held until the trainer's own pushes are done: its workspace
    (`output_dir/_sf_hf-*`, optimizer state included) exists while the trainer pushes the root."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release, self.trainer = threading.Event(), None

    def _process(self, *args):
        assert self.release.wait(60)
        super()._process(*args)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._finish_current_push()
        self.release.set()
        super().on_train_end(args, state, control, **kwargs)


@pytest.mark.parametrize("trainer_cls", [ScheduleFreeTrainer, Trainer])
def test_nothing_but_published_files_leaves_with_the_pipeline_callback(hub_server, tmp_path, trainer_cls):
    pipeline = HeldJobs(repo_id="org/branches", retry=RetryPolicy(attempts=2, initial_delay=0.01))
    if trainer_cls is Trainer:
        trainer = Trainer(
            model=tiny_model(),
            train_dataset=TRAIN_SET,
            callbacks=[pipeline],
            args=TrainingArguments(
                str(tmp_path),
                max_steps=6,
                per_device_train_batch_size=4,
                save_strategy="steps",
                save_steps=3,
                push_to_hub=True,
                hub_model_id="org/root",
                hub_always_push=True,
                optim="schedule_free_adamw",
                lr_scheduler_type="constant",
                report_to="none",
                use_cpu=True,
                disable_tqdm=True,
            ),
        )
    else:
        trainer = hub_trainer(tmp_path, "org/root", callbacks=[pipeline], hub_always_push=True)
    pipeline.trainer = trainer
    trainer.train()
    assert pipeline.errors == []
    pushed = [path for _, files in commits_of_main(hub_server, "org/root") for path in files]
    assert pushed and not [p for p in pushed if "sf_hf-" in p or fnmatch.fnmatch(p.split("/")[-1], "optimizer*")]
    if trainer_cls is ScheduleFreeTrainer:
        assert unpublished(pushed) == []
    assert set(hub_server.branches("org/branches")) == {"main", "step-000000003", "step-000000006"}


def test_pushes_never_carry_pending_checkpoints_or_hidden_folders(hub_server, tmp_path, monkeypatch):
    """A push that starts while a checkpoint is being written (`hub_always_push` lets one start at any time), with
    debris of an interrupted earlier run in `output_dir` (sf_hf's hidden folders, of this release and earlier ones)."""
    debris = [tmp_path / ".partial-checkpoint-99", tmp_path / ".deleted-checkpoint-1", tmp_path / "_sf_hf-deleted-x"]
    debris += [tmp_path / "_partial-checkpoint-99", tmp_path / "_sf_hf-job"]
    for folder in debris:
        folder.mkdir(parents=True)
        (folder / "optimizer.pt").write_bytes(b"state")
    trainer = hub_trainer(tmp_path, "org/always", max_steps=4, save_steps=1, save_total_limit=1, hub_always_push=True)
    complete = sf_checkpoints.CheckpointSave.complete

    def push_while_pending(save):
        assert sf_checkpoints.read_manifest(save.folder)["pending"]
        if trainer.state.global_step > 1:
            trainer._push_from_checkpoint(str(tmp_path / f"checkpoint-{trainer.state.global_step - 1}"))
            trainer._finish_current_push()
        return complete(save)

    monkeypatch.setattr(sf_checkpoints.CheckpointSave, "complete", push_while_pending)
    trainer.train()
    trainer._finish_current_push()
    pushed = {path for _, files in commits_of_main(hub_server, "org/always") for path in files}
    assert "model.safetensors" in pushed and "schedule_free.json" in pushed
    assert not [p for p in pushed if p.startswith((".partial-", ".deleted-", "_"))]
    assert unpublished(pushed) == []


def test_the_hub_methods_push_no_checkpoint_without_its_completion_record(hub_server, tmp_path):
    """`HubPublishing._push_from_checkpoint` on its own (under the mixin's deferral): a `checkpoint-N` whose record is
    still pending (a save under way or cut short), or that has none, is not pushed; once complete, it is."""
    trainer = hub_trainer(tmp_path, "org/records", max_steps=3, save_steps=3)
    trainer.train()
    trainer._finish_current_push()
    pushed = len(commits_of_main(hub_server, "org/records"))

    def copy_of_checkpoint_3(step):  # with a record of its own, so that a push of it would be a new commit
        folder = shutil.copytree(tmp_path / "checkpoint-3", tmp_path / f"checkpoint-{step}")
        (folder / "eval_results.json").write_text(json.dumps({"checkpoint": folder.name, "eval_loss": step}))
        return folder

    pending, unrecorded = copy_of_checkpoint_3(4), copy_of_checkpoint_3(5)
    sf_checkpoints.write_pending_manifest(pending, 4)
    (unrecorded / sf_checkpoints.MANIFEST_NAME).unlink()
    for folder in (pending, unrecorded):
        HubPublishing._push_from_checkpoint(trainer, str(folder))
        trainer._finish_current_push()
    assert len(commits_of_main(hub_server, "org/records")) == pushed
    sf_checkpoints.write_manifest(pending, 4)  # the save completes
    HubPublishing._push_from_checkpoint(trainer, str(pending))
    trainer._finish_current_push()
    commits = commits_of_main(hub_server, "org/records")
    assert len(commits) == pushed + 1
    assert json.loads(commits[-1][1]["eval_results.json"])["checkpoint"] == "checkpoint-4"


def test_training_state_in_output_dir_stops_the_push(hub_server, tmp_path, caplog):
    """Training state outside a `_` folder (here a user's copy of a checkpoint; sf_hf's own leftovers of earlier
    releases are cleared at the first save) would go up with transformers' push: the saves' pushes are skipped,
    `push_to_hub` raises, training goes on."""
    debris = tmp_path / "copy-of-checkpoint-99"
    debris.mkdir(parents=True)
    (debris / "optimizer.pt").write_bytes(b"state")
    trainer = hub_trainer(tmp_path, "org/refused", max_steps=3, save_steps=3)
    trainer.train()
    assert trainer.state.global_step == 3 and commits_of_main(hub_server, "org/refused") == []
    assert "not pushing" in caplog.text and "copy-of-checkpoint-99/optimizer.pt" in caplog.text
    with pytest.raises(PushError, match=r"copy-of-checkpoint-99/optimizer\.pt"):
        trainer.push_to_hub()
    assert commits_of_main(hub_server, "org/refused") == []


def test_a_saves_push_leaves_no_record_of_other_weights(hub_server, tmp_path):
    """transformers' push copies the checkpoint's weights over `output_dir`'s: the records of the weights they
    replace (an `eval_results.json` of the model saved there before) go too, so the root's commit never pairs them."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_loss": 9.0, "checkpoint": "final"}))
    trainer = hub_trainer(tmp_path, "org/records", max_steps=3, save_steps=3)
    trainer.train()
    trainer._finish_current_push()
    [(_, files)] = commits_of_main(hub_server, "org/records")
    assert json.loads(files["schedule_free.json"])["global_step"] == 3 and "eval_results.json" not in files
    assert not (tmp_path / "eval_results.json").exists()


def test_a_failed_push_during_training_is_logged_and_training_goes_on(hub_server, tmp_path, caplog):
    rule = hub_server.fail_next(1, 500, method="POST", path_contains="/commit/")
    trainer = hub_trainer(tmp_path, "org/flaky", max_steps=3, save_steps=3)
    trainer.train()
    trainer._finish_current_push()
    for _ in range(50):  # the future's callbacks run just after its waiters are woken
        if "a push to the Hub failed" in caplog.text:
            break
        time.sleep(0.1)
    assert rule.hits == 1 and "a push to the Hub failed" in caplog.text and "Injected fault" in caplog.text
    assert trainer.state.global_step == 3 and commits_of_main(hub_server, "org/flaky") == []
    trainer.push_to_hub()
    [(_, files)] = commits_of_main(hub_server, "org/flaky")
    assert json.loads(files["schedule_free.json"])["global_step"] == 3
    assert max_abs_diff(load(files["model.safetensors"]), saved_weights(tmp_path / "checkpoint-3")) == 0.0


class RecordingPushes(Trainer):
    """A user's `Trainer` subclass with its own push methods: under the mixin they still run, around transformers'."""

    def push_to_hub(self, *args, **kwargs):
        self.recorded.append("push_to_hub")
        return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder):
        self.recorded.append(Path(checkpoint_folder).name)
        return super()._push_from_checkpoint(checkpoint_folder)


def test_a_parents_push_methods_run_under_the_mixin(hub_server, tmp_path):
    trainer = hub_trainer(tmp_path, "org/parent", trainer_cls=schedule_free_trainer(RecordingPushes))
    trainer.recorded = []
    trainer.train()
    trainer.push_to_hub()
    assert trainer.recorded == ["checkpoint-3", "checkpoint-6", "push_to_hub"]
    commits = commits_of_main(hub_server, "org/parent")
    steps = [json.loads(files["schedule_free.json"])["global_step"] for _, files in commits]
    assert steps[0] == 3 and steps[-1] == 6 and steps == sorted(steps)  # transformers' uploads, in their order


def test_push_to_hub_writes_sf_hfs_model_card(hub_server, tmp_path):
    trainer = hub_trainer(tmp_path, "org/card", hub_strategy="end")
    trainer.train()
    trainer.push_to_hub()
    card = ModelCard(hub_server.files("org/card")["README.md"].decode())
    assert {"sf_hf", "schedule-free", "sf_adamw_refined"} <= set(card.data.tags)
    assert "holds **x**, the averaged weights" in card.text and "2405.15682" in card.text
    assert "published by `ScheduleFreeTrainer.push_to_hub`" in card.text
    for row in (
        "| b1 (interpolation weight of y) | 0.9 |",
        "| C (decoupling constant",
        "| warmup steps | 3 |",
        "| peak learning rate | 0.01 |",
    ):
        assert row in card.text
    assert "- Steps: 6;" in card.text and 'from_pretrained("org/card", revision="main")' in card.text
    assert (tmp_path / "README.md").read_text() == card.content  # create_model_card wrote the same card locally


def test_a_push_that_cannot_be_prepared_is_skipped_and_training_goes_on(hub_server, tmp_path, caplog):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "run_args.json").write_text('{"data": ')  # the card reads it
    trainer = hub_trainer(tmp_path, "org/broken", max_steps=3, save_steps=3)
    trainer.train()
    assert trainer.state.global_step == 3 and commits_of_main(hub_server, "org/broken") == []
    assert "not pushing" in caplog.text and (tmp_path / "checkpoint-3").is_dir()


def test_after_a_best_model_reload_the_root_names_the_best_step(hub_server, tmp_path):
    trainer = best_is_first_run(tmp_path, push_to_hub=True, hub_model_id="org/best", hub_strategy="end")
    trainer.push_to_hub()
    root = hub_server.files("org/best")
    assert json.loads(root["schedule_free.json"])["global_step"] == 2
    assert max_abs_diff(load(root["model.safetensors"]), saved_weights(tmp_path / "checkpoint-2")) == 0.0
    assert max_abs_diff(load(root["model.safetensors"]), saved_weights(tmp_path / "checkpoint-6")) > 1e-3
    assert "- Steps: 2;" in root["README.md"].decode()
