"""The files sf_hf ships inside its package (`package_file`), and its YAML recipes and accelerate configs by name.

    sf_hf/recipes/<model>/<task>/config_<name>.yaml   the recipe "<model>/<task>/<name>": llama-small/pretrain/sf_plus
    sf_hf/accelerate_configs/<name>.yaml              the accelerate config "<name>": ddp, deepspeed_zero3 (or zero3)

    sf-hf recipes                                     # lists both, with each file's first line
    sf-hf pretrain --config llama-124m/pretrain/sf_adamw --accelerate-config ddp --num-processes 8

A recipe or accelerate config can always be given as a path instead (a copy to edit). In a clone of the repository,
`recipes/<model>` and `accelerate_configs` are links to these folders: one copy, read and launched from either place.
An installed sf_hf is a folder of files (wheels are unpacked), so each location is a `pathlib.Path` that
accelerate's launcher and the YAML reader open directly.
"""

from importlib import resources
from pathlib import Path


def package_file(*parts: str) -> Path:
    """The path of a file or folder shipped in the sf_hf package, found with `importlib.resources`:
    `package_file("templates", "model_card.md")`."""
    return Path(str(resources.files("sf_hf").joinpath(*parts)))


RECIPES = package_file("recipes")
"""The bundled recipes' folder."""
ACCELERATE_CONFIGS = package_file("accelerate_configs")
"""The bundled accelerate configs' folder."""


class UnknownNameError(ValueError):
    """A recipe or accelerate config that is neither a file nor a bundled name; the message lists the names."""


def recipe_names() -> dict[str, Path]:
    """`{name: path}` of every bundled recipe, sorted: `"llama-small/pretrain/sf_adamw_refined"` for
    `recipes/llama-small/pretrain/config_sf_adamw_refined.yaml`."""
    paths = sorted(RECIPES.glob("*/*/config_*.yaml"))
    return {f"{p.parent.parent.name}/{p.parent.name}/{p.stem.removeprefix('config_')}": p for p in paths}


def accelerate_config_names() -> dict[str, Path]:
    """`{name: path}` of every bundled accelerate config, sorted: `"ddp"`, `"deepspeed_zero3"`, ..."""
    return {p.stem: p for p in sorted(ACCELERATE_CONFIGS.glob("*.yaml"))}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """The recipe file `name_or_path` means: an existing file, else a bundled recipe's name (also spelled as its
    path inside `recipes/`: `llama-small/pretrain/config_sf_adamw_refined.yaml`).

    Raises:
        UnknownNameError: neither; the message lists the bundled names.
    """
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    model_task, _, name = str(name_or_path).removesuffix(".yaml").rpartition("/")
    recipe = recipe_names().get(f"{model_task}/{name.removeprefix('config_')}")
    if recipe is None:
        raise UnknownNameError(
            f"Recipe {str(name_or_path)!r} is neither a file nor a recipe of sf_hf; the recipes: "
            f"{', '.join(recipe_names())} (sf-hf recipes describes them)."
        )
    return recipe


def resolve_accelerate_config(name_or_path: str | Path) -> Path:
    """The accelerate config file `name_or_path` means: an existing file, else a bundled config's name (`ddp`,
    `deepspeed_zero3`, or without its `deepspeed_` prefix: `zero3`).

    Raises:
        UnknownNameError: neither; the message lists the bundled names.
    """
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    known = accelerate_config_names()
    config = known.get(str(name_or_path)) or known.get(f"deepspeed_{name_or_path}")
    if config is None:
        raise UnknownNameError(
            f"Accelerate config {str(name_or_path)!r} is neither a file nor a config of sf_hf; the configs: "
            f"{', '.join(known)} (sf-hf recipes describes them)."
        )
    return config


def first_comment(path: Path) -> str:
    """The first line of a bundled YAML file, without its `# `: what the file is for."""
    return path.read_text(encoding="utf-8").partition("\n")[0].removeprefix("#").strip()
