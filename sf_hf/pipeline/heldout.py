"""The held-out set of a run, rebuilt through the training data pipeline (`load_text_dataset` + `pack_into_blocks`).

    spec = DataSpec.from_run("runs/llama-small")                  # reads runs/llama-small/run_args.json
    blocks = validation_blocks(spec, AutoTokenizer.from_pretrained("runs/llama-small/checkpoint-500"))

`run_args.json` (written by the pretraining recipe) holds `{"data": {"dataset_name": ..., "dataset_config": ...,
"text_column": ..., "block_size": ..., "validation_split": ..., ...}, "model": {...}}`. Every `data` entry that
is an argument of `sf_hf.data.load_text_dataset` (`validation_split`, `validation_fraction`, `seed`,
`streaming`...) is passed on, so the validation split is the one training held out.
"""

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..data import load_text_dataset, pack_into_blocks
from ..publishing.records import RUN_ARGS_NAME, read_run_args
from .errors import PipelineError

DATA_FLAGS = "--dataset-name NAME --block-size N"
_LOAD_ARGUMENTS = set(inspect.signature(load_text_dataset).parameters) - {"name_or_path", "config_name", "text_column"}


class UnknownDataError(PipelineError):
    """The run does not say which data it was trained on (no `run_args.json`, e.g. a user's own training script),
    and no override names it."""


@dataclass
class DataSpec:
    """Which held-out set to evaluate on and how to pack it.

    Attributes:
        dataset_name (`str`): `"embedded"`, a local file or folder, or a Hub dataset id.
        dataset_config (`str`, *optional*): the dataset configuration.
        text_column (`str`): the column with the raw text.
        block_size (`int`): tokens per packed block.
        load_options (`dict`): further `load_text_dataset` arguments (`validation_split`, `seed`, ...).
    """

    dataset_name: str
    block_size: int
    dataset_config: str | None = None
    text_column: str = "text"
    load_options: dict = field(default_factory=dict)

    @classmethod
    def from_run(
        cls,
        run_dir: os.PathLike,
        dataset: str | None = None,
        dataset_config: str | None = None,
        text_column: str | None = None,
        block_size: int | None = None,
    ) -> "DataSpec":
        """The run's data settings from `run_args.json`, with overrides.

        A `dataset` other than the run's drops the run's `dataset_config` and loading options, which belong to
        the run's dataset.

        Raises:
            UnknownDataError: if neither `run_args.json` nor the overrides name a dataset and a block size.
        """
        data = read_run_args(run_dir).get("data", {})
        same_dataset = dataset is None or dataset == data.get("dataset_name")
        spec = cls(
            dataset_name=dataset or data.get("dataset_name"),
            block_size=block_size or data.get("block_size"),
            dataset_config=dataset_config or (data.get("dataset_config") if same_dataset else None),
            text_column=text_column or data.get("text_column") or "text",
            load_options={k: v for k, v in data.items() if k in _LOAD_ARGUMENTS} if same_dataset else {},
        )
        if not spec.dataset_name or not spec.block_size:
            raise UnknownDataError(
                f"{Path(run_dir) / RUN_ARGS_NAME} is missing or does not give data.dataset_name and data.block_size: "
                f"pass {DATA_FLAGS}."
            )
        return spec


def validation_blocks(spec: DataSpec, tokenizer: PreTrainedTokenizerBase):
    """The validation split of `spec`, packed into `block_size`-token blocks with `tokenizer`.

    Returns:
        `datasets.Dataset` or `datasets.IterableDataset` (when the run streamed its data): columns `input_ids`
        and `labels`.

    Raises:
        PipelineError: if the data cannot be loaded or packed (the message says why).
    """
    try:
        splits = load_text_dataset(
            spec.dataset_name, config_name=spec.dataset_config, text_column=spec.text_column, **spec.load_options
        )
        return pack_into_blocks(splits["validation"], tokenizer, spec.block_size, text_column=spec.text_column)
    except (ValueError, ImportError) as err:
        raise PipelineError(f"Cannot build the validation set of {spec.dataset_name!r}: {err}") from err
