"""The checkpoint pipeline: detection of x/y, y->x conversion, evaluation at x, summary, plot and CLI.

    pytest tests/test_pipeline.py -q

Runs are tiny (a 2-layer Llama, a 300-token BPE, blocks of 32) and trained on a generated corpus through the
same data pipeline as the recipes (`load_text_dataset` + `pack_into_blocks`), so `sf-hf evaluate` rebuilds
the held-out set from `run_args.json` exactly as training held it out.
"""

import hashlib
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from sf_hf import ScheduleFreeTrainer
from sf_hf.cli import main
from sf_hf.data import load_text_dataset, pack_into_blocks, train_bpe_tokenizer
from sf_hf.metadata import read_metadata
from sf_hf.models import build_model
from sf_hf.pipeline import (
    CheckpointError,
    convert_checkpoint,
    evaluate_run,
    find_checkpoints,
    inspect_checkpoint,
    load_model_at_x,
)

from .trainer_utils import config, max_abs_diff, saved_weights, weights

BLOCK = 32
WORDS = "the river valley runs down to the sea and every hill rises above a quiet plain of grass".split()


# ---------------------------------------------------------------------------------------------- run builders


def write_corpus(folder: Path) -> Path:
    """200 generated documents as JSON lines; returns the file."""
    rng = random.Random(0)
    path = folder / "corpus.jsonl"
    with open(path, "w") as f:
        for _ in range(200):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))}) + "\n")
    return path


def data_args(corpus: Path) -> dict:
    return dict(
        dataset_name=str(corpus),
        dataset_config=None,
        text_column="text",
        block_size=BLOCK,
        validation_split=None,
        validation_fraction=0.1,
        seed=0,
    )


def splits_tokenizer_blocks(corpus: Path):
    splits = load_text_dataset(str(corpus), validation_fraction=0.1, seed=0)
    tokenizer = train_bpe_tokenizer(splits["train"]["text"], vocab_size=300, model_max_length=BLOCK)
    return splits, tokenizer, pack_into_blocks(splits["train"], tokenizer, BLOCK)


def write_run_args(run_dir: Path, corpus: Path) -> None:
    with open(run_dir / "run_args.json", "w") as f:
        json.dump({"data": data_args(corpus), "model": {"preset": "llama-tiny"}}, f)


def build_sf_run(root: Path) -> Path:
    """ScheduleFreeTrainer run: checkpoint-3, checkpoint-6 and the final model, all x with metadata."""
    corpus = write_corpus(root)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    run_dir = root / "sf_run"
    model = build_model("llama-tiny", len(tokenizer), BLOCK, eos_token_id=tokenizer.eos_token_id)
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=train,
        processing_class=tokenizer,
        args=config(
            run_dir,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            sf_fused=False,
            include_num_input_tokens_seen=True,
        ),
    )
    trainer.train()
    trainer.save_model()
    write_run_args(run_dir, corpus)
    return run_dir


class RecordX(TrainerCallback):
    """At each save, reads x the reference way (optimizer.eval()), then goes back to y for training."""

    def __init__(self):
        self.x = {}
        self.trainer = None

    def on_save(self, args, state, control, model=None, **kwargs):
        optimizer = self.trainer.optimizer
        optimizer.eval()
        self.x[state.global_step] = weights(model)
        optimizer.train()


def build_plain_run(root: Path):
    """Plain `transformers.Trainer(optim="schedule_free_adamw")` run (the `schedulefree` package): checkpoints at y.

    Returns:
        the run directory and {step: x read from the schedulefree optimizer with .eval()}.
    """
    corpus = write_corpus(root)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    run_dir = root / "plain_run"
    torch.manual_seed(0)
    model = build_model("llama-tiny", len(tokenizer), BLOCK, eos_token_id=tokenizer.eos_token_id)
    args = TrainingArguments(
        output_dir=str(run_dir),
        optim="schedule_free_adamw",
        lr_scheduler_type="constant",
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_steps=2,
        save_strategy="steps",
        save_steps=3,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    recorder = RecordX()
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[recorder])
    recorder.trainer = trainer
    trainer.train()
    write_run_args(run_dir, corpus)
    return run_dir, recorder.x


def tree_digest(folder: Path) -> dict:
    """sha256 of every file under `folder` (to prove a command left it byte-identical)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def model_weights(model) -> dict:
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def sf_run(tmp_path_factory):
    return build_sf_run(tmp_path_factory.mktemp("sf"))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return build_plain_run(tmp_path_factory.mktemp("plain"))


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


# ---------------------------------------------------------------------------------------------- x / y


def test_plain_trainer_y_checkpoint_is_detected_and_converted_to_the_optimizers_x(plain_run, tmp_path):
    run_dir, x_by_step = plain_run
    before = tree_digest(run_dir)
    for step in (3, 6):
        folder = run_dir / f"checkpoint-{step}"
        info = inspect_checkpoint(folder)
        assert (info.weights, info.step, info.optimizer_name, info.problem) == ("y", step, "schedule_free_adamw", None)
        assert list(info.hyperparameters["betas"]) == [0.9, 0.99]
        x = x_by_step[step]
        y = saved_weights(folder)
        assert max_abs_diff({n: y[n] for n in x}, x) > 1e-3  # the file really holds y, far from x
        converted = model_weights(load_model_at_x(folder))
        torch.testing.assert_close(converted, x, rtol=0, atol=1e-6)

    # `sf-hf convert` writes a new folder holding x (with metadata saying so) and only reads the source
    out = tmp_path / "checkpoint-6-x"
    assert main(["convert", str(run_dir / "checkpoint-6"), "--to", "x", "--output-dir", str(out)]) == 0
    assert tree_digest(run_dir) == before
    meta = read_metadata(out)
    assert meta["weights"] == "x" and meta["converted_from"] == "y" and meta["global_step"] == 6
    assert not (out / "optimizer.pt").exists() and not (out / "training_args.bin").exists()
    reloaded = model_weights(AutoModelForCausalLM.from_pretrained(out))
    torch.testing.assert_close(reloaded, x_by_step[6], rtol=0, atol=1e-6)
    assert inspect_checkpoint(out).weights == "x"
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(run_dir / "checkpoint-6", out)
    with pytest.raises(CheckpointError, match="inside"):
        convert_checkpoint(run_dir / "checkpoint-6", run_dir / "checkpoint-6" / "x")


def test_optimizer_mode_decides_x_or_y_and_unknowns_are_problems(plain_run, tmp_path):
    run_dir, x_by_step = plain_run
    folder = Path(shutil.copytree(run_dir / "checkpoint-3", tmp_path / "checkpoint-3"))
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    for group in state["param_groups"]:  # as saved right after an evaluation: x in the weights
        group["train_mode"] = False
    torch.save(state, folder / "optimizer.pt")
    assert inspect_checkpoint(folder).weights == "x"

    state["state"] = {i: {"exp_avg": s["exp_avg_sq"]} for i, s in state["state"].items()}  # modes but no z
    torch.save(state, folder / "optimizer.pt")
    assert "no z" in inspect_checkpoint(folder).problem

    (folder / "optimizer.pt").unlink()  # y without metadata or optimizer state: unusable, never evaluated
    assert "cannot tell x from y" in inspect_checkpoint(folder).problem
    with pytest.raises(CheckpointError):
        load_model_at_x(folder)


def test_sf_trainer_checkpoints_are_x_and_loaded_as_saved(sf_run):
    infos = find_checkpoints(sf_run)
    assert [(i.name, i.step, i.weights, i.problem) for i in infos] == [
        ("checkpoint-3", 3, "x", None),
        ("checkpoint-6", 6, "x", None),
        ("final", 6, "x", None),
    ]
    assert infos[1].tokens_seen == 6 * 4 * BLOCK and infos[1].train_batch_size == 4
    assert infos[1].hyperparameters["decoupling_c"] == 5.0
    torch.testing.assert_close(
        model_weights(load_model_at_x(infos[0])), saved_weights(sf_run / "checkpoint-3"), rtol=0, atol=0
    )


# ---------------------------------------------------------------------------------------------- evaluate


def independent_loss_and_accuracy(folder: Path, corpus: str) -> tuple:
    """Loss over all validation blocks in one batch with the model's own loss, and next-token accuracy."""
    from transformers import AutoTokenizer

    validation = load_text_dataset(corpus, validation_fraction=0.1, seed=0)["validation"]
    blocks = pack_into_blocks(validation, AutoTokenizer.from_pretrained(folder), BLOCK)
    ids = torch.tensor(blocks["input_ids"])
    model = load_model_at_x(folder)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    accuracy = (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).sum().item() / ids[:, 1:].numel()
    return out.loss.item(), accuracy, ids[:, 1:].numel()


def test_evaluate_writes_results_summary_and_plot_at_x(sf_run, plain_run, tmp_path):
    run_dir = copy_run(sf_run, tmp_path)
    corpus = json.loads((run_dir / "run_args.json").read_text())["data"]["dataset_name"]
    assert main(["evaluate", str(run_dir), "--metric", "next_token_accuracy", "--batch-size", "5"]) == 0
    for name in ("checkpoint-3", "checkpoint-6"):
        record = json.loads((run_dir / name / "eval_results.json").read_text())
        loss, accuracy, tokens = independent_loss_and_accuracy(run_dir / name, corpus)
        assert record["eval_loss"] == pytest.approx(loss, rel=1e-5)
        assert record["eval_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
        assert record["eval_next_token_accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert record["eval_tokens"] == tokens and record["block_size"] == BLOCK
        assert record["weights"] == "x" and record["converted_from"] is None
        assert record["tokens_seen"] == record["global_step"] * 4 * BLOCK and not record["tokens_seen_estimated"]
    final = json.loads((run_dir / "eval_results.json").read_text())
    assert final["checkpoint"] == "final" and final["global_step"] == 6
    losses = [
        json.loads((run_dir / n / "eval_results.json").read_text())["eval_loss"]
        for n in ("checkpoint-3", "checkpoint-6")
    ]
    assert losses[1] < losses[0]  # training helps, measured at x

    rows = (run_dir / "eval_summary.csv").read_text().splitlines()
    assert rows[0].startswith("checkpoint,global_step,tokens_seen,weights,eval_loss,eval_perplexity")
    assert [r.split(",")[0] for r in rows[1:]] == ["checkpoint-3", "checkpoint-6", "final"]
    assert "| checkpoint-6 | 6 | 768 | x |" in (run_dir / "eval_summary.md").read_text()
    assert (run_dir / "eval_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a plain-Trainer run: y checkpoints are evaluated at their converted x, never at y
    plain_dir = copy_run(plain_run[0], tmp_path)
    evaluation = evaluate_run(plain_dir)
    assert not evaluation.failures
    for record in evaluation.results:
        assert record["weights"] == "x" and record["converted_from"] == "y"
        loss, _, _ = independent_loss_and_accuracy(plain_dir / record["checkpoint"], corpus)
        assert record["eval_loss"] == pytest.approx(loss, rel=1e-5)
        assert record["tokens_seen_estimated"]  # plain Trainer without include_num_input_tokens_seen
    assert "x (converted from y)" in (plain_dir / "eval_summary.md").read_text()


def test_corrupt_and_unconvertible_checkpoints_are_reported_and_skipped(sf_run, plain_run, tmp_path, capsys):
    run_dir = copy_run(sf_run, tmp_path)
    weights_file = run_dir / "checkpoint-3" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    assert main(["evaluate", str(run_dir)]) == 1
    assert "skipped checkpoint-3: " in (err := capsys.readouterr().err)
    assert "checkpoint-3/model.safetensors: truncated or corrupt" in err
    assert not (run_dir / "checkpoint-3" / "eval_results.json").exists()
    assert (run_dir / "checkpoint-6" / "eval_results.json").exists() and (run_dir / "eval_results.json").exists()
    assert "| checkpoint-3 |" in (run_dir / "eval_summary.md").read_text()
    assert "model.safetensors: truncated or corrupt" in (run_dir / "eval_summary.csv").read_text()

    plain_dir = copy_run(plain_run[0], tmp_path)
    (plain_dir / "checkpoint-3" / "optimizer.pt").unlink()  # y that cannot be converted
    (plain_dir / "checkpoint-6" / "config.json").unlink()  # incomplete
    evaluation = evaluate_run(plain_dir)
    assert not evaluation.results
    assert [name for name, _ in evaluation.failures] == ["checkpoint-3", "checkpoint-6"]
    assert "cannot tell x from y" in evaluation.failures[0][1] and "no config.json" in evaluation.failures[1][1]
    assert not list(plain_dir.rglob("eval_results.json"))


def test_evaluate_overrides_and_clear_errors(sf_run, tmp_path, capsys):
    run_dir = copy_run(sf_run, tmp_path)
    (run_dir / "run_args.json").unlink()
    assert main(["evaluate", str(run_dir)]) == 1
    assert "pass --dataset-name NAME --block-size N." in capsys.readouterr().err
    corpus = str(sf_run.parent / "corpus.jsonl")
    evaluation = evaluate_run(run_dir, dataset=corpus, block_size=16)
    assert [r["block_size"] for r in evaluation.results] == [16, 16, 16]
    assert main(["evaluate", str(run_dir), "--dataset-name", corpus, "--block-size", "16", "--metric", "nope"]) == 1
    assert "neither bundled (next_token_accuracy) nor a local evaluate module" in capsys.readouterr().err
