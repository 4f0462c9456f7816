"""The TRL scripts `sf_hf.scripts.sft` / `dpo` (`sf-hf sft|dpo`), their recipes, and the offline fine-tuning datasets
`kjv-instructions` / `kjv-preferences`: deterministic, held-out splits disjoint, in TRL's formats; a LoRA run's
output folder holds x, checked against x computed in float64 from the y and z its last checkpoint saved.

    pytest tests/test_trl_scripts.py -q
"""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trl import DPOConfig, SFTConfig
from trl.data_utils import is_conversational

from sf_hf import optimizer_cls_and_kwargs
from sf_hf.bundled import resolve_recipe
from sf_hf.data import EMBEDDED_DATASETS, load_dataset_splits, load_embedded_corpus
from sf_hf.data.instructions import verse_splits
from sf_hf.metadata import read_metadata
from sf_hf.optim.averaging import averaging_window, no_averaging_message
from sf_hf.optim.schedule_free import KEPT_Y_KEY
from sf_hf.registry import resolve_warmup_steps
from sf_hf.scripts import SCRIPTS, dpo, sft, trl_run

from .trainer_utils import tiny_model
from .trl_utils import counting, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TRL_RECIPES = {"sft": (sft, SFTConfig), "dpo": (dpo, DPOConfig)}


# ---------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def built():
    return {name: EMBEDDED_DATASETS[name](seed=0) for name in ("kjv-instructions", "kjv-preferences")}


def test_the_datasets_are_deterministic_and_a_seed_changes_them(built):
    again = load_dataset_splits("kjv-instructions", seed=0)
    for split in ("train", "validation"):
        assert again[split].to_dict() == built["kjv-instructions"][split].to_dict()
    other = load_dataset_splits("kjv-instructions", seed=1)
    assert other["validation"]["prompt"][:50] != built["kjv-instructions"]["validation"]["prompt"][:50]


def test_the_held_out_verses_come_from_the_pretraining_runs_held_out_chapters_and_no_training_verse(built):
    verses = verse_splits(seed=0)
    train_text = {verse for _, verse in verses["train"]}
    assert not train_text & {verse for _, verse in verses["validation"]}
    held_out_chapters = "\n".join(load_embedded_corpus(seed=0)["validation"]["text"])
    assert all(verse in held_out_chapters for _, verse in verses["validation"][:200])
    train_prompts = set(built["kjv-instructions"]["train"]["prompt"])
    assert not train_prompts & set(built["kjv-instructions"]["validation"]["prompt"])
    assert len(built["kjv-instructions"]["validation"]) > 1000 and len(built["kjv-instructions"]["train"]) > 25000


def test_instructions_are_prompt_completion_and_preferences_are_prompt_chosen_rejected(built):
    instructions, preferences = built["kjv-instructions"]["validation"], built["kjv-preferences"]["validation"]
    assert instructions.column_names == ["prompt", "completion"]
    assert preferences.column_names == ["prompt", "chosen", "rejected"]
    assert not is_conversational(instructions[0]) and not is_conversational(preferences[0])  # TRL's "standard"
    books = set(load_embedded_corpus(seed=0)["train"]["book"])
    kinds = {"continue": 0, "book": 0}
    verses = {" ".join(verse.split()) for _, verse in verse_splits(seed=0)["validation"]}  # whitespace as cut
    for row in instructions:
        if row["prompt"].startswith("Continue the verse: "):
            kinds["continue"] += 1
            assert row["prompt"][len("Continue the verse: ") :] + row["completion"] in verses
        else:
            kinds["book"] += 1
            assert row["prompt"].startswith("Which book is this verse from? ") and row["completion"][1:] in books
    assert abs(kinds["continue"] - kinds["book"]) <= 1
    for row in preferences:
        assert row["prompt"].removeprefix("Continue the verse: ") + row["chosen"] in verses
        assert row["chosen"] != row["rejected"]
        assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ")


# ---------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("task", TRL_RECIPES)
def test_the_trl_recipes_parse_strictly_state_their_arithmetic_and_average(task):
    module, config_cls = TRL_RECIPES[task]
    recipe = ROOT / "recipes" / "llama-small" / task / "config_sf_adamw_refined.yaml"  # a link into sf_hf/recipes
    assert Path(module.DEFAULT_RECIPE) == recipe.resolve()
    script_args, args, model_args = trl_run.parse(config_cls, ["--config", str(recipe)])
    assert model_args.use_peft and model_args.model_name_or_path == trl_run.MAKE_PRETRAIN_OUTPUT
    assert script_args.dataset_name in EMBEDDED_DATASETS and str(args.lr_scheduler_type.value) == "constant"
    header = "".join(re.findall(r"^#.*\n", recipe.read_text(), flags=re.M))
    for part in (
        "Hardware:",
        "Batch:",
        "Launch",
        "Expected",
        f"sf-hf {task} --config {recipe.relative_to(ROOT)}",
        f"{args.per_device_train_batch_size} per device",
        f"{args.max_steps} steps",
    ):
        assert part in header, part
    cls, kwargs = optimizer_cls_and_kwargs(args)
    optimizer = cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    assert kwargs["warmup_steps"] == resolve_warmup_steps(args, args.max_steps) > 0
    assert no_averaging_message(optimizer, args.max_steps) is None  # no "c stays 1 for the whole run" warning
    # decoupling_c suits the short run: x averages ~T/C >= 4 steps at the end; the paper's C = 200 would average
    # under one step (x ~ y), and in a 20-step smoke run not at all (the warning)
    assert averaging_window(optimizer.param_groups[0], args.max_steps) >= 4
    paper_c = cls([torch.nn.Parameter(torch.zeros(1))], **{**kwargs, "decoupling_c": 200})
    assert averaging_window(paper_c.param_groups[0], args.max_steps) < 1
    assert "stays 1 for all 20 steps" in no_averaging_message(paper_c, 20)
    with pytest.raises(Exception, match="learning_rat' \\(did you mean 'learning_rate'"):
        trl_run.parse(config_cls, ["--config", str(recipe), "--learning_rat", "1"])


def test_scripts_are_registered_and_their_help_lists_trl_and_schedule_free_fields(capsys):
    from sf_hf import cli

    assert SCRIPTS["sft"] == "sf_hf.scripts.sft" and SCRIPTS["dpo"] == "sf_hf.scripts.dpo"
    for name in ("sft", "dpo"):
        assert cli.COMMANDS[name].passes_through
        recipe = f"llama-small/{name}/sf_adamw_refined"  # a bundled recipe, by name
        args, unknown = cli.build_parser().parse_known_args([name, "--config", recipe, "--use_peft", "true"])
        args.passed_through = unknown
        assert cli.accelerate_launch_args(args, SCRIPTS[name]) == [
            "-m",
            SCRIPTS[name],
            "--config",
            str(resolve_recipe(recipe)),
            "--use_peft",
            "true",
        ]
        assert resolve_recipe(recipe).name == "config_sf_adamw_refined.yaml"
    for module, own in ((sft, "--completion_only_loss"), (dpo, "--beta")):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for flag in (
            "--dataset_name",
            "--max_eval_samples",
            "--use_peft",
            "--lora_r",
            "--decoupling_c",
            "--optimizer_name",
            own,
        ):
            assert flag in text, flag


def test_a_missing_pretrained_model_says_to_run_make_pretrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SystemExit,
        match=r"outputs/llama-small-sf_adamw_refined' does not exist .*run `make "
        r"pretrain` first",
    ):
        sft.main(["--output_dir", str(tmp_path / "out")])


# ---------------------------------------------------------------------------------------------- runs


def tiny_base(folder: Path) -> str:
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def tiny_argv(tmp_path, task, dataset, steps=6):
    """The task's recipe with the tiny Llama, a local dataset and a few steps."""
    return [
        "--config",
        str(TRL_RECIPES[task][0].DEFAULT_RECIPE),
        "--model_name_or_path",
        tiny_base(tmp_path / "base"),
        "--dataset_name",
        dataset,
        "--max_train_samples",
        "24",
        "--max_eval_samples",
        "8",
        "--output_dir",
        str(tmp_path / "out"),
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--max_steps",
        str(steps),
        "--save_steps",
        str(steps),
        "--eval_steps",
        "3",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--max_length",
        "16",
        "--learning_rate",
        "1e-2",
        "--decoupling_c",
        "5",
        "--validation_fraction",
        "0.2",
        "--warmup_steps",
        "2",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]


def assert_adapter_holds_x(folder: Path, checkpoint: Path):
    """Each saved adapter tensor is x = (y - (1 - b1) z) / b1 (float64) of exactly one parameter of the checkpoint's
    optimizer state (its y kept at the switch to x, its z), and far from that y."""
    saved = load_file(str(folder / "adapter_model.safetensors"))
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    (group,) = {tuple(g["betas"]) for g in state["param_groups"]}
    beta1 = group[0]
    matched = []
    for i, y in state[KEPT_Y_KEY].items():
        x = (y.double() - (1 - beta1) * state["state"][i]["z"].double()) / beta1
        names = [n for n, t in saved.items() if t.shape == x.shape and (t.double() - x).abs().max() <= 1e-6]
        assert len(names) == 1, (i, names)
        assert (saved[names[0]].double() - y.double()).abs().max() > 1e-4  # x, not y
        matched += names
    assert sorted(matched) == sorted(saved) and all("lora_" in n for n in saved)
    meta = read_metadata(folder)
    assert meta["weights"] == "x" and meta["optimizer_name"] == "sf_adamw_refined"


def assert_trained(out: Path, metrics: dict, key: str):
    """Six logged training steps; every lora_B (zero at the start) moved; `key` measured before and after."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert all(t.abs().max() > 0 for n, t in saved.items() if "lora_B" in n)
    assert key in metrics and f"initial_{key}" in metrics


def test_sft_main_trains_a_lora_adapter_and_saves_it_at_x(tmp_path):
    rows = [{"prompt": counting(s, 4), "completion": " " + counting(s + 4, 3)} for s in range(40)]
    metrics = sft.main(tiny_argv(tmp_path, "sft", write_jsonl(tmp_path / "sft.jsonl", rows)))
    out = tmp_path / "out"
    assert_adapter_holds_x(out, out / "checkpoint-6")
    assert_adapter_holds_x(out / "checkpoint-6", out / "checkpoint-6")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path / "base")
    assert_trained(out, metrics, "eval_loss")
    assert (out / "README.md").is_file() and "## Schedule-Free" in (out / "README.md").read_text()


def test_dpo_main_trains_a_lora_adapter_at_x_against_the_unmoved_base(tmp_path):
    rows = [
        {"prompt": counting(s, 4), "chosen": " " + counting(s + 4, 3), "rejected": " " + counting(s + 4, 3, -1)}
        for s in range(40)
    ]
    metrics = dpo.main(tiny_argv(tmp_path, "dpo", write_jsonl(tmp_path / "dpo.jsonl", rows)))
    out = tmp_path / "out"
    assert_adapter_holds_x(out, out / "checkpoint-6")
    # before training the adapter is zero: the policy is the reference (the base with the adapter disabled)
    assert metrics["initial_eval_rewards/margins"] == 0.0 and metrics["initial_eval_rewards/accuracies"] == 0.0
    assert_trained(out, metrics, "eval_rewards/margins")
    assert metrics["eval_rewards/margins"] != 0.0  # the policy moved away from the reference
