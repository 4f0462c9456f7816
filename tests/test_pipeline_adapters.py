"""The checkpoint pipeline on a LoRA run: `sf-hf evaluate`, `convert`, `card` and `push` take PEFT adapter folders
(adapter_config.json + adapter_model.safetensors, no config.json), whose base model is named by the adapter's
`base_model_name_or_path` (a local folder here; a Hub id on the local fake Hub).

    pytest tests/test_pipeline_adapters.py -q

Every number is checked against base + adapter loaded by hand with peft, with x computed in float64 from the
optimizer's y and z, never against the pipeline's own loading.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sf_hf import ScheduleFreeTrainer
from sf_hf.cli import main
from sf_hf.metadata import read_metadata
from sf_hf.models import build_model
from sf_hf.pipeline import (
    CheckpointError,
    evaluate_run,
    find_checkpoints,
    load_model_at_x,
    validation_blocks,
    write_cards,
)
from sf_hf.pipeline.heldout import DataSpec
from sf_hf.publishing.public_records import public_records

from .test_pipeline import BLOCK, splits_tokenizer_blocks, tree_digest, write_corpus, write_run_args
from .trainer_utils import config

peft = pytest.importorskip("peft")  # in the dev extra
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
NEVER_UPLOADED = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


def x_from_optimizer(trainer) -> dict:
    """The adapters' x = (y - (1 - b1) z) / b1 in float64, from the optimizer's y (train mode) and z."""
    opt = trainer.optimizer
    opt.train()
    beta1 = opt.param_groups[0]["betas"][0]
    x = {
        n: (p.detach().double() - (1 - beta1) * opt.state[p]["z"].double()) / beta1
        for n, p in trainer.model.named_parameters()
        if p.requires_grad
    }
    opt.eval()
    return x


def hand_loss(model, corpus: Path, tokenizer) -> float:
    """Token-weighted next-token loss over the run's validation blocks, computed here."""
    blocks = validation_blocks(
        DataSpec(str(corpus), block_size=BLOCK, load_options={"validation_fraction": 0.1, "seed": 0}), tokenizer
    )
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits[:, :-1].double()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


def base_with_adapter_at(base_dir: Path, x: dict):
    """A fresh base model with a LoRA adapter holding `x` (cast to the parameters' float32), built by hand."""
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft.LoraConfig(**LORA))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in x.items():
            params[name].copy_(value)
    return model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A base model saved to a local folder, and a ScheduleFreeTrainer LoRA run on it: checkpoint-2, checkpoint-4
    and the final adapter, with the adapters' float64 x at the end."""
    root = tmp_path_factory.mktemp("lora")
    corpus = write_corpus(root)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    base_dir = root / "base"
    torch.manual_seed(0)
    build_model("llama-tiny", len(tokenizer), BLOCK, eos_token_id=tokenizer.eos_token_id).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft.LoraConfig(**LORA))
    run_dir = root / "run"
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=train,
        processing_class=tokenizer,
        args=config(run_dir, max_steps=4, save_strategy="steps", save_steps=2, sf_fused=False, learning_rate=3e-2),
    )
    trainer.train()
    trainer.save_model()
    write_run_args(run_dir, corpus)
    return dict(
        run_dir=run_dir, base_dir=base_dir, corpus=corpus, tokenizer=tokenizer, train=train, x=x_from_optimizer(trainer)
    )


def test_adapter_run_evaluates_converts_cards_and_pushes_at_x(lora_run, hub_server, tmp_path, capsys):
    run_dir, base_dir = lora_run["run_dir"], lora_run["base_dir"]
    infos = find_checkpoints(run_dir)
    assert [(i.name, i.weights, i.adapter_base, i.problem) for i in infos] == [
        (name, "x", str(base_dir), None) for name in ("checkpoint-2", "checkpoint-4", "final")
    ]

    # evaluate: the final adapter's loss is base + adapter at x (float64 from the optimizer), loaded by hand
    assert main(["evaluate", str(run_dir)]) == 0
    final = json.loads((run_dir / "eval_results.json").read_text())
    assert (final["checkpoint"], final["weights"], final["adapter_base"]) == ("final", "x", "base")
    at_x = hand_loss(base_with_adapter_at(base_dir, lora_run["x"]), lora_run["corpus"], lora_run["tokenizer"])
    assert final["eval_loss"] == pytest.approx(at_x, rel=1e-6)
    base_only = hand_loss(AutoModelForCausalLM.from_pretrained(base_dir), lora_run["corpus"], lora_run["tokenizer"])
    assert abs(final["eval_loss"] - base_only) > 1e-4  # the adapter was applied
    for step in (2, 4):
        folder = run_dir / f"checkpoint-{step}"
        record = json.loads((folder / "eval_results.json").read_text())
        by_hand = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
        assert record["eval_loss"] == pytest.approx(
            hand_loss(by_hand, lora_run["corpus"], lora_run["tokenizer"]), rel=1e-6
        )

    # convert: an x adapter folder is written as it is, with its metadata, and loads as base + adapter
    assert main(["convert", str(run_dir / "checkpoint-4"), "--output", str(tmp_path / "x")]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "x").iterdir()}
    assert not (tmp_path / "x" / "config.json").exists() and read_metadata(tmp_path / "x")["weights"] == "x"
    converted, saved = (
        load_file(tmp_path / "x" / "adapter_model.safetensors"),
        load_file(run_dir / "checkpoint-4" / "adapter_model.safetensors"),
    )
    assert converted.keys() == saved.keys() and all(torch.equal(converted[k], saved[k]) for k in saved)

    # card: PEFT's conventions, the base model named, the adapter said to hold x
    assert main(["card", str(run_dir), "--output-dir", str(tmp_path / "cards"), "--repo-id", "org/lora"]) == 0
    card = ModelCard.load(tmp_path / "cards" / "main" / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert card.data.base_model is None  # a local folder is no Hub id: named in the text only, by its name
    assert "A PEFT adapter for `base`" in card.text and "holds a PEFT adapter whose weights are **x**" in card.text
    assert str(base_dir) not in card.content

    # push: the base model on the (fake) Hub, its id given for the adapters' card and adapter_config.json
    AutoModelForCausalLM.from_pretrained(base_dir).push_to_hub("org/tiny-base")
    lora_run["tokenizer"].push_to_hub("org/tiny-base")
    before = tree_digest(run_dir)
    assert (
        main(["push", str(run_dir), "--repo-id", "org/lora", "--base-model", "org/tiny-base", "--retry-delay", "0.01"])
        == 0
    )
    assert tree_digest(run_dir) == before
    assert set(hub_server.branches("org/lora")) == {"main", "step-000000002", "step-000000004"}
    for revision, folder in [("step-000000002", run_dir / "checkpoint-2"), ("main", run_dir)]:
        files = hub_server.files("org/lora", revision)
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "schedule_free.json",
            "eval_results.json",
            "README.md",
        } <= set(files) and not set(files) & (NEVER_UPLOADED | {"config.json"})
        assert files["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
        assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/tiny-base"
        card = ModelCard.load(hf_hub_download("org/lora", "README.md", revision=revision))
        assert (card.data.library_name, card.data.base_model) == ("peft", "org/tiny-base")
        assert "base_model:adapter:org/tiny-base" in card.data.tags
        assert "holds a PEFT adapter whose weights are **x**" in card.text
        assert (
            card.data.eval_results[0].metric_value
            == json.loads((folder / "eval_results.json").read_text())["eval_loss"]
        )
    assert not hub_server.requests_containing(str(base_dir).encode())  # no local path left the machine
    # what a user of the Hub gets: base from the Hub + the adapter, at x
    from_hub = peft.AutoPeftModelForCausalLM.from_pretrained("org/lora", revision="main")
    assert hand_loss(from_hub, lora_run["corpus"], lora_run["tokenizer"]) == pytest.approx(at_x, rel=1e-6)


def test_without_a_hub_id_the_published_adapter_config_names_the_base_folder_only(lora_run):
    assert json.loads((lora_run["run_dir"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        lora_run["base_dir"]
    )
    published = json.loads(public_records(lora_run["run_dir"])["adapter_config.json"])
    assert published["base_model_name_or_path"] == "base"


def test_a_base_model_that_cannot_be_fetched_offline_is_named(lora_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(lora_run["run_dir"], tmp_path / "run"))
    for folder in (run_dir / "checkpoint-2", run_dir / "checkpoint-4", run_dir):
        settings = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(
            json.dumps({**settings, "base_model_name_or_path": "org/not-downloaded"})
        )
    with pytest.raises(
        CheckpointError,
        match=r"cannot load the model of the adapter's base model 'org/not-downloaded' "
        r"\(base_model_name_or_path of adapter_config.json; not a local folder, "
        r"so a Hub id\)\. HF_HUB_OFFLINE=1 is set",
    ):
        load_model_at_x(run_dir / "checkpoint-2")
    assert main(["evaluate", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("'org/not-downloaded'") >= 3 and "HF_HUB_OFFLINE=1 is set" in err
    assert main(["convert", str(run_dir / "checkpoint-2")]) == 1
    assert "'org/not-downloaded'" in capsys.readouterr().err
    # a Hub id needs no --base-model: the card's metadata and the published adapter_config.json keep it
    card = ModelCard.load(write_cards(run_dir, tmp_path / "cards")["main"] / "README.md")
    assert (card.data.library_name, card.data.base_model) == ("peft", "org/not-downloaded")
    assert "adapter_config.json" not in public_records(run_dir)  # published as it is


def test_an_adapter_saved_without_a_tokenizer_is_evaluated_with_its_base_models(lora_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lora_run["run_dir"], run_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run_dir / "checkpoint-2" / name).unlink()
    evaluation = evaluate_run(run_dir, only=["checkpoint-2"])
    assert not evaluation.failures
    by_hand = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(lora_run["base_dir"]), run_dir / "checkpoint-2"
    )
    expected = hand_loss(by_hand, lora_run["corpus"], lora_run["tokenizer"])
    assert evaluation.results[0]["eval_loss"] == pytest.approx(expected, rel=1e-6)


def test_the_trainers_own_push_of_an_adapter_is_x_with_the_adapter_card(lora_run, hub_server, tmp_path):
    """transformers' own push (wrapped): the adapter files as saved in output_dir, so its config names the local base
    model as PEFT saved it (what `sf-hf push --base-model` replaces); the card names it by its folder name only."""
    base_dir = lora_run["base_dir"]
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft.LoraConfig(**LORA))
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=lora_run["train"],
        args=config(
            tmp_path / "run", max_steps=2, sf_fused=False, push_to_hub=True, hub_model_id="org/own", hub_strategy="end"
        ),
    )
    trainer.train()
    trainer.push_to_hub()
    files = hub_server.files("org/own", "main")
    assert files["adapter_model.safetensors"] == (tmp_path / "run" / "adapter_model.safetensors").read_bytes()
    assert files["adapter_config.json"] == (tmp_path / "run" / "adapter_config.json").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and "holds a PEFT adapter whose weights are **x**" in card.text
    assert str(base_dir) not in card.content
