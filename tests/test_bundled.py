"""What sf_hf ships inside its package: the recipes and accelerate configs (one copy, linked from the repository's
recipes/ and accelerate_configs/), chosen by name or by path, and `sf-hf recipes`. The built wheel itself is
checked by tests/test_wheel.py.

    pytest tests/test_bundled.py -q
"""

import subprocess
import sys
from pathlib import Path

import pytest

from sf_hf import bundled, cli
from sf_hf.script_args import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sf_hf"


def test_the_repositorys_recipes_and_accelerate_configs_are_links_to_the_packages_one_copy():
    for link in ("recipes/llama-small", "recipes/llama-124m", "accelerate_configs"):
        assert (ROOT / link).is_symlink(), link
    assert (ROOT / "accelerate_configs").resolve() == PACKAGE / "accelerate_configs" == bundled.ACCELERATE_CONFIGS
    linked = sorted(p.resolve() for p in (ROOT / "recipes").glob("*/*/*.yaml"))
    assert linked == sorted((PACKAGE / "recipes").rglob("*.yaml")) and len(linked) == 14
    assert not [p for p in (ROOT / "recipes").iterdir() if p.suffix == ".yaml" or (p.is_dir() and not p.is_symlink())]


def test_recipes_are_named_by_model_task_and_optimizer_and_resolve_by_name_by_file_name_or_by_path(tmp_path):
    names = bundled.recipe_names()
    assert (
        len(names) == 14 and "llama-small/pretrain/sf_adamw_refined" in names and "llama-124m/pretrain/sf_plus" in names
    )
    target = PACKAGE / "recipes" / "llama-124m" / "pretrain" / "config_sf_adamw_2m.yaml"
    for spelling in (
        "llama-124m/pretrain/sf_adamw_2m",
        "llama-124m/pretrain/config_sf_adamw_2m",
        "llama-124m/pretrain/config_sf_adamw_2m.yaml",
        str(ROOT / "recipes" / "llama-124m" / "pretrain" / "config_sf_adamw_2m.yaml"),
    ):
        assert bundled.resolve_recipe(spelling).resolve() == target, spelling
    mine = tmp_path / "llama-124m" / "pretrain" / "config_sf_adamw_2m.yaml"  # a copy on disk wins over the name
    mine.parent.mkdir(parents=True)
    mine.write_text("max_steps: 3\n")
    assert bundled.resolve_recipe(mine) == mine and load_recipe(str(mine)) == {"max_steps": 3}
    assert load_recipe("llama-small/pretrain/sf_plus")["optimizer_name"] == "sf_plus"


def test_an_unknown_recipe_or_accelerate_config_is_one_line_listing_the_known_names():
    with pytest.raises(RecipeError) as err:
        load_recipe("llama-small/pretrain/sf_adam")
    message = str(err.value)
    assert message.startswith("Recipe 'llama-small/pretrain/sf_adam' is neither a file nor a recipe of sf_hf")
    assert "\n" not in message and all(name in message for name in bundled.recipe_names())
    with pytest.raises(bundled.UnknownNameError, match=r"^Accelerate config 'zero4' .*: ddp, deepspeed_zero1, "):
        bundled.resolve_accelerate_config("zero4")
    assert bundled.resolve_accelerate_config("zero2") == PACKAGE / "accelerate_configs" / "deepspeed_zero2.yaml"
    assert bundled.resolve_accelerate_config("fsdp2") == PACKAGE / "accelerate_configs" / "fsdp2.yaml"


def test_sf_hf_recipes_lists_every_name_with_its_first_line_and_prints_a_named_file(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "llama-small/pretrain/sf_adamw_refined    The embedded default: refined SF-AdamW" in out
    assert "  deepspeed_zero3  DeepSpeed ZeRO-3, for 1 node of 8 GPUs." in out
    assert len(out.splitlines()) == 2 + 14 + 5
    assert cli.main(["recipes", "ddp"]) == 0
    assert capsys.readouterr().out == f"{PACKAGE / 'accelerate_configs' / 'ddp.yaml'}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "sf_hf.cli", "recipes", "llama-small/dpo/sf_adamw"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        "sf-hf recipes: error: 'llama-small/dpo/sf_adamw' is neither a recipe nor an accelerate config of sf_hf; "
        "`sf-hf recipes` lists them.\n"
    )
