"""Behavioural pins on the `transformers.Trainer` methods whose results sf_hf changes (`_save_checkpoint`,
`_push_from_checkpoint`, `push_to_hub`): a plain `Trainer` and a `ScheduleFreeTrainer` run with the same settings, and
what each writes and pushes is compared. A failure means upstream changed what its method does: check that sf_hf's
wrapper (`sf_hf/trainer.py`, `sf_hf/trainer_hub.py`) still keeps its promise, then update the expected differences
here.

    pytest tests/test_trainer_upstream.py -q
"""

import dataclasses
import json
import os

import transformers
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from sf_hf import ScheduleFreeTrainer, optimizer_cls_and_kwargs

from .trainer_utils import TokenDataset, config, tiny_model

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
