"""Every user error is one line that names where it came from (the recipe file or the command line, the key, the
value, what is allowed; the damaged file of a checkpoint), exits non-zero and writes nothing; `-v` keeps the
traceback. Accelerate is launched with the values it asks for, so it prints no warning of its own.

    pytest tests/test_user_errors.py -q
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sf_hf import ScheduleFreeTrainer
from sf_hf.checkpoints import CheckpointError
from sf_hf.cli import main, pass_launch_defaults
from sf_hf.scripts import pretrain

from .trainer_utils import TokenDataset, config, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def sf_hf(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sf_hf.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)),
    )


def test_a_recipes_bad_value_is_one_line_naming_the_file_key_value_and_what_is_allowed(tmp_path):
    recipe = tmp_path / "fast.yaml"
    recipe.write_text(f"learning_rate: fast\noutput_dir: {tmp_path / 'out'}\n")
    proc = sf_hf("pretrain", "--config", str(recipe), cwd=tmp_path)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0
    assert lines == [f"pretrain.py: error: {recipe}: learning_rate: 'fast' is not allowed; expected a number."]
    assert not (tmp_path / "out").exists()  # accelerate warned nothing ("values were not passed") and nothing written


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--optimizer_name", "sgd"],
            "the command line: optimizer_name: 'sgd' is not allowed; expected one of sf_adamw_refined, sf_adamw, "
            "sf_plus, adamw_cosine, adamw_wsd, adamw_ema.",
        ),
        (
            ["--bf16=maybe"],
            "the command line: argument --bf16: Truthy value expected: got maybe but expected one of "
            "yes/no, true/false, t/f, y/n, 1/0 (case insensitive).",
        ),
        (["--max_steps"], "the command line: argument --max_steps/--max-steps: expected one argument"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_command_line(argv, message, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        pretrain.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert str(exit_.value).endswith(f": error: {message}") and "\n" not in str(exit_.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "line, message",
    [
        ("optimizer_name: sgd", "Unknown optimizer_name 'sgd'. Known optimizers: sf_adamw_refined"),
        ("bf16: maybe", "bf16: 'maybe' is not allowed; expected true or false."),
        ("max_steps: 1.5", "max_steps: 1.5 is not allowed; expected an integer."),
    ],
)
def test_a_recipe_value_rejected_by_argparse_or_its_config_names_the_file(line, message, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"{line}\noutput_dir: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit) as exit_:
        pretrain.main(["--config", str(recipe)])
    assert f": error: {recipe}: {message}" in str(exit_.value)
    assert "\n" not in str(exit_.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_resume_from_a_named_checkpoint_with_a_truncated_optimizer_is_one_line(tmp_path, model_dtype):
    run_dir = tmp_path / "run"
    trainer = ScheduleFreeTrainer(
        model=tiny_model().to(model_dtype),
        args=config(run_dir, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=TokenDataset(16),
    )
    trainer.train()
    optimizer = run_dir / "checkpoint-2" / "optimizer.pt"
    size = optimizer.stat().st_size
    with open(optimizer, "r+b") as f:
        f.truncate(size // 2)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    argv = ["--output_dir", str(run_dir), "--resume_from_checkpoint", str(run_dir / "checkpoint-2")]
    with pytest.raises(SystemExit) as exit_:
        pretrain.main(argv)
    message = str(exit_.value)
    assert "\n" not in message and message.endswith(
        f": error: Can't resume from {run_dir / 'checkpoint-2'}: {optimizer}: truncated: {size // 2} bytes, "
        f"checkpoint_manifest.json says {size}"
    )
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # nothing written

    # the trainer's own check (a user's script calling train(resume_from_checkpoint=...)) says the same
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: truncated"):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))


def test_pipeline_errors_are_one_line_and_verbose_keeps_the_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == f"sf-hf evaluate: error: No run here: {tmp_path / 'missing'} does not exist.\n"
    for flag in ("-v", "--debug"):
        with pytest.raises(CheckpointError, match="No run here"):
            main(["evaluate", str(tmp_path / "missing"), flag])


def test_accelerate_gets_the_values_it_would_warn_about_unless_a_config_gives_them(tmp_path, monkeypatch):
    import accelerate.commands.config as accelerate_config
    from accelerate.commands.launch import launch_command_parser

    monkeypatch.setattr(accelerate_config, "default_config_file", str(tmp_path / "none.yaml"))
    launch = pass_launch_defaults(launch_command_parser().parse_args(["-m", "sf_hf.scripts.pretrain"]))
    expected = dict(num_processes=max(torch.cuda.device_count(), 1), num_machines=1)
    assert {k: getattr(launch, k) for k in expected} == expected
    assert (launch.mixed_precision, launch.dynamo_backend) == ("no", "no")
    launch = pass_launch_defaults(launch_command_parser().parse_args(["--num_processes", "2", "-m", "m"]))
    assert launch.num_processes == 2 and launch.multi_gpu == (torch.cuda.device_count() > 1)
    ddp = str(ROOT / "accelerate_configs" / "ddp.yaml")
    launch = pass_launch_defaults(launch_command_parser().parse_args(["--config_file", ddp, "-m", "m"]))
    assert (launch.num_machines, launch.mixed_precision, launch.dynamo_backend) == (None, None, None)
