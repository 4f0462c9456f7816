"""What sf_hf's trainers take from transformers and TRL. Behavioural pins: a plain `Trainer` and a `ScheduleFreeTrainer`
run with the same settings, and what each writes and pushes is compared (`_save_checkpoint` wraps the parent's, so its
checkpoints are transformers' plus sf_hf's files; `push_to_hub` / `_push_from_checkpoint` in `sf_hf/trainer_hub.py`
wrap the parent's, whose upload is transformers' own). A failure means upstream changed what its method does: port the
change (or say why sf_hf differs), then update the expected differences here. Then: a parent's own checkpoint work (a
user's `Trainer` subclass) lands in every checkpoint and comes back on resume; every override is checked against the
parent when the class is created, so that a method renamed or changed upstream raises, naming it.

    pytest tests/test_trainer_upstream.py -q
"""

import configparser
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from sf_hf import ScheduleFreeMixin, ScheduleFreeTrainer, optimizer_cls_and_kwargs, schedule_free_trainer
from sf_hf.checkpoints import checkpoint_folders, checkpoint_problems, read_manifest
from sf_hf.trainer_hub import HubPublishing
from sf_hf.trainer_upstream import (
    TESTED_VERSIONS,
    WRAPPED_PRIVATE_METHODS,
    UpstreamChangedError,
    UpstreamChangedWarning,
    overridden_methods,
)

from .test_trainer import StopAt
from .trainer_utils import TokenDataset, config, saved_weights, tiny_hub_model, tiny_model, weights

ROOT = Path(__file__).resolve().parents[1]

TRAIN_SET, EVAL_SET = TokenDataset(64, seed=1), TokenDataset(8, seed=2)
SF_ONLY_FILES = {"schedule_free.json", "checkpoint_manifest.json"}  # what sf_hf adds to every checkpoint
SETTINGS = dict(
    max_steps=6,
    save_strategy="steps",
    save_steps=2,
    eval_strategy="steps",
    eval_steps=2,
    save_total_limit=2,
    load_best_model_at_end=True,
    metric_for_best_model="score",
    include_num_input_tokens_seen=True,
)


def same_score(_):
    """A metric both runs agree on (their losses differ: sf_hf evaluates at x), so both keep the same best checkpoint:
    the first one (nothing improves on it)."""
    return {"score": 1.0}


def run_both(tmp_path, early_stopping=True, **settings):
    """The same run twice: `ScheduleFreeTrainer` and a plain `Trainer` given the same optimizer through sf_hf's hook."""
    ours_args = config(tmp_path / "ours", **settings)
    fields = {f.name: getattr(ours_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    plain_args = TrainingArguments(**{**fields, "output_dir": str(tmp_path / "plain")})
    cls, kwargs = optimizer_cls_and_kwargs(plain_args, optimizer_name="sf_adamw_refined")
    kwargs["decoupling_c"] = ours_args.decoupling_c
    common = dict(train_dataset=TRAIN_SET, eval_dataset=EVAL_SET, compute_metrics=same_score)
    callbacks = lambda: [EarlyStoppingCallback(early_stopping_patience=5)] if early_stopping else []  # noqa: E731
    ours = ScheduleFreeTrainer(model=tiny_model(), args=ours_args, callbacks=callbacks(), **common)
    plain = Trainer(
        model=tiny_model(), args=plain_args, optimizer_cls_and_kwargs=(cls, kwargs), callbacks=callbacks(), **common
    )
    for trainer in (ours, plain):
        trainer.train()
    return ours, plain


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def structure(value):
    """The shape of a JSON value (keys and types, not the numbers, which differ: sf_hf evaluates at x)."""
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [structure(v) for v in value]
    return type(value).__name__


def test_checkpoints_hold_what_transformers_writes_plus_sf_hfs_files(tmp_path):
    ours, plain = run_both(tmp_path, **SETTINGS)
    folders = sorted(p.name for p in (tmp_path / "ours").iterdir() if p.is_dir())
    assert folders == ["checkpoint-2", "checkpoint-6"], transformers.__version__  # the best one and the last one
    assert folders == sorted(p.name for p in (tmp_path / "plain").iterdir() if p.is_dir())
    for name in folders:
        mine, theirs = listing(tmp_path / "ours" / name), listing(tmp_path / "plain" / name)
        assert set(mine) == set(theirs) | SF_ONLY_FILES, name

        state = json.loads((tmp_path / "ours" / name / "trainer_state.json").read_text())
        upstream = json.loads((tmp_path / "plain" / name / "trainer_state.json").read_text())
        assert structure(state) == structure(upstream) | {"log_history": structure(state["log_history"])}
        assert [sorted(set(h) - {"averaging_weight"}) for h in state["log_history"]] == [
            sorted(h) for h in upstream["log_history"]
        ]  # sf_hf's logs add the averaging weight only
        different = {"log_history", "best_model_checkpoint", "total_flos"}  # losses at x; paths; see below
        assert {k: v for k, v in state.items() if k not in different} == {
            k: v for k, v in upstream.items() if k not in different
        }, name
        assert (
            os.path.relpath(state["best_model_checkpoint"], tmp_path / "ours")
            == os.path.relpath(upstream["best_model_checkpoint"], tmp_path / "plain")
            == "checkpoint-2"
        )
        assert state["total_flos"] == upstream["total_flos"] > 0
    assert ours.state.global_step == plain.state.global_step == 6


def test_pushes_carry_what_transformers_pushes_less_what_never_leaves(hub_server, tmp_path):
    ours, plain = run_both(
        tmp_path,
        early_stopping=False,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        push_to_hub=True,
        hub_strategy="checkpoint",
        hub_always_push=True,
        hub_model_id=None,
    )
    for trainer in (ours, plain):
        trainer.push_to_hub()
    mine, theirs = (set(hub_server.files(f"{hub_server.user}/{name}")) for name in ("ours", "plain"))
    root = {p for p in mine if "/" not in p}, {p for p in theirs if "/" not in p}
    assert root[1] - root[0] == set()  # transformers' own push (training_args.bin included: it holds no token)
    assert root[0] - root[1] == {"schedule_free.json"}  # which weights the root holds
    checkpoint = {p for p in mine if "/" in p}, {p for p in theirs if "/" in p}
    assert checkpoint[0] == checkpoint[1] | {f"last-checkpoint/{name}" for name in SF_ONLY_FILES}


# ---------------------------------------------------------------------------------------------- a parent's own work


class CountingTrainer(Trainer):
    """A user's `Trainer` subclass with checkpoint work of its own: it counts its saves, writes the count into every
    checkpoint after the parent's save (as TRL's GRPO writes its entropy state) and reads it back on resume."""

    saves = 0

    def _save_checkpoint(self, model, trial):
        self.saves += 1
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            (folder / "counter.json").write_text(json.dumps({"saves": self.saves, "step": self.state.global_step}))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.saves = json.loads((Path(checkpoint) / "counter.json").read_text())["saves"]


def counting_run(out, model, callbacks=(), resume=None, **settings):
    trainer = schedule_free_trainer(CountingTrainer)(
        model=model,
        train_dataset=TRAIN_SET,
        callbacks=list(callbacks),
        args=config(out, max_steps=6, save_strategy="steps", save_steps=2, save_total_limit=2, **settings),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize(
    "make_model, settings",
    [(tiny_model, {}), (lambda: tiny_hub_model("qwen2").to(torch.bfloat16), {"sf_fused": False})],
    ids=["llama-fp32", "qwen2-bf16-params"],
)
def test_a_parents_checkpoint_files_land_in_every_checkpoint_and_resume(tmp_path, make_model, settings):
    whole = counting_run(tmp_path / "whole", make_model(), **settings)
    counts = {}
    for folder in checkpoint_folders(tmp_path / "whole"):
        assert checkpoint_problems(folder, deep=True, manifest=True, training_state=True) == []
        assert "counter.json" in read_manifest(folder)["files"]  # written by the parent, recorded complete with it
        counts[folder.name] = json.loads((folder / "counter.json").read_text())
    assert counts == {"checkpoint-4": {"saves": 2, "step": 4}, "checkpoint-6": {"saves": 3, "step": 6}}

    counting_run(tmp_path / "split", make_model(), callbacks=[StopAt(4)], **settings)
    resumed = counting_run(tmp_path / "split", make_model(), resume=True, **settings)
    assert resumed.saves == 3  # 2 restored from checkpoint-4 by the parent's own load, then one more save
    assert json.loads((tmp_path / "split" / "checkpoint-6" / "counter.json").read_text()) == counts["checkpoint-6"]
    assert all(torch.equal(a, b) for a, b in zip(weights(whole.model).values(), weights(resumed.model).values()))
    for name in ("checkpoint-4", "checkpoint-6"):
        ours, theirs = saved_weights(tmp_path / "split" / name), saved_weights(tmp_path / "whole" / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


# ---------------------------------------------------------------------------------------------- upstream renames

MIXINS = (ScheduleFreeMixin, HubPublishing)


def test_the_private_overrides_are_all_named():
    """WRAPPED_PRIVATE_METHODS is every private method of the mixins that transformers' Trainer has (a rename upstream
    would drop one from the derived list; the named ones are checked still)."""
    private = {name for m in MIXINS for name in vars(m) if name.startswith("_") and not name.startswith("__")}
    assert {name for name in private if hasattr(Trainer, name)} == set(WRAPPED_PRIVATE_METHODS)
    assert set(WRAPPED_PRIVATE_METHODS) <= set(overridden_methods(MIXINS))
    assert {"train", "evaluate", "save_model", "push_to_hub", "log"} <= set(overridden_methods(MIXINS))


def built_on_a_fresh_trainer(tmp_path, message: str):
    """A Schedule-Free trainer class on a new `Trainer` subclass: its creation warns with `message`, building it raises
    with it (`import sf_hf` keeps working for the optimizers)."""
    with pytest.warns(UpstreamChangedWarning, match=message):
        cls = schedule_free_trainer(type("FreshTrainer", (Trainer,), {}))
    with pytest.raises(UpstreamChangedError, match=message) as caught:
        cls(model=tiny_model(), args=config(tmp_path), train_dataset=TRAIN_SET)
    return str(caught.value)


@pytest.mark.parametrize("name", WRAPPED_PRIVATE_METHODS)
def test_a_private_method_gone_upstream_fails_when_the_trainer_is_built(name, monkeypatch, tmp_path):
    monkeypatch.delattr(Trainer, name)
    message = built_on_a_fresh_trainer(tmp_path, rf"overrides FreshTrainer\.{name} .*no longer has")
    assert f"transformers {TESTED_VERSIONS['transformers']} and TRL {TESTED_VERSIONS['trl']}" in message
    assert f"installed: transformers {transformers.__version__}" in message


def test_a_private_method_gone_before_sf_hf_is_imported_fails_the_trainer():
    code = (
        "import transformers; del transformers.Trainer._load_from_checkpoint\nimport sf_hf\nsf_hf.ScheduleFreeTrainer()"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1
    expected = "ScheduleFreeTrainer overrides Trainer._load_from_checkpoint (transformers.trainer), which it no longer"
    assert f"UpstreamChangedWarning: {expected}" in done.stderr  # at `import sf_hf`
    assert f"UpstreamChangedError: {expected}" in done.stderr  # at ScheduleFreeTrainer()


CHANGED = {
    "a renamed parameter": (
        "_save_checkpoint",
        "def f(self, model, trial_params): ...",
        "'trial_params' at position 2",
    ),
    "a new required parameter": ("_save_checkpoint", "def f(self, model, trial, metrics): ...", "'metrics'"),
    "a parameter gone": ("_load_from_checkpoint", "def f(self, resume_from_checkpoint): ...", "'model'"),
    "new keyword arguments": ("_get_grad_norm", "def f(self, model, grad_norm=None, **kwargs): ...", "**kwargs"),
}


@pytest.mark.parametrize("change", list(CHANGED))
def test_a_changed_signature_upstream_fails_when_the_trainer_is_built(change, monkeypatch, tmp_path):
    name, source, named = CHANGED[change]
    namespace = {}
    exec(source, namespace)
    monkeypatch.setattr(Trainer, name, namespace["f"])
    assert named in built_on_a_fresh_trainer(tmp_path, rf"overrides FreshTrainer\.{name} .*parameters changed")


def test_trainer_and_every_trl_trainer_fit_and_the_tested_versions_are_setup_cfgs_floors():
    trl = pytest.importorskip("trl")
    for trainer_cls in (
        trl.SFTTrainer,
        trl.DPOTrainer,
        trl.RewardTrainer,
        trl.GRPOTrainer,
        trl.KTOTrainer,
        trl.RLOOTrainer,
    ):
        made = schedule_free_trainer(trainer_cls)
        assert issubclass(made, trainer_cls) and made._sf_upstream_error is None, made._sf_upstream_error
    assert ScheduleFreeTrainer._sf_upstream_error is None
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requirements = setup["options"]["install_requires"] + setup["options.extras_require"]["trl"]
    assert f"transformers>={TESTED_VERSIONS['transformers'].split()[0]}," in requirements
    assert f"trl>={TESTED_VERSIONS['trl']}," in requirements
