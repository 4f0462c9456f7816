"""The run summary of `sf-hf evaluate`: a CSV and a Markdown table, validation loss and each task's metrics against
tokens seen.

    write_summary(evaluation.results, evaluation.failures, "runs/llama-small")
    # -> eval_summary.csv, eval_summary.md, eval_loss.png, eval_<task>.png per lm-eval task

Task metrics are columns `<task>/<metric>` and `<task>/<metric>_stderr`; a task that failed on a checkpoint is
named in that row's `status`.
"""

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

SUMMARY_CSV, SUMMARY_MD, PLOT_NAME = "eval_summary.csv", "eval_summary.md", "eval_loss.png"
_FIRST_COLUMNS = ["checkpoint", "global_step", "tokens_seen", "weights", "eval_loss", "eval_perplexity"]


def summary_rows(results: Sequence[dict], failures: Sequence[tuple[str, str]]) -> list[dict]:
    """One row per checkpoint: evaluated ones with their metrics, then skipped ones with the reason."""
    rows = []
    for record in results:
        weights = "x (converted from y)" if record.get("converted_from") == "y" else record["weights"]
        metrics = {k: v for k, v in record.items() if k.startswith("eval_")}
        for task, entry in sorted(record.get("tasks", {}).items()):
            for name, metric in entry["metrics"].items():
                metrics[f"{task}/{name}"], metrics[f"{task}/{name}_stderr"] = metric["value"], metric["stderr"]
        failed = "; ".join(
            f"{task} failed: {reason}" for task, reason in sorted(record.get("task_failures", {}).items())
        )
        rows.append(
            dict(
                checkpoint=record["checkpoint"],
                global_step=record["global_step"],
                tokens_seen=record["tokens_seen"],
                weights=weights,
                **metrics,
                status="ok"
                + (f" (same weights as {record['same_weights_as']})" if record.get("same_weights_as") else "")
                + (f"; {failed}" if failed else ""),
            )
        )
    rows += [dict(checkpoint=name, status=f"skipped: {reason}") for name, reason in failures]
    return rows


def _columns(rows: Sequence[dict]) -> list[str]:
    extra = sorted({k for row in rows for k in row} - set(_FIRST_COLUMNS) - {"status"})
    return _FIRST_COLUMNS + extra + ["status"]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table of `summary_rows` (floats with 4 decimals)."""
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV, full precision."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _x_axis(results: Sequence[dict]) -> tuple[str, str]:
    """The key to plot against (tokens seen, or steps when a checkpoint lacks its token count) and its label."""
    by_tokens = all(r.get("tokens_seen") for r in results)
    estimated = by_tokens and any(r.get("tokens_seen_estimated") for r in results)
    label = ("tokens seen" + (" (estimated: steps x batch x block)" if estimated else "")) if by_tokens else "step"
    return ("tokens_seen" if by_tokens else "global_step"), label


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def plot_loss(results: Sequence[dict]) -> bytes:
    """PNG of validation loss against tokens seen (against steps when a checkpoint lacks its token count)."""
    results = [r for r in results if "eval_loss" in r]
    key, label = _x_axis(results)
    points = sorted((r[key] or 0, r["eval_loss"], r["checkpoint"] == "final") for r in results)
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot([p[0] for p in points if not p[2]], [p[1] for p in points if not p[2]], "o-", label="checkpoints")
    axes.plot([p[0] for p in points if p[2]], [p[1] for p in points if p[2]], "r*", markersize=12, label="final model")
    axes.set_xlabel(label)
    axes.set_ylabel("validation loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def task_plot_name(task: str) -> str:
    """`eval_<task>.png`, with characters other than letters, digits, `_`, `-` and `.` replaced by `_`."""
    return f"eval_{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}.png"


def plot_task(results: Sequence[dict], task: str) -> bytes:
    """PNG of every metric of one lm-eval task (with its standard error) against tokens seen."""
    evaluated = [r for r in results if task in r.get("tasks", {})]
    key, label = _x_axis(evaluated)
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    names = sorted({name for r in evaluated for name in r["tasks"][task]["metrics"]})
    for name in names:
        points = sorted(
            (
                r[key] or 0,
                r["tasks"][task]["metrics"][name]["value"],
                r["tasks"][task]["metrics"][name]["stderr"] or 0.0,
            )
            for r in evaluated
            if r["tasks"][task]["metrics"].get(name, {}).get("value") is not None
        )
        axes.errorbar(
            [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], fmt="o-", capsize=3, label=name
        )
    axes.set_title(f"{task} (lm-evaluation-harness)")
    axes.set_xlabel(label)
    axes.set_ylabel("metric (error bars: standard error)")
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def run_plots(results: Sequence[dict]) -> dict[str, bytes]:
    """`{file name: PNG}`: `eval_loss.png` (when a checkpoint has a validation loss) and one `eval_<task>.png` per
    task evaluated on any checkpoint."""
    plots = {PLOT_NAME: plot_loss(results)} if any("eval_loss" in r for r in results) else {}
    for task in sorted({task for r in results for task in r.get("tasks", {})}):
        plots[task_plot_name(task)] = plot_task(results, task)
    return plots


def write_summary(results: Sequence[dict], failures: Sequence[tuple[str, str]], output_dir: Path) -> dict[str, Path]:
    """Writes `eval_summary.csv`, `eval_summary.md` and (when something was evaluated) the plots of `run_plots`.

    Returns:
        `dict`: `csv`, `markdown`, `plot` (the loss plot) and `plot:<task>` for each task plot.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(results, failures)
    files = {"csv": output_dir / SUMMARY_CSV, "markdown": output_dir / SUMMARY_MD}
    files["csv"].write_text(to_csv(rows))
    files["markdown"].write_text(to_markdown(rows))
    for name, png in run_plots(results).items():
        key = "plot" if name == PLOT_NAME else f"plot:{name[len('eval_') : -len('.png')]}"
        files[key] = output_dir / name
        files[key].write_bytes(png)
    return files
