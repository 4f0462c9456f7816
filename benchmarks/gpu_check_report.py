"""The Markdown page of a `benchmarks/gpu_check.py` report (its report.json), every number in it.

python benchmarks/gpu_check_report.py benchmarks/results/gpu_check-<time>/report.json   # prints the page
"""

import json
import sys
from pathlib import Path

TITLES = {
    "tests_on_device": "Tests on the device (x/y, checkpoints, exact resume, fused kernels)",
    "optimizer_step": "Optimizer step",
    "switch": "Mode switch (eval()/train())",
    "trainer": "Trainer: the recipe (on a GPU the 124M one) in ScheduleFreeTrainer against Trainer + fused AdamW",
    "tests_gpu_marked": "The suite's `gpu`-marked tests",
}


def number(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(number(cell) for cell in row) + " |" for row in rows]


def tests_section(part: dict) -> list[str]:
    counts = part.get("counts", {})
    lines = [
        f"`{part.get('command', '').strip()}` on {part.get('device')}: "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
    ]
    failed = [name for name, outcome in part.get("tests", {}).items() if outcome in ("FAILED", "ERROR")]
    return lines + ([""] + [f"- failed: `{name}`" for name in failed] if failed else [])


def optimizer_section(part: dict, peak_gbs: float | None) -> list[str]:
    lines = []
    for case in part.get("cases", []):
        shape = f"{case['params']:,} parameters in {case['tensors']} tensors"
        lines += ([""] if lines else []) + [f"{case['size']} {case['dtype']}: {shape}, on {case['device']}", ""]
        rows = [
            [
                row["name"],
                row["median_ms"],
                row["min_ms"],
                row["x_adamw_fused"],
                row["gb_s"],
                None if peak_gbs is None else 100 * row["gb_s"] / peak_gbs,
                row["peak_extra_bytes_per_param"],
                row["state_bytes_per_param"],
                row["first_step_s"],
            ]
            for row in case["rows"]
        ]
        header = [
            "optimizer",
            "median ms",
            "min ms",
            "x fused AdamW",
            "GB/s",
            "% of peak",
            "peak extra B/param",
            "state B/param",
            "first step s",
        ]
        lines += table(header, rows)
    return lines


def switch_section(part: dict) -> list[str]:
    cases = part.get("cases", [])
    if not cases:
        return []
    names = list(cases[0]["ms"])
    header = ["size", "dtype", "parameters", "fused"] + [f"{name} ms" for name in names]
    rows = [[c["size"], c["dtype"], c["params"], c["fused"]] + [c["ms"][name] for name in names] for c in cases]
    return table(header, rows)


def trainer_section(part: dict) -> list[str]:
    if "ratio" not in part:
        return []
    tokens = part["tokens_per_s"]
    losses = {arm: f"{loss:.4f}" for arm, loss in part.get("eval_loss", {}).items()}
    rows = [
        [
            f"ScheduleFreeTrainer + {part['optimizer']} (sf_fused={part['sf_fused']})",
            max(tokens["sf"]),
            losses.get("sf"),
        ],
        ["Trainer + AdamW (fused)", max(tokens["adamw"]), losses.get("adamw")],
    ]
    return [
        f"{part['params']:,} parameters, {part['tokens_per_step']:,} tokens per step; SF / AdamW tokens/s: "
        f"**{part['ratio']:.3f}** (per repeat {', '.join(f'{r:.3f}' for r in part['ratios'])})",
        "",
    ] + table(["arm", "tokens/s (best repeat)", "eval loss at the end (SF: at x)"], rows)


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check ({report['mode']}): {env['device_name']}, {report['started_utc']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, sf_hf {env['sf_hf_commit']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + f"; peak memory bandwidth {number(env['peak_bandwidth_gbs'], 0)} GB/s"
        + (f"; {env['device_memory_gib']:.0f} GiB" if "device_memory_gib" in env else ""),
        "",
        f"Host: {env['host']}",
        "",
        f"Elapsed {report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget "
        f"({report.get('cpu_s', 0):.0f} s of CPU time, child processes included).",
        "",
    ]
    lines += table(
        ["part", "status", "seconds", "limit s", "CPU s"],
        [
            [name, part["status"], part.get("seconds"), part.get("limit_s"), part.get("cpu_s")]
            for name, part in report["parts"].items()
        ],
    )
    sections = {
        "tests_on_device": tests_section,
        "tests_gpu_marked": tests_section,
        "optimizer_step": lambda part: optimizer_section(part, env["peak_bandwidth_gbs"]),
        "switch": switch_section,
        "trainer": trainer_section,
    }
    for name, part in report["parts"].items():
        lines += ["", f"## {TITLES[name]}", ""] + sections[name](part)
        lines += [f"- failed case: {error}" for error in part.get("errors", [])]
        if part.get("error"):
            lines += ["", f"{part['status']}; the end of its output:", "", "```", part["error"].strip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
