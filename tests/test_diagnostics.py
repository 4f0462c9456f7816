"""River diagnostics (`sf_hf.diagnostics`) and the decay probe (`sf_hf.probe`, `sf-hf probe`).

pytest tests/test_diagnostics.py -q
"""

import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sf_hf import ScheduleFreeTrainer
from sf_hf.diagnostics import RiverDiagnosticsCallback, averaged_and_training_points
from sf_hf.pipeline.errors import CheckpointError
from sf_hf.probe import probe_checkpoint

from .trainer_utils import TokenDataset, config, hand_loss, max_abs_diff, tiny_model, weights

TRAIN, EVAL = TokenDataset(64, seed=1), TokenDataset(8, seed=2)


def train(tmp_path, callbacks=(), **overrides):
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        args=config(tmp_path, **overrides),
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


def model_at(state: dict):
    model = tiny_model()
    model.load_state_dict(state)
    return model


def eval_entries(trainer):
    return [h for h in trainer.state.log_history if "eval_loss" in h]


@pytest.mark.parametrize("name", ["sf_adamw_refined", "sf_adamw", "adamw_ema"])
def test_river_callback_matches_hand_computations(tmp_path, name):
    trainer = train(
        tmp_path,
        [RiverDiagnosticsCallback()],
        optimizer_name=name,
        max_steps=10,
        eval_strategy="steps",
        eval_steps=5,
        per_device_eval_batch_size=3,
    )  # 8 blocks in batches of 3, 3, 2
    entries = eval_entries(trainer)
    assert [e["step"] for e in entries] == [5, 10]
    last = entries[-1]
    opt = trainer.optimizer.optimizer
    assert not opt.train_mode  # the callback did not switch modes
    x = weights(trainer.model)
    opt.train()
    y = weights(trainer.model)
    opt.eval()
    assert max_abs_diff(x, y) > 1e-3
    assert last["eval_river_loss_x"] == pytest.approx(hand_loss(model_at(x), EVAL), rel=1e-5)
    assert last["eval_river_loss_y"] == pytest.approx(hand_loss(model_at(y), EVAL), rel=1e-5)
    assert last["eval_river_loss_gap"] == pytest.approx(last["eval_river_loss_y"] - last["eval_river_loss_x"])
    assert abs(last["eval_river_loss_y"] - last["eval_river_loss_x"]) > 1e-4
    distance = math.sqrt(sum(float((x[n].double() - y[n].double()).pow(2).sum()) for n in x))
    assert last["eval_river_xy_distance"] == pytest.approx(distance, rel=1e-5)
    norm_x = math.sqrt(sum(float(t.double().pow(2).sum()) for t in x.values()))
    assert last["eval_river_xy_relative"] == pytest.approx(distance / norm_x, rel=1e-5)
    group = opt.param_groups[0]
    if name == "adamw_ema":
        assert last["eval_river_averaging_weight"] == pytest.approx(0.01)
        assert last["eval_river_averaging_window"] == pytest.approx(100.0)
    else:
        # after warmup (3 steps) the weights are equal: c_t = 1 / (t - 3 + sum of the warmup weights) for vanilla,
        # times (1 - b1) C for the refined variant; the window is (1 - b1) / c
        warm = sum(((k + 1) / 3) ** 2 for k in range(3))
        c = 1 / (10 - 3 + warm)
        if name == "sf_adamw_refined":
            c *= (1 - 0.9) * 5.0
        assert last["eval_river_averaging_weight"] == pytest.approx(c) == group["averaging_weight"]
        assert last["eval_river_averaging_window"] == pytest.approx(0.1 / c)


def test_river_callback_reads_y_from_a_model_in_train_mode_and_plain_adamw(tmp_path):
    trainer = train(tmp_path, max_steps=6)
    opt = trainer.optimizer.optimizer
    x_eval, y_eval = ({n: t.clone() for n, t in d.items()} for d in averaged_and_training_points(trainer.model, opt))
    opt.train()
    x_train, y_train = averaged_and_training_points(trainer.model, opt)
    assert max_abs_diff(x_eval, x_train) < 1e-6 and max_abs_diff(y_eval, y_train) < 1e-6
    assert opt.train_mode  # reading did not switch
    plain = train(
        tmp_path / "plain",
        [RiverDiagnosticsCallback()],
        optimizer_name="adamw_cosine",
        max_steps=4,
        eval_strategy="steps",
        eval_steps=4,
    )
    last = eval_entries(plain)[-1]
    assert last["eval_river_loss_x"] == last["eval_river_loss_y"] == last["eval_loss"]
    assert last["eval_river_xy_distance"] == 0.0 and "eval_river_averaging_weight" not in last


class RecordLR(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.lrs.append(logs["learning_rate"])


def file_hashes(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("name", ["sf_adamw_refined", "adamw_wsd"])
def test_probe_branches_a_decay_and_leaves_the_checkpoint_untouched(tmp_path, name):
    train(
        tmp_path / "run", optimizer_name=name, max_steps=8, save_strategy="steps", save_steps=6, wsd_decay_fraction=0.25
    )
    checkpoint = tmp_path / "run" / "checkpoint-6"
    before = file_hashes(checkpoint)
    assert {"optimizer.pt", "scheduler.pt", "schedule_free.json", "model.safetensors"} <= set(before)
    recorder = RecordLR()
    result = probe_checkpoint(
        checkpoint,
        decay_steps=4,
        control=True,
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        output_dir=tmp_path / "probe",
        callbacks=[recorder],
        use_cpu=True,
        seed=0,
    )
    # (the probe's default clipping, none for Schedule-Free and 1.0 for AdamW, is the run's: ScheduleFreeConfig's)
    assert file_hashes(checkpoint) == before
    assert result.step == 6 and result.decay_steps == 4 and result.optimizer_name == name
    assert result.loss_before == pytest.approx(
        hand_loss(model_at(load_file(checkpoint / "model.safetensors")), EVAL), rel=1e-5
    )
    lr = 1e-2  # constant at step 6 for both (warmup 3; WSD decays only from step 6 of 8, after the checkpoint)
    assert result.start_lr == pytest.approx(lr)
    decayed, constant = recorder.lrs[:4], recorder.lrs[4:]
    assert decayed == pytest.approx([lr, 0.75 * lr, 0.5 * lr, 0.25 * lr])
    assert constant == pytest.approx([lr] * 4)
    assert result.loss_after != result.loss_before and result.loss_control != result.loss_after
    assert result.gain == pytest.approx(result.loss_before - result.loss_after)
    assert result.decay_gain == pytest.approx(result.loss_control - result.loss_after)
    assert "validation loss at x" in result.describe()
    json.dumps(result.to_dict())
    if name == "sf_adamw_refined":  # the constant branch is the run resumed as it was: an uninterrupted 10-step run
        straight = train(tmp_path / "straight", optimizer_name=name, max_steps=10)
        assert result.loss_control == pytest.approx(straight.evaluate()["eval_loss"], abs=1e-6)


def test_probe_refuses_folders_it_cannot_resume(tmp_path):
    trainer = train(tmp_path / "run", max_steps=3)
    trainer.save_model(str(tmp_path / "saved"))
    with pytest.raises(CheckpointError, match="lacks optimizer.pt"):
        probe_checkpoint(tmp_path / "saved", train_dataset=TRAIN, eval_dataset=EVAL)


def test_cli_probe_rebuilds_the_data_from_run_args(tmp_path, capsys):
    """`sf-hf probe CHECKPOINT`: data from RUN_DIR/run_args.json, tokenizer from the checkpoint; folder untouched."""
    from sf_hf.cli import main
    from sf_hf.data import load_text_dataset, pack_into_blocks, train_bpe_tokenizer
    from sf_hf.models import build_model

    corpus = tmp_path / "corpus.jsonl"
    words = ["river", "valley", "loss", "average", "step", "decay", "schedule", "free", "weight", "token"]
    corpus.write_text(
        "\n".join(json.dumps({"text": " ".join(words[(i * j) % 10] for j in range(40))}) for i in range(60)) + "\n"
    )
    splits = load_text_dataset(str(corpus))
    tokenizer = train_bpe_tokenizer(splits["train"]["text"], vocab_size=280, model_max_length=16)
    train_blocks, valid_blocks = (pack_into_blocks(splits[s], tokenizer, 16) for s in ("train", "validation"))
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = build_model(
        "llama-tiny",
        len(tokenizer),
        16,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    trainer = ScheduleFreeTrainer(
        model=model,
        args=config(run, max_steps=6, save_strategy="steps", save_steps=6, sf_fused=False),
        train_dataset=train_blocks,
        eval_dataset=valid_blocks,
        processing_class=tokenizer,
    )
    trainer.train()
    (run / "run_args.json").write_text(
        json.dumps({"data": {"dataset_name": str(corpus), "text_column": "text", "block_size": 16}, "model": {}})
    )
    checkpoint = run / "checkpoint-6"
    before = file_hashes(checkpoint)
    out = tmp_path / "probe.json"
    capsys.readouterr()
    assert (
        main(
            [
                "probe",
                str(checkpoint),
                "--decay-steps",
                "3",
                "--max-grad-norm",
                "1.0",
                "--seed",
                "0",
                "--output-file",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "a 3-step linear lr decay" in printed and "validation loss at x" in printed
    result = json.loads(out.read_text())
    assert result["step"] == 6 and result["decay_steps"] == 3 and result["loss_control"] is None
    assert result["loss_before"] == pytest.approx(trainer.evaluate()["eval_loss"], abs=1e-5)
    assert result["gain"] == pytest.approx(result["loss_before"] - result["loss_after"])
    assert file_hashes(checkpoint) == before
    assert main(["probe", str(tmp_path / "nowhere")]) == 1  # a pipeline error: one line, exit status 1
    assert "is not a folder" in capsys.readouterr().err
