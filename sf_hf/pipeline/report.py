"""The run summary of `sf-hf evaluate`: a CSV and a Markdown table, and validation loss against tokens seen.

    write_summary(evaluation.results, evaluation.failures, "runs/llama-small")
    # -> eval_summary.csv, eval_summary.md, eval_loss.png
"""

import csv
import io
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from matplotlib.figure import Figure

SUMMARY_CSV, SUMMARY_MD, PLOT_NAME = "eval_summary.csv", "eval_summary.md", "eval_loss.png"
_FIRST_COLUMNS = ["checkpoint", "global_step", "tokens_seen", "weights", "eval_loss", "eval_perplexity"]


def summary_rows(results: Sequence[dict], failures: Sequence[Tuple[str, str]]) -> List[dict]:
    """One row per checkpoint: evaluated ones with their metrics, then skipped ones with the reason."""
    rows = []
    for record in results:
        weights = "x (converted from y)" if record.get("converted_from") == "y" else record["weights"]
        metrics = {k: v for k, v in record.items() if k.startswith("eval_")}
        rows.append(dict(checkpoint=record["checkpoint"], global_step=record["global_step"],
                         tokens_seen=record["tokens_seen"], weights=weights, **metrics, status="ok"))
    rows += [dict(checkpoint=name, status=f"skipped: {reason}") for name, reason in failures]
    return rows


def _columns(rows: Sequence[dict]) -> List[str]:
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


def plot_loss(results: Sequence[dict]) -> bytes:
    """PNG of validation loss against tokens seen (against steps when a checkpoint lacks its token count)."""
    by_tokens = all(r.get("tokens_seen") for r in results)
    key = "tokens_seen" if by_tokens else "global_step"
    points = sorted((r[key] or 0, r["eval_loss"], r["checkpoint"] == "final") for r in results)
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot([p[0] for p in points if not p[2]], [p[1] for p in points if not p[2]], "o-", label="checkpoints")
    axes.plot([p[0] for p in points if p[2]], [p[1] for p in points if p[2]], "r*", markersize=12, label="final model")
    estimated = by_tokens and any(r.get("tokens_seen_estimated") for r in results)
    axes.set_xlabel(("tokens seen" + (" (estimated: steps x batch x block)" if estimated else "")) if by_tokens
                    else "step")
    axes.set_ylabel("validation loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def write_summary(results: Sequence[dict], failures: Sequence[Tuple[str, str]], output_dir: Path) -> Dict[str, Path]:
    """Writes `eval_summary.csv`, `eval_summary.md` and (when something was evaluated) `eval_loss.png`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(results, failures)
    files = {"csv": output_dir / SUMMARY_CSV, "markdown": output_dir / SUMMARY_MD}
    files["csv"].write_text(to_csv(rows))
    files["markdown"].write_text(to_markdown(rows))
    if results:
        files["plot"] = output_dir / PLOT_NAME
        files["plot"].write_bytes(plot_loss(results))
    return files
