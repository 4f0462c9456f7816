"""The training commands: `sf-hf pretrain` launches `sf_hf.scripts.pretrain` through accelerate, recipes pick
callbacks by name (`sf_hf.recipe_callbacks`), and the run logs its measured speed and ETA (`SpeedCallback`).

    pytest tests/test_training_commands.py -q
"""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from sf_hf.diagnostics import RiverDiagnosticsCallback
from sf_hf.pipeline import CheckpointPipelineCallback
from sf_hf.recipe_callbacks import CALLBACKS, get_callbacks
from sf_hf.script_args import RecipeError, parse_script_args
from sf_hf.scripts import SCRIPTS, reporting

ROOT = Path(__file__).resolve().parents[1]

TINY_RECIPE = """
model_preset: llama-tiny
tokenizer_name_or_path: bpe
tokenizer_vocab_size: 300
block_size: 32
global_batch_size: 4
per_device_train_batch_size: 4
per_device_eval_batch_size: 8
max_eval_blocks: 8
optimizer_name: sf_adamw_refined
learning_rate: 1.0e-2
max_grad_norm: 0.0
sf_fused: false
max_steps: 14
eval_strategy: steps
eval_steps: 12
save_strategy: steps
save_steps: 14
logging_steps: 7
report_to: none
disable_tqdm: true
callbacks: [river_diagnostics]
"""


def test_sf_hf_pretrain_launches_the_package_script_through_accelerate_with_the_recipe_and_passed_flags(tmp_path):
    corpus = tmp_path / "corpus.jsonl"  # a small corpus: the embedded one takes ~15 s to tokenize and pack
    corpus.write_text(
        "".join(
            json.dumps({"text": f"Verse {i}: and the {w} saw that it was {w}, {i % 7} times."}) + "\n"
            for i in range(300)
            for w in ("light", "earth", "water")[i % 3 : i % 3 + 1]
        )
    )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE + f"dataset_name: {corpus}\n")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "sf_hf.cli",
        "pretrain",
        "--config",
        str(recipe),
        "--num-processes",
        "1",
        "--output_dir",
        str(out),
        "--max_steps",
        "13",
    ]  # a script flag, passed through, overrides the recipe
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # quiet: accelerate got the values it asks for, and no bar at each of the saves
    assert "were not passed to `accelerate launch`" not in proc.stderr and "Writing model shards" not in proc.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 13 and (out / "model.safetensors").is_file()
    evals = [r for r in state["log_history"] if "eval_loss" in r]
    assert evals and all("eval_river_loss_y" in r for r in evals)  # the recipe's callbacks: [river_diagnostics]
    assert re.search(
        r"sf_hf\.recipes: [0-9,]+ tokens/s \([0-9.]+ s/step over steps 2-11\), ETA \d\d:\d\d for the "
        r"2 steps left of 13",
        proc.stdout,
    ), proc.stdout[-3000:]


def test_every_script_command_is_registered_and_launches_its_module():
    from sf_hf import cli

    for name, module in SCRIPTS.items():
        assert cli.COMMANDS[name].passes_through
        args, unknown = cli.build_parser().parse_known_args(
            [name, "--config", "llama-small/pretrain/sf_plus", "--accelerate-config", "zero3", "--max_steps", "5"]
            + ["--callbacks", "a", "b"]
        )
        args.passed_through = unknown
        assert cli.accelerate_launch_args(args, SCRIPTS[name]) == [
            "--config_file",
            str(ROOT / "sf_hf" / "accelerate_configs" / "deepspeed_zero3.yaml"),
            "-m",
            module,
            "--config",
            str(ROOT / "sf_hf" / "recipes" / "llama-small" / "pretrain" / "config_sf_plus.yaml"),
            "--max_steps",
            "5",
            "--callbacks",
            "a",
            "b",
        ]
    for flag, known in (("--accelerate-config", "ddp, deepspeed_zero1,"), ("--config", "llama-124m/pretrain/adamw")):
        args, args.passed_through = cli.build_parser().parse_args(["pretrain", flag, "zero9"]), []
        with pytest.raises(cli.UnknownNameError, match=f"'zero9' is neither a file nor a .* of sf_hf; the .*: {known}"):
            cli.accelerate_launch_args(args, "m")


def test_callbacks_by_name_resolve_to_callbacks_built_from_the_recipe_and_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(
        RecipeError,
        match=r"Unknown callback\(s\) 'river'; known: river_diagnostics, "
        r"checkpoint_pipeline\.",
    ):
        parse_script_args(["--callbacks", "river", "--output_dir", str(tmp_path)])
    model_args, data_args, training_args, script_args = parse_script_args(
        [
            "--callbacks",
            "checkpoint_pipeline",
            "river_diagnostics",
            "--block_size",
            "64",
            "--seed",
            "3",
            "--output_dir",
            str(tmp_path),
        ],
        with_script_args=True,
    )
    assert script_args.callbacks == ["checkpoint_pipeline", "river_diagnostics"]
    pipeline, river = get_callbacks(script_args.callbacks, model_args, data_args, training_args)
    assert isinstance(pipeline, CheckpointPipelineCallback) and isinstance(river, RiverDiagnosticsCallback)
    assert (pipeline.data.dataset_name, pipeline.data.block_size, pipeline.repo_id) == ("embedded", 64, None)
    assert pipeline.data.load_options["seed"] == 3  # the held-out split the run itself evaluates on
    assert pipeline.data.load_options["validation_fraction"] == data_args.validation_fraction
    assert set(CALLBACKS) == {"river_diagnostics", "checkpoint_pipeline"}


def test_the_speed_and_eta_line_is_logged_once_from_training_steps_only(monkeypatch, caplog):
    clock = {"now": 0.0}
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: clock["now"])
    callback = reporting.SpeedCallback(tokens_per_step=1000, measure_steps=10)
    state, control = TrainerState(max_steps=200, is_world_process_zero=True), TrainerControl()
    callback.on_train_begin(None, state, control)
    with caplog.at_level(logging.INFO, logger="sf_hf.recipes"):
        for step in range(1, 40):
            clock["now"] += 5.0 if step == 1 else 0.5  # a slow first step, then 0.5 s per step
            state.global_step = step
            callback.on_step_end(None, state, control)
            if step == 5:  # an evaluation of 30 s: not a training step's time
                clock["now"] += 30.0
                callback.on_evaluate(None, state, control)
    lines = [r.getMessage() for r in caplog.records if "tokens/s" in r.getMessage()]
    assert lines == ["2,000 tokens/s (0.50 s/step over steps 7-16), ETA 01:32 for the 184 steps left of 200"]
