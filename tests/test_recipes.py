"""Recipes: every YAML parses strictly, the embedded default trains under `accelerate launch`, fine-tuning,
resume, and bad input that fails in seconds with a message saying what to fix.

    pytest tests/test_recipes.py -q
"""

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sf_hf.metadata import read_metadata
from sf_hf.script_args import RecipeError, load_recipe, parse_script_args, run_args_changes
from sf_hf.scripts import finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]

# The recipes of sf_hf.scripts.pretrain/finetune; those of the TRL scripts (sft/, dpo/) are checked with their own
# parser in tests/test_trl_scripts.py. recipes/<model> are links into sf_hf/recipes (a glob without ** follows them).
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*/*.yaml") if p.parent.name not in ("sft", "dpo"))
DEFAULT_RECIPE = ROOT / "recipes" / "llama-small" / "pretrain" / "config_sf_adamw_refined.yaml"
ACCELERATE = Path(sys.executable).parent / "accelerate"

# The embedded default, shortened: the tiny preset, a 512-token BPE, 64-token blocks, 100 steps of 8 sequences.
SHORT = [
    "--model_preset",
    "llama-tiny",
    "--tokenizer_vocab_size",
    "512",
    "--tokenizer_train_docs",
    "300",
    "--block_size",
    "64",
    "--global_batch_size",
    "8",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--max_eval_blocks",
    "32",
    "--learning_rate",
    "1e-2",
    "--max_steps",
    "100",
    "--eval_steps",
    "25",
    "--save_steps",
    "50",
    "--logging_steps",
    "10",
    "--disable_tqdm",
    "true",
]


def run_main(module, argv, **kwargs):
    """Runs a recipe in this process; returns its metrics."""
    return module.main(argv, **kwargs)


def log_history(folder) -> list:
    return json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]


# ------------------------------------------------------------------ every recipe parses strictly


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_recipe_parses_strictly_and_states_its_arithmetic(recipe):
    config = load_recipe(str(recipe))  # unknown keys raise
    cpu_only = ["--bf16", "false"] if config.get("bf16") and not torch.cuda.is_available() else []
    model_args, data_args, args = parse_script_args(["--config", str(recipe), *cpu_only])
    assert args.optimizer_name == config["optimizer_name"]
    header = "".join(re.findall(r"^#.*\n", recipe.read_text(), flags=re.M))
    for part in ("Hardware:", "Batch:", "Launch", "Expected"):
        assert part in header, f"{recipe} header lacks {part!r}"
    tokens = data_args.global_batch_size * data_args.block_size
    assert f"{tokens:,} tokens per step" in header
    assert f"{args.max_steps:,} steps" in header
    assert str(recipe.relative_to(ROOT)) in header or recipe == DEFAULT_RECIPE or "finetune" in recipe.parts


def test_unknown_key_in_a_recipe_is_an_error_naming_the_closest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_RECIPE.read_text() + "learning_rat: 1.0e-3\n")
    with pytest.raises(RecipeError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_script_args(["--config", str(bad)])
    with pytest.raises(RecipeError, match=r"'--warmup_step' \(did you mean 'warmup_steps'\?\)"):
        parse_script_args(["--config", str(DEFAULT_RECIPE), "--warmup_step", "3"])


def test_no_argument_default_is_the_llama_small_recipe():
    assert Path(pretrain.DEFAULT_RECIPE) == DEFAULT_RECIPE.resolve()  # the package's file, linked from recipes/
    default = parse_script_args([], default_config=pretrain.DEFAULT_RECIPE)
    explicit = parse_script_args(["--config", str(DEFAULT_RECIPE)])
    assert default[0] == explicit[0] and default[1] == explicit[1]
    assert default[2].to_dict() == explicit[2].to_dict()
    model_args, data_args, args = default
    assert (model_args.model_preset, model_args.tokenizer_name_or_path, data_args.dataset_name) == (
        "llama-small",
        "bpe",
        "embedded",
    )
    assert args.optimizer_name == "sf_adamw_refined" and args.report_to == ["tensorboard"]
    # CLI overrides the recipe
    _, data_args, args = parse_script_args(["--max_steps", "7", "--block_size", "32"], default_config=DEFAULT_RECIPE)
    assert (args.max_steps, data_args.block_size) == (7, 32)


def test_paper_recipes_hold_the_paper_settings():
    def parse(name):
        return parse_script_args(
            ["--config", str(ROOT / f"recipes/llama-124m/pretrain/config_{name}.yaml"), "--bf16", "false"]
        )

    for name in ("sf_adamw_refined", "sf_adamw", "adamw_cosine", "adamw_wsd", "adamw_ema"):
        model_args, data_args, args = parse(name)
        assert (model_args.model_preset, model_args.tokenizer_name_or_path) == ("llama-124m", "gpt2")
        assert (data_args.dataset_name, data_args.block_size, data_args.global_batch_size) == (
            "DKYoon/SlimPajama-6B",
            512,
            1024,
        )
        assert (args.max_steps, args.weight_decay, args.weight_decay_params, args.warmup_steps) == (
            5000,
            0.1,
            "linear",
            0.05,
        )
        if name.startswith("sf"):
            assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.max_grad_norm) == (2e-3, 0.95, 0.99, 0)
        else:
            assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.max_grad_norm) == (1e-3, 0.9, 0.95, 1)
    assert parse("sf_adamw_refined")[2].decoupling_c == 200
    assert parse("adamw_ema")[2].ema_decay == 0.99 and parse("adamw_cosine")[2].cosine_min_lr_ratio == 0.1
    _, data_args, args = parse("sf_adamw_refined_2m")
    assert data_args.global_batch_size * data_args.block_size == 2 * 1024 * 1024 and args.max_steps == 2500
    assert (args.adam_beta1, args.adam_beta2) == (0.98, 0.99) and 200 <= args.decoupling_c <= 500


# ------------------------------------------------------------------ the embedded default, shortened, under accelerate


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One `accelerate launch recipes/pretrain.py` run of the shortened embedded default (tiny preset, 100 steps)."""
    out = tmp_path_factory.mktemp("pretrain") / "out"
    cmd = [
        str(ACCELERATE),
        "launch",
        "--num_processes",
        "1",
        "--cpu",
        "--num_cpu_threads_per_process",
        "1",
        str(ROOT / "recipes" / "pretrain.py"),
        *SHORT,
        "--output_dir",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_embedded_default_trains_and_saves_x_checkpoints_and_a_loadable_model(pretrained):
    out, stdout = pretrained
    for number in (
        r"tokens per step\s+512 = 8 per device x 1 accumulation x 1 process\(es\) x 64 tokens",
        r"steps\s+100 \(51,200 tokens",
        r"warmup steps\s+5 \(in the optimizer\)",
        r"averaging window\s+~4\.9 steps of y at the end",
        r"unigram entropy\s+\d\.\d+ nats/token",
    ):
        assert re.search(number, stdout), number
    assert "validation loss" in stdout and "perplexity" in stdout and str(out) in stdout

    history = log_history(out)
    train = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert train[-1] < train[0] - 0.5 and evals[-1] < evals[0]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_loss"] < results["unigram_entropy"] < math.log(512)
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))

    for folder in (out / "checkpoint-50", out / "checkpoint-100", out):
        assert read_metadata(folder)["weights"] == "x"
        assert (folder / "tokenizer.json").is_file()
    assert read_metadata(out / "checkpoint-100")["global_step"] == 100
    final = load_file(out / "model.safetensors")
    last = load_file(out / "checkpoint-100" / "model.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert list((out / "runs").rglob("events.out.tfevents.*"))

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("In the beginning God created the heaven and the earth.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() < math.log(512)

    run_args = json.loads((out / "run_args.json").read_text())
    assert set(run_args) == {"data", "model"}
    assert run_args["data"]["dataset_name"] == "embedded" and run_args["data"]["block_size"] == 64
    assert run_args["model"]["model_preset"] == "llama-tiny"
    assert "token" not in {k for section in run_args.values() for k in section}


def test_rerunning_resumes_from_the_last_checkpoint_and_resume_from_checkpoint_picks_one(pretrained, tmp_path):
    out, _ = pretrained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    run_main(pretrain, [*SHORT, "--max_steps", "110", "--output_dir", str(resumed)])  # the same command, more steps
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 110
    steps = [h["step"] for h in log_history(resumed) if "loss" in h]
    assert steps == [1, *range(10, 111, 10)]  # the first run's logs up to 100, then 110 only

    picked = tmp_path / "picked"
    run_main(
        pretrain,
        [
            *SHORT,
            "--max_steps",
            "60",
            "--output_dir",
            str(picked),
            "--resume_from_checkpoint",
            str(out / "checkpoint-50"),
        ],
    )
    assert [h["step"] for h in log_history(picked) if "loss" in h] == [1, 10, 20, 30, 40, 50, 60]
    assert read_metadata(picked)["global_step"] == 60


def test_resuming_with_other_data_settings_is_reported_setting_by_setting():
    before = {"data": {"dataset_name": "embedded", "block_size": 64, "splits": ["train"]}, "model": {"preset": "a"}}
    same = {"data": {"dataset_name": "embedded", "block_size": 64, "splits": ("train",)}, "model": {"preset": "a"}}
    assert run_args_changes(before, same) == []  # a tuple is written as a list
    other = {
        "data": {"dataset_name": "corpus.jsonl", "block_size": 64, "splits": ("train",), "added_later": 1},
        "model": {"preset": "b"},
    }
    assert run_args_changes(before, other) == [
        "data.dataset_name: 'embedded' -> 'corpus.jsonl'",
        "model.preset: 'a' -> 'b'",
    ]


# ------------------------------------------------------------------ fine-tuning a pretrained output on new text


def new_text_corpus(path: Path) -> Path:
    """English text unlike the Bible, offline: the docstrings of Python's standard library."""
    import argparse
    import collections
    import functools
    import itertools
    import json as json_module
    import logging
    import pathlib
    import subprocess as subprocess_module
    import textwrap

    docs = []
    for module in (
        argparse,
        collections,
        functools,
        itertools,
        json_module,
        logging,
        pathlib,
        subprocess_module,
        textwrap,
        re,
        os,
    ):
        for _, member in [("", module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(member) if callable(member) or inspect.ismodule(member) else None
            if doc and len(doc) > 200 and doc not in docs:
                docs.append(doc)
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    return path


def test_finetuning_a_pretrained_output_lowers_validation_loss_on_new_text(pretrained, tmp_path):
    out, _ = pretrained
    corpus = new_text_corpus(tmp_path / "python_docs.jsonl")
    target = tmp_path / "finetuned"
    metrics = run_main(
        finetune,
        [
            "--model_name_or_path",
            str(out),
            "--dataset_name",
            str(corpus),
            "--output_dir",
            str(target),
            "--block_size",
            "64",
            "--global_batch_size",
            "8",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "20",
            "--eval_steps",
            "10",
            "--save_steps",
            "20",
            "--max_eval_blocks",
            "32",
            "--learning_rate",
            "3e-3",
            "--logging_steps",
            "5",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ],
    )
    assert metrics["eval_loss"] < metrics["initial_eval_loss"] - 0.3, metrics
    assert read_metadata(target)["weights"] == "x" and read_metadata(target / "checkpoint-20")["weights"] == "x"
    run_args = json.loads((target / "run_args.json").read_text())
    assert run_args["model"]["model_name_or_path"] == str(out) and run_args["data"]["dataset_name"] == str(corpus)
    AutoModelForCausalLM.from_pretrained(target)
    assert AutoTokenizer.from_pretrained(target).get_vocab() == AutoTokenizer.from_pretrained(out).get_vocab()


# ------------------------------------------------------------------ bad input fails in seconds, before training


def fails_fast(module, argv, message, tmp_path, **kwargs):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        module.main([*argv, "--output_dir", str(tmp_path / "never")], **kwargs)
    assert re.search(message, str(error.value)), str(error.value)
    assert time.perf_counter() - start < 30
    assert not list((tmp_path / "never").glob("checkpoint-*"))
    return str(error.value)


def test_bad_input_fails_fast_with_what_to_fix(tmp_path, capsys):
    wrong_column = tmp_path / "corpus.jsonl"
    wrong_column.write_text("".join(json.dumps({"content": f"line {i} of some text"}) + "\n" for i in range(50)))
    cases = [
        (["--dataset_name", str(tmp_path / "missing.jsonl")], r"missing\.jsonl.* does not exist"),
        (["--dataset_name", "no-such-org/no-such-dataset"], r"Could not load dataset 'no-such-org/no-such-dataset'"),
        (["--dataset_name", str(wrong_column)], r"Text column 'text' not found.*\['content'\].*text_column"),
        (["--max_position_embeddings", "128", "--block_size", "256"], r"block_size=256 is longer .* block_size <= 128"),
        (
            ["--global_batch_size", "10", "--per_device_train_batch_size", "4"],
            r"global_batch_size=10 is not a multiple of .* = 4",
        ),
        (["--model_preset", "llama-huge"], r"Unknown model_preset 'llama-huge'; known: llama-tiny"),
        (["--lerning_rate", "1e-3"], r"did you mean 'learning_rate'"),
    ]
    for argv, message in cases:
        fails_fast(pretrain, argv, message, tmp_path)
    fails_fast(  # the field's choices (metadata): argparse refuses it; one line lists them, no usage dump
        pretrain,
        ["--optimizer_name", "adam"],
        r": error: the command line: optimizer_name: 'adam' is not allowed; expected one of "
        r"sf_adamw_refined, ",
        tmp_path,
    )
    fails_fast(
        finetune,
        ["--dataset_name", str(wrong_column)],
        r"needs a model: pass --model_name_or_path",
        tmp_path,
        default_config=None,
    )


def test_block_size_beyond_a_pretrained_models_context_fails_fast(pretrained, tmp_path):
    out, _ = pretrained
    fails_fast(
        finetune,
        ["--model_name_or_path", str(out), "--dataset_name", "embedded", "--block_size", "128"],
        r"block_size=128 is longer than the model's context: .*max_position_embeddings=64.*block_size <= 64",
        tmp_path,
    )


def test_unknown_yaml_key_fails_in_seconds_from_the_command_line(tmp_path):
    """From the shell: the message, no traceback, and no more time than `--help` (the imports) plus a few seconds."""
    bad = tmp_path / "typo.yaml"
    bad.write_text(DEFAULT_RECIPE.read_text().replace("max_steps:", "max_stesp:"))

    def run(*args):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "recipes" / "pretrain.py"), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        return proc, time.perf_counter() - start

    proc, seconds = run("--config", str(bad))
    assert proc.returncode != 0
    assert "pretrain.py: error: Unknown key(s) in" in proc.stderr and "did you mean 'max_steps'" in proc.stderr
    assert "Traceback" not in proc.stderr
    help_proc, help_seconds = run("--help")  # the same imports, then nothing
    assert help_proc.returncode == 0 and "--decoupling_c" in help_proc.stdout
    assert seconds < help_seconds + 15, (seconds, help_seconds)
