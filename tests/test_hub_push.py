"""`sf-hf push` and the Trainer callback against the local fake Hub, with the real `huggingface_hub` client.

    pytest tests/test_hub_push.py -q

Every test checks what arrives on the Hub through the same endpoint (`from_pretrained(repo, revision=...)`,
`ModelCard.load`), and that the run directory is byte-identical after the push, whatever the server did.
"""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants, hf_hub_download
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from sf_hf.cli import main
from sf_hf.data import load_text_dataset, pack_into_blocks, train_bpe_tokenizer
from sf_hf.models import build_model
from sf_hf.pipeline import (
    CheckpointPipelineCallback,
    DataSpec,
    PushError,
    RetryPolicy,
    evaluate_run,
    push_run,
)
from sf_hf.publishing.card import card_metrics

from .test_pipeline import BLOCK, RecordX, build_plain_run, build_sf_run, model_weights, tree_digest, write_corpus
from .trainer_utils import saved_weights

FAST = RetryPolicy(attempts=3, initial_delay=0.01)
NEVER_UPLOADED = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


@pytest.fixture(scope="module")
def sf_run(tmp_path_factory):
    run_dir = build_sf_run(tmp_path_factory.mktemp("sf"))
    assert not evaluate_run(run_dir).failures
    return run_dir


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run_dir, x_by_step = build_plain_run(tmp_path_factory.mktemp("plain"))
    assert not evaluate_run(run_dir).failures
    return run_dir, x_by_step


def hub_weights(repo_id: str, revision: str) -> dict:
    return model_weights(AutoModelForCausalLM.from_pretrained(repo_id, revision=revision))


def hub_card(repo_id: str, revision: str) -> ModelCard:
    return ModelCard.load(hf_hub_download(repo_id, "README.md", revision=revision))


def assert_card_matches(card: ModelCard, folder: Path) -> None:
    results = json.loads((folder / "eval_results.json").read_text())
    on_card = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert on_card == dict(card_metrics(results)) and {"loss", "perplexity"} <= set(on_card)
    assert on_card["loss"] == results["eval_loss"] and on_card["perplexity"] == results["eval_perplexity"]


def test_push_sends_x_to_step_branches_and_main_with_cards(hub_server, sf_run):
    before = tree_digest(sf_run)
    report = push_run(sf_run, "org/tiny-sf", retry=FAST)
    assert tree_digest(sf_run) == before
    assert list(report.commits) == ["step-000000003", "step-000000006", "main"] and not report.skipped
    assert set(hub_server.branches("org/tiny-sf")) == {"main", "step-000000003", "step-000000006"}

    for revision, folder in [
        ("step-000000003", sf_run / "checkpoint-3"),
        ("step-000000006", sf_run / "checkpoint-6"),
        ("main", sf_run),
    ]:
        torch.testing.assert_close(hub_weights("org/tiny-sf", revision), saved_weights(folder), rtol=0, atol=0)
        files = set(hub_server.files("org/tiny-sf", revision))
        assert files.isdisjoint(NEVER_UPLOADED)
        assert {
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "schedule_free.json",
            "eval_results.json",
            "README.md",
            "eval_loss.png",
        } <= files
        card = hub_card("org/tiny-sf", revision)
        assert_card_matches(card, folder)
        assert "2405.15682" in card.text and "2507.09846" in card.text
        assert f'revision="{revision}"' in card.text and card.text.startswith("\n# tiny-sf\n")
        assert str(sf_run.parent) not in card.content  # no local path is published in the card
        for row in (
            "| b1 (interpolation weight of y) | 0.9 |",
            "| b2 | 0.99 |",
            "| C (decoupling constant",
            "| warmup steps | 3 |",
            "| peak learning rate | 0.01 |",
            "| weight decay | 0.1 |",
            f"| batch (per optimizer step) | 4 sequences x {BLOCK} tokens",
        ):
            assert row in card.text
    assert ModelCard.load("org/tiny-sf").data.eval_results[0].dataset_split == "validation"
    for secret in NEVER_UPLOADED:  # not a byte of them was sent, in any request
        assert not hub_server.requests_containing((sf_run / "checkpoint-3" / secret).read_bytes())
    local_root = str(sf_run.parents[1])  # pytest's base folder: the run and its corpus are below it
    assert local_root in (sf_run / "eval_results.json").read_text()  # the local record names the corpus by path
    assert not hub_server.requests_containing(local_root.encode())  # no file, card or request publishes it
    published = json.loads(hub_server.files("org/tiny-sf", "main")["eval_results.json"])
    assert published["dataset"] == "corpus.jsonl"
    assert published["eval_loss"] == json.loads((sf_run / "eval_results.json").read_text())["eval_loss"]


def test_push_converts_plain_trainer_y_checkpoints(hub_server, plain_run):
    run_dir, x_by_step = plain_run
    before = tree_digest(run_dir)
    report = push_run(run_dir, "org/tiny-plain", retry=FAST)
    assert tree_digest(run_dir) == before
    assert list(report.commits) == ["step-000000003", "step-000000006", "main"]  # no final model: last to main
    for revision, step in [("step-000000003", 3), ("step-000000006", 6), ("main", 6)]:
        torch.testing.assert_close(hub_weights("org/tiny-plain", revision), x_by_step[step], rtol=0, atol=1e-6)
        metadata = json.loads(hub_server.files("org/tiny-plain", revision)["schedule_free.json"])
        assert metadata["weights"] == "x" and metadata["converted_from"] == "y" and metadata["global_step"] == step
        assert_card_matches(hub_card("org/tiny-plain", revision), run_dir / f"checkpoint-{step}")
        assert "recovered" in hub_card("org/tiny-plain", revision).text  # the card says x came from y


def test_existing_branches_are_refused_unless_overwrite(hub_server, sf_run):
    push_run(sf_run, "org/tiny-sf", retry=FAST)
    commits = len(hub_server.requests_matching("POST", "/commit/"))
    with pytest.raises(PushError, match="step-000000003, step-000000006, main.*--overwrite"):
        push_run(sf_run, "org/tiny-sf", retry=FAST)
    assert len(hub_server.requests_matching("POST", "/commit/")) == commits  # refused before any upload

    hub_server.commit_files("org/tiny-sf", {"stale.bin": b"old"}, revision="step-000000003")
    before = tree_digest(sf_run)
    push_run(sf_run, "org/tiny-sf", overwrite=True, retry=FAST)
    assert tree_digest(sf_run) == before
    assert "stale.bin" not in hub_server.files("org/tiny-sf", "step-000000003")  # exactly the checkpoint, no mix


def test_server_errors_are_retried_and_local_files_stay_identical(hub_server, sf_run):
    before = tree_digest(sf_run)
    hub_server.fail_next(2, 503, path_contains="/api/whoami-v2")
    commit_fault = hub_server.fail_next(2, 500, method="POST", path_contains="/commit/")
    push_run(sf_run, "org/flaky", retry=FAST)
    assert commit_fault.hits == 2
    assert [r.status for r in hub_server.requests_matching("POST", "/commit/")][:3] == [500, 500, 200]
    torch.testing.assert_close(hub_weights("org/flaky", "step-000000006"), saved_weights(sf_run / "checkpoint-6"))

    hub_server.fail_next(10, 500, method="POST", path_contains="/commit/step-000000003")
    with pytest.raises(PushError, match=r"failed after 3 attempts.*already pushed: nothing; local files are unchanged"):
        push_run(sf_run, "org/down", retry=FAST)
    assert tree_digest(sf_run) == before


def test_unreachable_hub_and_bad_tokens_fail_before_any_upload(hub_server, sf_run, monkeypatch):
    before = tree_digest(sf_run)
    hub_server.add_token("hf_read_only", role="read")
    for token, message in [("hf_not_valid", "rejected the token \\(HTTP 401\\)"), ("hf_read_only", "read-only")]:
        with pytest.raises(PushError, match=message):
            push_run(sf_run, "org/never", token=token, retry=FAST)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PushError, match="No Hugging Face token"):
        push_run(sf_run, "org/never", retry=FAST)
    assert not hub_server.repo_exists("org/never")
    assert not hub_server.requests_matching(path_contains="/preupload/") and not hub_server.requests_matching("POST")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE=1 is set"):
        push_run(sf_run, "org/never", token="hf_any", retry=FAST)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    hub_server.stop()  # connection refused
    with pytest.raises(PushError, match="whoami.*failed after 3 attempts: ConnectError"):
        push_run(sf_run, "org/never", token="hf_any", retry=FAST)
    assert tree_digest(sf_run) == before


def test_cli_dry_run_lists_the_plan_offline_then_pushes(hub_server, sf_run, capsys, tmp_path):
    assert main(["push", str(sf_run), "--repo-id", "org/cli", "--dry-run", "--preview-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-3 (x) -> step-000000003: config.json, eval_results.json" in out
    assert "final (x) -> main:" in out and "README.md (card)" in out
    kept_local = out.splitlines()[1].split("never uploaded: ")[1].split(", ")
    assert NEVER_UPLOADED <= set(kept_local)
    assert hub_server.requests == []
    assert f"{tmp_path}/<revision>/README.md" in out and (tmp_path / "main" / "README.md").is_file()

    assert main(["push", str(sf_run), "--repo-id", "org/cli", "--retry-delay", "0.01"]) == 0
    assert f"checkpoint-6 -> step-000000006: {hub_server.url}/org/cli/commit/" in capsys.readouterr().out
    assert main(["push", str(sf_run), "--repo-id", "org/cli"]) == 1
    assert "Refusing to overwrite" in capsys.readouterr().err


def test_cli_push_prints_one_line_per_commit_and_http_logs_only_with_verbose(hub_server, sf_run, capsys, caplog):
    caplog.set_level(logging.INFO)
    http = lambda: [r for r in caplog.records if r.name.startswith(("httpx", "huggingface_hub"))]  # noqa: E731
    assert main(["push", str(sf_run), "--repo-id", "org/loud", "--retry-delay", "0.01", "-v"]) == 0
    assert len(http()) > 10  # one per request: what `sf-hf push` printed before
    capsys.readouterr()
    caplog.clear()
    assert main(["push", str(sf_run), "--repo-id", "org/quiet", "--retry-delay", "0.01"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert "it/s" not in printed.err  # no upload bars either
    branches = sorted(hub_server.branches("org/quiet"))
    assert branches == ["main", "step-000000003", "step-000000006"]
    expected = {"checkpoint-3": "step-000000003", "checkpoint-6": "step-000000006", "final": "main"}
    pattern = re.compile(rf"^(\S+) -> (\S+): {re.escape(hub_server.url)}/org/quiet/commit/[0-9a-f]+$")
    assert dict(pattern.fullmatch(line).groups() for line in lines) == expected, lines
    assert http() == []


def test_callback_evaluates_and_pushes_each_checkpoint_at_x_during_training(hub_server, tmp_path):
    corpus = write_corpus(tmp_path)
    splits = load_text_dataset(str(corpus), validation_fraction=0.1, seed=0)
    tokenizer = train_bpe_tokenizer(splits["train"]["text"], vocab_size=300, model_max_length=BLOCK)
    data = DataSpec(str(corpus), block_size=BLOCK, load_options={"validation_fraction": 0.1, "seed": 0})
    pipeline = CheckpointPipelineCallback(data=data, repo_id="org/live", metrics=["next_token_accuracy"], retry=FAST)
    recorder = RecordX()
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        optim="schedule_free_adamw",
        lr_scheduler_type="constant",
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        adam_beta1=0.9,
        warmup_steps=2,
        save_strategy="steps",
        save_steps=3,
        save_total_limit=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=build_model("llama-tiny", len(tokenizer), BLOCK, eos_token_id=tokenizer.eos_token_id),
        args=args,
        train_dataset=pack_into_blocks(splits["train"], tokenizer, BLOCK),
        processing_class=tokenizer,
        callbacks=[recorder, pipeline],
    )
    recorder.trainer = trainer
    trainer.train()

    assert pipeline.errors == []
    assert [r["checkpoint"] for r in pipeline.results] == ["checkpoint-3", "checkpoint-6"]
    assert all(r["converted_from"] == "y" and "eval_next_token_accuracy" in r for r in pipeline.results)
    for step in (3, 6):  # the plain Trainer saved y; what arrived is x (checkpoint-3 was rotated away meanwhile)
        revision = f"step-{step:09d}"
        torch.testing.assert_close(hub_weights("org/live", revision), recorder.x[step], rtol=0, atol=1e-6)
        assert json.loads(hub_server.files("org/live", revision)["schedule_free.json"])["weights"] == "x"
    assert not (tmp_path / "run" / "checkpoint-3").exists()
    assert json.loads((tmp_path / "run" / "checkpoint-6" / "eval_results.json").read_text()) == pipeline.results[1]
    assert not list((tmp_path / "run").glob("*sf_hf-*"))  # snapshots are cleaned up
    assert_card_matches(hub_card("org/live", "step-000000006"), tmp_path / "run" / "checkpoint-6")


def test_published_records_lose_local_paths_and_a_broken_one_is_refused(tmp_path):
    from sf_hf.publishing.public_records import public_records

    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"best_model_checkpoint": "/home/someone/runs/x/checkpoint-4", "global_step": 4})
    )
    (tmp_path / "eval_results.json").write_text(json.dumps({"dataset": "embedded", "eval_loss": 3.5}))
    public = public_records(tmp_path)
    assert set(public) == {"trainer_state.json"}  # eval_results.json names no local path: uploaded as it is
    assert json.loads(public["trainer_state.json"]) == {"best_model_checkpoint": "checkpoint-4", "global_step": 4}
    (tmp_path / "eval_results.json").write_text('{"dataset": "/home/someone/corpus.jsonl", "eval_')
    with pytest.raises(PushError, match="eval_results.json is not valid JSON"):
        public_records(tmp_path)
