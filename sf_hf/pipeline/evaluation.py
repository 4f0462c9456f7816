"""Validation loss and perplexity, and lm-evaluation-harness tasks, of every checkpoint of a run, always at x.

    sf-hf evaluate runs/llama-small --metric next_token_accuracy
    sf-hf evaluate runs/llama-small --tasks sf_kjv --limit 100          # + benchmark tasks (`sf_hf[eval]`)

    from sf_hf.pipeline import evaluate_run
    evaluation = evaluate_run("runs/llama-small", metrics=["next_token_accuracy"])
    evaluation.results, evaluation.failures      # one record per checkpoint / (name, reason) per skipped one

Each usable checkpoint gets an `eval_results.json` in its folder; the run gets `eval_summary.csv`,
`eval_summary.md`, `eval_loss.png` (validation loss against tokens seen) and one `eval_<task>.png` per task. A
checkpoint that is incomplete, corrupt, or holds y that cannot be converted is reported in `failures` and the
summary, and never evaluated; a task that fails on a checkpoint is reported in its record (`task_failures`) and
the summary, and the other tasks and checkpoints are still evaluated. A run that does not say its data (no
`run_args.json`) is evaluated on the tasks alone, with a note on how to add the loss; folders holding the same
weights (the final model and the last checkpoint) are evaluated once.
"""

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..bundled import package_file
from ..publishing.records import EVAL_RESULTS_NAME, read_eval_results
from ..publishing.run_inventory import CheckpointInfo, find_checkpoints, published_files, weights_digest
from .checkpoint_to_x import adapter_base_error, load_model_at_x
from .errors import CheckpointError, PipelineError
from .harness import TaskSuite, evaluate_tasks
from .heldout import DATA_FLAGS, RUN_ARGS_NAME, DataSpec, UnknownDataError, validation_blocks
from .report import write_summary

logger = logging.getLogger(__name__)

BUNDLED_METRICS = {"next_token_accuracy": package_file("pipeline", "next_token_accuracy.py")}
"""Metric modules shipped with sf_hf, by name (the Hub's `evaluate` metric scripts are not reachable offline)."""
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "chat_template")


def load_metric(name_or_path: str):
    """An `evaluate` module from a bundled name (`BUNDLED_METRICS`) or a local module (a `.py` file or a folder).

    The module gets `predictions` (argmax next-token ids) and `references` (the true next tokens).

    Raises:
        PipelineError: if it is neither; the message lists the bundled ones.
    """
    import evaluate

    path = BUNDLED_METRICS.get(name_or_path, Path(name_or_path))
    if not path.exists():
        raise PipelineError(
            f"Metric {name_or_path!r} is neither bundled ({', '.join(BUNDLED_METRICS)}) nor a local evaluate module "
            "(a .py file or a folder with one); the Hub's metric scripts are not reachable offline."
        )
    return evaluate.load(str(path))


def _batches(blocks: Iterable[dict], batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    rows = []
    for row in blocks:
        rows.append(row)
        if len(rows) == batch_size:
            yield torch.tensor([r["input_ids"] for r in rows]), torch.tensor([r["labels"] for r in rows])
            rows = []
    if rows:
        yield torch.tensor([r["input_ids"] for r in rows]), torch.tensor([r["labels"] for r in rows])


@torch.no_grad()
def evaluate_model(
    model: PreTrainedModel,
    blocks: Iterable[dict],
    batch_size: int = 8,
    metrics: Sequence[str] = (),
    progress: bool = False,
) -> dict[str, float]:
    """Token-weighted validation loss (nats per predicted token) and perplexity of `model` as it is.

    Args:
        model (`PreTrainedModel`): a causal LM; evaluated on the device it is on.
        blocks (iterable of `dict`): rows with `input_ids` and `labels` (-100 is ignored), as `pack_into_blocks`
            makes them.
        batch_size (`int`, *optional*, defaults to 8): blocks per forward pass.
        metrics (`Sequence[str]`, *optional*): extra `evaluate` modules, see `load_metric`.
        progress (`bool`, *optional*, defaults to `False`): show a progress bar over batches.

    Returns:
        `dict`: `eval_loss`, `eval_perplexity`, `eval_tokens`, `eval_blocks` and `eval_<key>` for every value of
        every metric.
    """
    modules = [load_metric(m) for m in metrics]
    device = next(model.parameters()).device
    model.eval()
    loss_sum, tokens, num_blocks = 0.0, 0, 0
    for input_ids, labels in tqdm(_batches(blocks, batch_size), desc="batches", disable=not progress, leave=False):
        logits = model(input_ids=input_ids.to(device)).logits[:, :-1].float()
        targets = labels[:, 1:].to(device)
        loss_sum += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").item()
        mask = targets != -100
        tokens += int(mask.sum())
        num_blocks += len(input_ids)
        for module in modules:
            module.add_batch(predictions=logits.argmax(-1)[mask].tolist(), references=targets[mask].tolist())
    if tokens == 0:
        raise PipelineError("The validation set has no tokens to predict.")
    loss = loss_sum / tokens
    results = dict(
        eval_loss=loss, eval_perplexity=math.exp(min(loss, 700.0)), eval_tokens=tokens, eval_blocks=num_blocks
    )
    for module in modules:
        results.update({f"eval_{key}": value for key, value in module.compute().items()})
    return results


def tokens_seen(info: CheckpointInfo, block_size: int | None) -> tuple[int | None, bool]:
    """Training tokens up to a checkpoint, and whether that is an estimate (step x batch x block size; the
    Trainer only counts them with `include_num_input_tokens_seen`)."""
    if info.tokens_seen:
        return info.tokens_seen, False
    if info.step is not None and info.train_batch_size and block_size:
        return info.step * info.train_batch_size * block_size, True
    return None, True


def checkpoint_header(info: CheckpointInfo, spec: DataSpec | None) -> dict:
    """What an `eval_results.json` says about the folder itself: name, step, tokens seen, weights, data."""
    seen, estimated = tokens_seen(info, spec.block_size if spec else None)
    header = dict(
        checkpoint=info.name,
        global_step=info.step,
        tokens_seen=seen,
        tokens_seen_estimated=estimated,
        weights="plain" if info.weights == "plain" else "x",
        converted_from="y" if info.weights == "y" else None,
        optimizer_name=info.optimizer_name,
    )
    if spec is not None:
        header.update(
            dataset=spec.dataset_name,
            dataset_config=spec.dataset_config,
            split=spec.load_options.get("validation_split") or "validation",
            block_size=spec.block_size,
        )
    if info.adapter_base:
        header["adapter_base"] = Path(info.adapter_base).name
    return header


def evaluate_checkpoint(
    info: CheckpointInfo,
    blocks,
    spec: DataSpec | None,
    batch_size: int = 8,
    metrics: Sequence[str] = (),
    device: str | None = None,
    write: bool = True,
    tasks: TaskSuite | None = None,
    seeded: bool = True,
    same_weights_as: dict | None = None,
) -> dict:
    """Evaluates one checkpoint at x and (if `write`) writes its `eval_results.json`.

    Args:
        blocks, spec (*optional*): the held-out blocks and where they come from; with `spec=None` (a run that does
            not say its data) only `tasks` are evaluated, and an earlier validation loss of the folder is kept.
        tasks (`TaskSuite`, *optional*): lm-evaluation-harness tasks to run on the same in-memory model.
        seeded (`bool`, *optional*, defaults to `True`): see `harness.evaluate_tasks`.
        same_weights_as (`dict`, *optional*): the record of another folder with the same weights (see
            `run_inventory.weights_digest`): its results are recorded for this folder too, without a second
            evaluation, and the record names it in `same_weights_as`.

    Returns:
        `dict`: the record written: checkpoint, step, tokens seen, which weights were evaluated, the data, the
        metrics of `evaluate_model`, and with `tasks`, `tasks` (`{task: {"metrics": {name: {"value", "stderr"}},
        ...}}`, see `harness.parse_results`; results of earlier runs on other tasks are kept) and `task_failures`.

    Raises:
        CheckpointError: if the checkpoint is unusable (see `load_model_at_x`).
    """
    record = checkpoint_header(info, spec)
    if same_weights_as is not None:
        record.update({k: v for k, v in same_weights_as.items() if k not in record})
        record["same_weights_as"] = same_weights_as["checkpoint"]
    else:
        previous = read_eval_results(info.path) or {}  # the weights of a folder never change: keep what holds
        model = load_model_at_x(info).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if spec is not None:
            record.update(evaluate_model(model, blocks, batch_size=batch_size, metrics=metrics, progress=tasks is None))
        elif "eval_loss" in previous:
            record.update(
                {k: v for k, v in previous.items() if k not in record and k not in ("tasks", "task_failures")}
            )
        if tasks is not None:
            results, failures = evaluate_tasks(model, checkpoint_tokenizer(info), tasks, seeded=seeded)
            kept = {task: entry for task, entry in previous.get("tasks", {}).items() if task not in failures}
            record["tasks"] = {**kept, **results}
            record["task_failures"] = failures
        elif write and previous.get("tasks"):
            record["tasks"] = previous["tasks"]
    if write:  # a new file replaces the old one: never write through a hard link into another folder
        partial = info.path / f".{EVAL_RESULTS_NAME}.partial"
        partial.write_text(json.dumps(record, indent=2))
        os.replace(partial, info.path / EVAL_RESULTS_NAME)
    return record


def tokenizer_source(info: CheckpointInfo) -> str:
    """Where the checkpoint's tokenizer is: its folder, or for an adapter saved without one, its base model."""
    has_own = any(f.startswith(TOKENIZER_PREFIXES) for f in published_files(info.path))
    return str(info.path if has_own or not info.adapter_base else info.adapter_base)


def checkpoint_tokenizer(info: CheckpointInfo) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the checkpoint (for an adapter without one, its base model's)."""
    try:
        return AutoTokenizer.from_pretrained(tokenizer_source(info))
    except Exception as err:
        if not info.adapter_base:
            raise
        raise adapter_base_error(info, "tokenizer", err) from err


def tokenizer_key(info: CheckpointInfo) -> str:
    """What identifies the checkpoint's tokenizer: its files' hash, or the Hub id of an adapter's base model."""
    source = tokenizer_source(info)
    return tokenizer_fingerprint(Path(source)) if Path(source).is_dir() else source


def checkpoint_blocks(info: CheckpointInfo, spec: DataSpec, cache: dict):
    """The held-out blocks of `spec` tokenized with the checkpoint's tokenizer; `cache` ({tokenizer: blocks}) keeps
    one set per distinct tokenizer (its files' hash, or the Hub id of an adapter's base model)."""
    key = tokenizer_key(info)
    if key not in cache:
        cache[key] = validation_blocks(spec, checkpoint_tokenizer(info))
    return cache[key]


@dataclass
class RunEvaluation:
    """What `evaluate_run` did.

    Attributes:
        results (`List[dict]`): the records of the evaluated checkpoints, in step order (final model last).
        failures (`List[Tuple[str, str]]`): `(name, reason)` of every checkpoint that was skipped.
        files (`Dict[str, Path]`): the summary files written (`csv`, `markdown`, `plot`).
        notes (`List[str]`): what was left out and how to add it (e.g. the validation loss of a run that does
            not say its data), one line each.
    """

    results: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def tokenizer_fingerprint(folder: Path) -> str:
    """A hash of the tokenizer files saved in `folder` (checkpoints with equal ones share validation blocks).

    Raises:
        CheckpointError: if the folder has no tokenizer.
    """
    files = [f for f in published_files(folder) if f.startswith(TOKENIZER_PREFIXES)]
    if not files:
        raise CheckpointError(f"{folder}: no tokenizer saved with the model (pass processing_class= to the Trainer).")
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + (folder / name).read_bytes())
    return digest.hexdigest()


def evaluate_run(
    run_dir: os.PathLike,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    text_column: str | None = None,
    block_size: int | None = None,
    batch_size: int = 8,
    metrics: Sequence[str] = (),
    output_dir: os.PathLike | None = None,
    device: str | None = None,
    tasks: Sequence[str] = (),
    include_path: Sequence[str] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    verbose: bool = False,
    only: Sequence[str] | None = None,
) -> RunEvaluation:
    """Evaluates every `checkpoint-N` of a run and its final model at x, on the run's held-out set.

    Args:
        run_dir (`os.PathLike`): the Trainer's `output_dir`.
        dataset (`str`, *optional*): overrides the run's dataset (`run_args.json`, see `DataSpec.from_run`).
        dataset_config (`str`, *optional*): overrides the dataset configuration.
        text_column (`str`, *optional*): overrides the text column.
        block_size (`int`, *optional*): overrides the block size.
        batch_size (`int`, *optional*, defaults to 8): blocks (and lm-eval requests) per forward pass.
        metrics (`Sequence[str]`, *optional*): extra `evaluate` modules (see `load_metric`).
        output_dir (`os.PathLike`, *optional*): where the summary and plots go; defaults to `run_dir`.
        device (`str`, *optional*): defaults to CUDA when available.
        tasks (`Sequence[str]`, *optional*): lm-evaluation-harness tasks (names, comma lists, YAML files).
        include_path (`Sequence[str]`, *optional*): folders of task YAML files.
        num_fewshot (`int`, *optional*): overrides the tasks' few-shot count.
        limit (`float`, *optional*): documents per task (a fraction when < 1).
        verbose (`bool`, *optional*, defaults to `False`): show lm-eval's own bars and logs.
        only (`Sequence[str]`, *optional*): evaluate only these checkpoints (`checkpoint-N`, `final`); the
            summary still lists the others' earlier `eval_results.json`.

    Folders holding the same weights (the final model saved right after the last checkpoint) are evaluated once;
    the others get the same record, naming the evaluated one in `same_weights_as`. A run that does not say its
    data (no `run_args.json`: a user's own training script) with `tasks` gets the tasks only, and a line in
    `notes` saying how to add the validation loss.

    Returns:
        `RunEvaluation`. A bad checkpoint is in `failures`; the others are still evaluated.

    Raises:
        CheckpointError: if `run_dir` is missing or holds no model ("No run here").
        PipelineError: if the run's data cannot be determined and no task is asked for, a metric or task is
            unknown, or lm-eval is missing while tasks are asked for.
    """
    infos = find_checkpoints(run_dir)
    evaluation, blocks_by_tokenizer, by_weights = RunEvaluation(), {}, {}
    try:
        spec = DataSpec.from_run(run_dir, dataset, dataset_config, text_column, block_size)
    except UnknownDataError:
        if not tasks:
            raise
        spec = None  # a user's own training script: the tasks need no data of the run
        evaluation.notes.append(
            f"validation loss skipped: {run_dir} does not say which data it was trained on (no {RUN_ARGS_NAME}); "
            f"add {DATA_FLAGS} to evaluate it too."
        )
    for metric in metrics:  # fail on a bad metric or task name before the first checkpoint
        load_metric(metric)
    suite = (
        TaskSuite.resolve(
            tasks, include_path, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, verbose=verbose
        )
        if tasks
        else None
    )
    if only:
        unknown = sorted(set(only) - {i.name for i in infos})
        if unknown:
            raise PipelineError(
                f"No checkpoint named {', '.join(unknown)} in {run_dir}; it has {', '.join(i.name for i in infos)}."
            )
    per_checkpoint = len(suite.tasks) if suite else 1
    selected = [i for i in infos if not only or i.name in only]  # the others: their earlier results, if any
    bar = tqdm(total=len(selected) * per_checkpoint, desc="Evaluating checkpoints" + (" x tasks" if suite else ""))
    for info in infos:
        if info not in selected:
            if (earlier := read_eval_results(info.path)) is not None:
                evaluation.results.append(earlier)
            continue
        bar.set_postfix_str(info.name)
        try:
            if info.problem:
                raise CheckpointError(info.problem)
            digest = weights_digest(info)  # same weights and tokenizer, same numbers
            digest = digest and f"{digest}:{tokenizer_key(info)}"
            blocks = checkpoint_blocks(info, spec, blocks_by_tokenizer) if spec and digest not in by_weights else None
            record = evaluate_checkpoint(
                info, blocks, spec, batch_size, metrics, device, tasks=suite, same_weights_as=by_weights.get(digest)
            )
            evaluation.results.append(record)
            if digest is not None:
                by_weights.setdefault(digest, record)
        except CheckpointError as err:
            logger.error("Skipping %s: %s", info.name, err)
            evaluation.failures.append((info.name, str(err)))
        except PipelineError:
            raise
        except Exception as err:  # a corrupt file fails in many ways (tokenizer, weights, shapes): skip, go on
            logger.exception("Skipping %s", info.name)
            evaluation.failures.append((info.name, f"{type(err).__name__}: {err}"))
        finally:
            bar.update(per_checkpoint)
    bar.close()
    evaluation.files = write_summary(evaluation.results, evaluation.failures, Path(output_dir or run_dir))
    return evaluation
