"""Damaged, mismatched and malicious checkpoints: resume, `sf-hf evaluate` and `sf-hf convert` name the file and
the problem, refuse pickles that carry code (never running them), and still evaluate a run's other checkpoints.

    pytest tests/reliability/test_bad_checkpoints.py -q
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sf_hf import ScheduleFreeTrainer
from sf_hf.checkpoints import (
    CheckpointCorruptError,
    UnsafeCheckpointError,
    checkpoint_problems,
    last_complete_checkpoint,
    safe_torch_load,
    scan_pickles,
    verify_checkpoint,
    write_manifest,
)
from sf_hf.cli import main as sf_hf_cli

from ..trainer_utils import TokenDataset, config, reshard, tiny_model, weights

TRAIN = TokenDataset(64, seed=1)
PAYLOAD_MARK = "sf_hf_payload_ran"


def make_trainer(out, model=None, **overrides):
    args = dict(max_steps=4, save_strategy="steps", save_steps=2, sf_fused=False)
    args.update(overrides)
    return ScheduleFreeTrainer(model=model or tiny_model(), args=config(out, **args), train_dataset=TRAIN)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """checkpoint-2 and checkpoint-4 of a 4-step run, and its final weights."""
    out = tmp_path_factory.mktemp("run") / "run"
    trainer = make_trainer(out)
    trainer.train()
    return out, weights(trainer.model)


def copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Payload:
    """A pickle that runs a shell command when it is unpickled (what an attacker puts in a checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_payload(path: Path, legacy: bool = False) -> Path:
    """Replaces a pickle with one carrying a payload and rewrites the manifest to match (attackers can, too)."""
    marker = path.parent.parent / PAYLOAD_MARK
    torch.save(
        {"state": {0: {"z": torch.zeros(2)}}, "param_groups": [], "evil": Payload(marker)},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    write_manifest(path.parent, global_step=4)
    return marker


DAMAGES = {
    "model.safetensors cut short": (
        lambda c: truncate(c / "model.safetensors"),
        "checkpoint-4/model.safetensors: truncated",
    ),
    "optimizer.pt cut short": (lambda c: truncate(c / "optimizer.pt"), "checkpoint-4/optimizer.pt: truncated"),
    "optimizer.pt missing": (
        lambda c: (c / "optimizer.pt").unlink(),
        "checkpoint-4/optimizer.pt: missing (listed in checkpoint_manifest.json)",
    ),
    "trainer_state.json garbled": (
        lambda c: ((c / "trainer_state.json").write_text('{"global_step": 4,'), write_manifest(c, 4)),
        "checkpoint-4/trainer_state.json: truncated or corrupt JSON",
    ),
    "model.safetensors missing": (
        lambda c: (c / "model.safetensors").unlink(),
        "checkpoint-4/model.safetensors: missing (listed in checkpoint_manifest.json)",
    ),
    "re-sharded weights, a shard missing": (
        lambda c: (c / reshard(c)[-1]).unlink(),
        "checkpoint-4/model-00017-of-00017.safetensors: missing (listed in model.safetensors.index.json)",
    ),
    "manifest garbled": (
        lambda c: (c / "checkpoint_manifest.json").write_text("{not json"),
        "checkpoint-4/checkpoint_manifest.json: unreadable manifest",
    ),
    "manifest not an object": (
        lambda c: (c / "checkpoint_manifest.json").write_text("[]"),
        "checkpoint-4/checkpoint_manifest.json: unreadable manifest (ValueError: a list, not an object)",
    ),
    # checkpoints without a manifest (a plain transformers.Trainer's) are judged by their files alone
    "no manifest, optimizer.pt cut short": (
        lambda c: (c / "checkpoint_manifest.json").unlink() or truncate(c / "optimizer.pt"),
        "checkpoint-4/optimizer.pt: cannot be read, the file is truncated or corrupt",
    ),
    "no manifest, optimizer.pt missing": (
        lambda c: (c / "checkpoint_manifest.json").unlink() or (c / "optimizer.pt").unlink(),
        "checkpoint-4/optimizer.pt: missing: this checkpoint cannot resume training",
    ),
    "no manifest, model.safetensors cut short": (
        lambda c: (c / "checkpoint_manifest.json").unlink() or truncate(c / "model.safetensors"),
        "checkpoint-4/model.safetensors: truncated",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_names_the_damaged_file_and_what_is_wrong(run, tmp_path, damage):
    out = copy(run[0], tmp_path)
    damage_fn, expected = DAMAGES[damage]
    damage_fn(out / "checkpoint-4")
    before = digest(out)
    with pytest.raises(CheckpointCorruptError) as caught:
        make_trainer(out).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert expected in str(caught.value)
    assert digest(out) == before  # nothing was changed, nothing trained
    if "model.safetensors" in damage or "manifest" in damage and "no manifest" not in damage:
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")


def test_resume_true_skips_a_damaged_newest_checkpoint_and_loses_nothing(run, tmp_path, caplog):
    out = copy(run[0], tmp_path)
    truncate(out / "checkpoint-4" / "model.safetensors")
    trainer = make_trainer(out)
    trainer.train(resume_from_checkpoint=True)  # transformers would pick checkpoint-4 by its name
    assert "skipping" in caplog.text and "checkpoint-4/model.safetensors: truncated" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(run[1].values(), weights(trainer.model).values()))
    assert checkpoint_problems(out / "checkpoint-4", deep=True, manifest=True) == []  # re-written whole


def test_resume_refuses_another_optimizers_state(tmp_path):
    for written_by, resumed_with, expected in (
        ("adamw_cosine", "sf_adamw_refined", "holds the state of another optimizer (an optimizer without x/y modes"),
        ("sf_adamw_refined", "adamw_cosine", "holds the state of another optimizer (a Schedule-Free optimizer"),
        ("sf_adamw", "sf_adamw_refined", "written by vanilla Schedule-Free AdamW, but this run trains with Refined"),
    ):
        out = tmp_path / written_by
        make_trainer(out, optimizer_name=written_by, max_steps=2).train()
        with pytest.raises(CheckpointCorruptError, match="checkpoint-2/optimizer.pt: ") as caught:
            make_trainer(out, optimizer_name=resumed_with).train(resume_from_checkpoint=str(out / "checkpoint-2"))
        assert expected in str(caught.value), str(caught.value)


def test_resume_refuses_a_checkpoint_of_another_model_configuration(run, tmp_path):
    out = copy(run[0], tmp_path)
    wider = tiny_model()
    wider = type(wider)(wider.config.__class__(**{**wider.config.to_dict(), "hidden_size": 48}))
    with pytest.raises(CheckpointCorruptError) as caught:
        make_trainer(out, model=wider).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    message = str(caught.value)
    assert (
        "checkpoint-4/model.safetensors: tensor 'lm_head.weight' has shape [64, 32], the model has [64, 48]" in message
    )
    assert "checkpoint-4/config.json: config mismatch: hidden_size=32 (model: 48)" in message


@pytest.mark.parametrize(
    "name,legacy", [("optimizer.pt", False), ("optimizer.pt", True), ("scheduler.pt", False), ("rng_state.pth", False)]
)
def test_resume_refuses_a_pickle_with_a_payload_and_never_runs_it(run, tmp_path, name, legacy):
    out = copy(run[0], tmp_path)
    target = out / "checkpoint-4" / name
    marker = plant_payload(target, legacy=legacy)
    with pytest.raises(
        UnsafeCheckpointError, match=f"checkpoint-4/{name}: refused. Loading it would import or call `posix.system`"
    ) as caught:
        make_trainer(out).train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert "do not load this file with weights_only=False" in str(caught.value)
    for check in (lambda: safe_torch_load(target), lambda: verify_checkpoint(out / "checkpoint-4", deep=True)):
        with pytest.raises(UnsafeCheckpointError):
            check()
    assert "refused" in " ".join(checkpoint_problems(out / "checkpoint-4", deep=True))
    assert not marker.exists()


def test_deepspeed_files_are_scanned_for_code_before_deepspeed_loads_them(tmp_path):
    folder = tmp_path / "checkpoint-4" / "global_step4"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}, "ds_version": "0.19.8"}, folder / "mp_rank_00_model_states.pt")
    scan_pickles(tmp_path / "checkpoint-4")  # tensors and plain containers: fine
    marker = tmp_path / PAYLOAD_MARK
    torch.save({"optimizer_state_dict": Payload(marker)}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UnsafeCheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: refused"):
        scan_pickles(tmp_path / "checkpoint-4")
    assert not marker.exists()


def test_fsdp_dcp_checkpoints_are_scanned_for_code_before_torch_loads_them(tmp_path):
    """torch.distributed.checkpoint unpickles `.metadata` with pickle.load and non-tensor entries with
    weights_only=False: both are checked first."""
    import pickle

    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.randn(4, 4)}, "optim": {"param_groups": [{"lr": 0.1, "params": [0]}]}}
    dcp.save(state, checkpoint_id=str(tmp_path / "ok" / "pytorch_model_fsdp_0"), no_dist=True)
    scan_pickles(tmp_path / "ok")
    marker = tmp_path / PAYLOAD_MARK
    dcp.save({**state, "extra": Payload(marker)}, checkpoint_id=str(tmp_path / "entry" / "optimizer_0"), no_dist=True)
    with pytest.raises(UnsafeCheckpointError, match=r"__0_0.distcp \(entry 'extra'\): refused"):
        scan_pickles(tmp_path / "entry")
    metadata_file = tmp_path / "ok" / "pytorch_model_fsdp_0" / ".metadata"
    metadata = pickle.loads(metadata_file.read_bytes())
    metadata.planner_data = Payload(marker)
    metadata_file.write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refused. Loading it would import \['posix.system'\]"):
        scan_pickles(tmp_path / "ok")
    assert not marker.exists()


# ------------------------------------------------------------------------------ sf-hf evaluate / convert


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    from ..test_pipeline import build_plain_run, build_sf_run

    sf_root, plain_root = tmp_path_factory.mktemp("sf"), tmp_path_factory.mktemp("plain")
    return build_sf_run(sf_root), build_plain_run(plain_root)[0]


def test_evaluate_names_bad_checkpoints_and_still_evaluates_the_others(pipeline_runs, tmp_path, capsys):
    run_dir = Path(shutil.copytree(pipeline_runs[0], tmp_path / "sf"))
    config_file = run_dir / "checkpoint-6" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "hidden_size": 128}))
    assert sf_hf_cli(["evaluate", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "skipped checkpoint-6: " in err
    assert (
        "checkpoint-6/model.safetensors: tensor 'model.embed_tokens.weight' has shape [320, 64], its config.json "
        "describes [320, 128]" in err
    )
    assert (run_dir / "checkpoint-3" / "eval_results.json").is_file() and (run_dir / "eval_results.json").is_file()

    plain_dir = Path(shutil.copytree(pipeline_runs[1], tmp_path / "plain"))
    marker = plant_payload(plain_dir / "checkpoint-3" / "optimizer.pt")
    assert sf_hf_cli(["evaluate", str(plain_dir)]) == 1
    err = capsys.readouterr().err
    assert "skipped checkpoint-3: " in err and "checkpoint-3/optimizer.pt: refused" in err
    assert (plain_dir / "checkpoint-6" / "eval_results.json").is_file()
    assert not marker.exists()


def test_convert_names_the_bad_file(pipeline_runs, tmp_path, capsys):
    plain_dir = Path(shutil.copytree(pipeline_runs[1], tmp_path / "plain"))
    marker = plant_payload(plain_dir / "checkpoint-3" / "optimizer.pt")
    assert sf_hf_cli(["convert", str(plain_dir / "checkpoint-3")]) == 1
    assert (
        "checkpoint-3/optimizer.pt: refused. Loading it would import or call `posix.system`" in capsys.readouterr().err
    )
    assert not marker.exists()
    truncate(plain_dir / "checkpoint-6" / "optimizer.pt")
    assert sf_hf_cli(["convert", str(plain_dir / "checkpoint-6")]) == 1
    assert "checkpoint-6/optimizer.pt: cannot be read, the file is truncated or corrupt" in capsys.readouterr().err
    assert not (plain_dir / "x-checkpoint-3").exists() and not (plain_dir / "x-checkpoint-6").exists()


def test_safetensors_and_json_files_are_judged_by_safetensors_and_json_themselves(tmp_path):
    """One way to read a safetensors header (safetensors' `safe_open`), one way to read a checkpoint's JSON."""
    from safetensors.torch import save_file

    from sf_hf.checkpoints import read_json, safetensors_problem, safetensors_shapes

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(100), "b": torch.ones(3, 4)}, str(good))
    data = good.read_bytes()
    assert safetensors_problem(good) is None
    assert safetensors_shapes(good) == {"a": (100,), "b": (3, 4)}
    damaged = {"cut": data[:-10], "padded": data + b"\0" * 4, "short": data[:5], "garbled": data[:8] + b"!" * 20}
    for name, content in damaged.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
        problem = safetensors_problem(tmp_path / f"{name}.safetensors")
        assert problem.startswith(f"{tmp_path / name}.safetensors: truncated or corrupt ({len(content)} bytes; "), name
    (tmp_path / "state.json").write_text('{"global_step": 4,')
    with pytest.raises(CheckpointCorruptError, match="state.json: truncated or corrupt JSON"):
        read_json(tmp_path / "state.json")
    with pytest.raises(CheckpointCorruptError, match="missing.json: unreadable"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(CheckpointCorruptError, match="not an object"):
        read_json(tmp_path / "list.json")
