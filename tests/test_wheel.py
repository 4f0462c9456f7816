"""The built wheel, installed as a user installs it: `pip install "sf_hf-*.whl[eval]"` into a fresh venv, then
`sf-hf` run from a folder outside the repository (the default recipe, a named recipe under `--accelerate-config ddp`,
and `sf-hf evaluate --tasks` with the bundled tasks). Only the package's own files are there to be found.

    make test-wheel                                      # builds the wheel (python -m build) and runs this file
    SF_HF_TEST_WHEEL=1 pytest tests/test_wheel.py -q     # the same; SF_HF_WHEEL=dist/...whl uses a built wheel

`make test` skips it. Measured on 2026-12-06 on the 2-core build machine while other jobs kept its load average at
9-10: 12 min in all, of which 7 min 11 s the fresh venv's install (the torch wheel, then the sf_hf wheel's
dependencies from PyPI), 2 min 53 s the default recipe (4 steps) and `sf-hf evaluate --tasks sf_kjv`, 1 min 21 s the
ddp run, 34 s `sf-hf recipes` and the import check.
"""

import csv
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not os.environ.get("SF_HF_TEST_WHEEL"), reason="installs the wheel into a fresh venv: make test-wheel runs it"
)
# The torch the repository's venv has (the CPU build `make install` puts there), installed first so that the wheel's
# `torch>=2.4` is already met; TORCH_SPEC (Makefile) overrides it.
TORCH_SPEC = os.environ.get("TORCH_SPEC") or f"torch=={torch.__version__.split('+')[0]}"


def run(command, cwd, env, timeout=900):
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`(venv, env, workdir)`: the wheel installed with its `eval` extra in a new venv; a work folder outside the
    repository and an environment that does not point back into it."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = os.environ.get("SF_HF_WHEEL")
    if not wheel:
        run([sys.executable, "-m", "build", "--wheel", "--outdir", str(base / "dist"), str(ROOT)], base, None)
        (wheel,) = map(str, (base / "dist").glob("sf_hf-*.whl"))
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], base, None)  # its base interpreter: nothing of this venv
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, TORCH_SPEC], base, None)
    run([*pip, f"{Path(wheel).resolve()}[eval]"], base, None)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    workdir = base / "work"
    workdir.mkdir()
    return venv, env, workdir


def test_sf_hf_is_imported_from_the_installed_wheel_and_lists_its_bundled_files(installed):
    venv, env, workdir = installed
    site = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    location = run([str(venv / "bin" / "python"), "-c", "import sf_hf; print(sf_hf.__file__)"], workdir, env)
    assert Path(location.strip()) == Path(site) / "sf_hf" / "__init__.py"
    listing = run(["sf-hf", "recipes"], workdir, env)
    assert f"Recipes in {Path(site) / 'sf_hf' / 'recipes'}" in listing
    assert "llama-124m/pretrain/sf_adamw_refined" in listing and "  deepspeed_zero3  " in listing


def test_the_default_recipe_trains_then_evaluates_the_bundled_tasks(installed):
    venv, env, workdir = installed
    shorter = ["--max_steps", "4", "--save_steps", "2", "--eval_steps", "4", "--logging_steps", "2"]
    run(["sf-hf", "pretrain", "--num-processes", "1", *shorter], workdir, env)  # no --config: the default recipe
    out = workdir / "outputs" / "llama-small-sf_adamw_refined"  # the recipe's output_dir, under the work folder
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-4" / "model.safetensors").is_file()
    run(["sf-hf", "evaluate", str(out), "--only", "final", "--tasks", "sf_kjv", "--limit", "8"], workdir, env)
    (row,) = [r for r in csv.DictReader((out / "eval_summary.csv").open()) if r["checkpoint"] == "final"]
    for metric in ("sf_kjv_next_verse/acc", "sf_kjv_cloze/exact_match,first_word"):  # lm-eval's metric,filter
        assert 0.0 <= float(row[metric]) <= 1.0, row


def test_a_named_recipe_runs_under_a_named_accelerate_config(installed):
    venv, env, workdir = installed
    tiny = ["--model_preset", "llama-tiny", "--tokenizer_vocab_size", "512", "--block_size", "64"]
    tiny += ["--max_steps", "2", "--save_strategy", "no", "--eval_steps", "2", "--output_dir", "ddp_run"]
    command = ["sf-hf", "pretrain", "--config", "llama-small/pretrain/sf_plus", "--accelerate-config", "ddp"]
    run([*command, "--num-processes", "1", *tiny], workdir, env)
    assert (workdir / "ddp_run" / "model.safetensors").is_file()
