"""Benchmark tasks of EleutherAI's lm-evaluation-harness, run on a model already in memory (at x).

    sf-hf evaluate runs/llama-small --tasks sf_kjv --limit 50            # the bundled offline tasks
    sf-hf evaluate runs/llama-small --tasks hellaswag,arc_easy --num-fewshot 0   # Hub tasks: needs the Hub

    from sf_hf.pipeline.harness import TaskSuite, evaluate_tasks
    suite = TaskSuite.resolve(["sf_kjv_next_verse", "my_tasks/task.yaml"], include_path=["my_tasks/"])
    results, failures = evaluate_tasks(model, tokenizer, suite)   # {task: {"metrics": {...}, ...}}, {task: reason}

Each checkpoint is wrapped as `HFLM(pretrained=model, tokenizer=tokenizer)` and passed to `lm_eval.simple_evaluate`
(no second copy of the weights on disk). Task names, task YAML files and task folders (`include_path`) are accepted;
sf_hf's own tasks (`sf_hf/eval_tasks`) are always indexed. lm-eval indexes its ~15k built-in tasks only when a
requested name is not local (that index costs tens of seconds on a small CPU).
"""

import contextlib
import difflib
import functools
import importlib
import logging
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..eval_tasks import TASKS_DIR
from .errors import PipelineError

logger = logging.getLogger(__name__)
INSTALL_HINT = "Benchmark tasks need lm-evaluation-harness: pip install 'sf_hf[eval]' (or pip install lm-eval)."
_MODULES_WITH_BARS = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def require_lm_eval():
    """Imports `lm_eval`.

    Raises:
        PipelineError: if it is not installed; the message says how to install it.
    """
    try:
        return importlib.import_module("lm_eval")
    except ImportError as err:
        raise PipelineError(INSTALL_HINT) from err


def split_task_names(tasks: Sequence[str]) -> list[str]:
    """`["a,b", "c"]` -> `["a", "b", "c"]` (the CLI takes comma-separated lists, repeatable)."""
    return [name.strip() for entry in tasks for name in entry.split(",") if name.strip()]


def _is_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or Path(spec).is_file()


@dataclass
class TaskSuite:
    """The lm-eval tasks to run on every checkpoint, and how.

    Attributes:
        tasks (`List[str]`): task, group or tag names, or paths of task YAML files.
        manager (`lm_eval.tasks.TaskManager`): the index that knows them.
        num_fewshot (`int`, *optional*): overrides the tasks' own few-shot count.
        limit (`int` or `float`, *optional*): documents per task (a fraction when < 1); for quick looks only.
        batch_size (`int`, *optional*, defaults to 8): requests per forward pass.
        verbose (`bool`, *optional*, defaults to `False`): keep lm-eval's per-request bars and INFO logs.
    """

    tasks: list[str]
    manager: object = field(repr=False)
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    verbose: bool = False

    @classmethod
    def resolve(cls, tasks: Sequence[str], include_path: Sequence[str] = (), **settings) -> "TaskSuite":
        """Checks the task names before any checkpoint is loaded.

        Args:
            tasks (`Sequence[str]`): names (comma-separated lists allowed) or task YAML files.
            include_path (`Sequence[str]`, *optional*): folders of task YAML files to index as well.
            settings: the other attributes (`num_fewshot`, `limit`, `batch_size`, `verbose`).

        Raises:
            PipelineError: lm-eval is missing, a YAML file or folder does not exist, or a name is unknown (the
                message lists the closest known names).
        """
        require_lm_eval()
        from lm_eval.tasks import TaskManager

        names = split_task_names(tasks)
        if not names:
            raise PipelineError("No task given: pass --tasks NAME[,NAME...] (e.g. sf_kjv, or hellaswag with the Hub).")
        missing = [p for p in list(include_path) + [n for n in names if _is_path(n)] if not Path(p).exists()]
        if missing:
            raise PipelineError(f"Task file or folder not found: {', '.join(missing)}")
        paths = [str(TASKS_DIR)] + [str(Path(p).resolve()) for p in include_path]
        with _quiet_logs(settings.get("verbose", False)):
            manager = TaskManager(include_defaults=False, include_path=paths)
            unknown = [n for n in names if not _is_path(n) and n not in manager.all_tasks]
            if unknown:  # a standard lm-eval name: index the built-in tasks too
                manager = TaskManager(include_path=paths)
                unknown = [n for n in names if not _is_path(n) and n not in manager.all_tasks]
        if unknown:
            close = {n: ", ".join(difflib.get_close_matches(n, manager.all_tasks, 5, 0.6)) for n in unknown}
            hints = "; ".join(f"{n!r}: did you mean {close[n] or 'nothing close'}?" for n in unknown)
            raise PipelineError(
                f"Unknown lm-eval task(s): {hints} (sf_hf's offline tasks: sf_kjv_next_verse, "
                "sf_kjv_cloze; a task YAML file or --include-path FOLDER adds your own)"
            )
        return cls(names, manager, **settings)


class _LongerThanMaximum(logging.Filter):
    """Drops transformers' "Token indices sequence length is longer than the specified maximum sequence length"
    warning: lm-eval encodes whole documents and keeps the last `max_length` tokens itself, so no sequence longer
    than the model's context reaches the model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token indices sequence length is longer")


@contextlib.contextmanager
def _quiet_logs(verbose: bool):
    """lm-eval logs every setting at INFO/WARNING; keep only errors unless `verbose`, and leave out the tokenizer's
    warning about long documents (`_LongerThanMaximum`)."""
    if verbose:
        yield
        return
    lm_logger, tokenizer_logger = (
        logging.getLogger("lm_eval"),
        logging.getLogger("transformers.tokenization_utils_base"),
    )
    level, long_documents = lm_logger.level, _LongerThanMaximum()
    lm_logger.setLevel(logging.ERROR)
    tokenizer_logger.addFilter(long_documents)
    try:
        yield
    finally:
        lm_logger.setLevel(level)
        tokenizer_logger.removeFilter(long_documents)


@contextlib.contextmanager
def _quiet_bars(verbose: bool):
    """lm-eval draws a bar per task and request type; hide them (the pipeline draws one over checkpoints x tasks).

    lm-eval's modules call `tqdm(...)` imported at module level (some with their own `disable=`), without a
    switch for every bar, so their module-level `tqdm` is swapped for one that is always disabled, and restored
    afterwards.
    """
    if verbose:
        yield
        return
    swapped = {}
    for name in _MODULES_WITH_BARS:
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            swapped[module] = module.tqdm
            module.tqdm = functools.partial(_disabled_bar, module.tqdm)
    try:
        yield
    finally:
        for module, original in swapped.items():
            module.tqdm = original


def _disabled_bar(bar_cls, *args, **kwargs):
    return bar_cls(*args, **{**kwargs, "disable": True})


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def parse_results(output: dict) -> dict[str, dict]:
    """lm-eval's `simple_evaluate(...)` output -> `{task: {"metrics": {name: {"value", "stderr", "metric",
    "filter"}}, "num_fewshot", "samples", "version", "higher_is_better", "dataset", "split"}}`.

    A metric is named as lm-eval names it without the default filter: `acc` for `acc,none`,
    `exact_match,first_word` for a filtered one.
    """
    parsed = {}
    for task, values in output["results"].items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else key
            metrics[name] = dict(
                value=_number(value),
                stderr=_number(values.get(f"{metric}_stderr,{filter_name}")),
                metric=metric,
                filter=filter_name,
            )
        samples = output.get("n-samples", {}).get(task, {})
        config = output.get("configs", {}).get(task, {})
        parsed[task] = dict(
            metrics=metrics,
            num_fewshot=output.get("n-shot", {}).get(task),
            samples=samples.get("effective"),
            version=output.get("versions", {}).get(task),
            higher_is_better=output.get("higher_is_better", {}).get(task, {}),
            dataset=config.get("dataset_path"),
            split=config.get("test_split"),
        )
    return parsed


def _describe(err: Exception) -> str:
    """`Type: message`; for a bare `assert` of lm-eval (no message), the failing line instead."""
    text = str(err)
    if not text and err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        text = f"{Path(frame.filename).name}:{frame.lineno}: {frame.line}"
    return f"{type(err).__name__}: {text}"


def _run(lm, suite: TaskSuite, tasks: list[str], seeded: bool) -> dict[str, dict]:
    from lm_eval import simple_evaluate

    seeds = {} if seeded else dict(random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    output = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=suite.manager,
        num_fewshot=suite.num_fewshot,
        limit=suite.limit,
        batch_size=suite.batch_size,
        log_samples=False,
        **seeds,
    )
    return parse_results(output)


def evaluate_tasks(model, tokenizer, suite: TaskSuite, seeded: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    """Runs the suite's tasks on `model` as it is (in memory, on its device).

    All tasks go through one `simple_evaluate` call; if it fails, each task is run alone, so one broken task
    does not take the others with it.

    Args:
        model (`PreTrainedModel`): the model at x.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        suite (`TaskSuite`): the tasks and settings.
        seeded (`bool`, *optional*, defaults to `True`): let lm-eval seed Python, NumPy and torch as its CLI does;
            `False` leaves the global generators alone (for evaluations in the background of a training run).

    Returns:
        `(results, failures)`: `parse_results` of every task that ran, and `{task: reason}` of those that failed.
    """
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    with _quiet_logs(suite.verbose), _quiet_bars(suite.verbose):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=suite.batch_size)
        try:
            return _run(lm, suite, suite.tasks, seeded), {}
        except Exception as err:  # noqa: BLE001 - lm-eval and datasets fail in many ways; isolate the culprit
            if len(suite.tasks) == 1:
                logger.error("Task %s failed: %s", suite.tasks[0], _describe(err))
                return {}, {suite.tasks[0]: _describe(err)}
        results, failures = {}, {}
        for task in suite.tasks:
            try:
                results.update(_run(lm, suite, [task], seeded))
            except Exception as err:  # noqa: BLE001
                failures[task] = _describe(err)
                logger.error("Task %s failed: %s", task, failures[task])
        return results, failures
