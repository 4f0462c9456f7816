"""benchmarks/optimizer_step.py at a tiny size: every row and target line is printed, and the measures that do not
depend on the clock (optimizer-state bytes, the temporaries of a step) come out as they must.

    pytest tests/test_optimizer_step_benchmark.py -q
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "torch AdamW fused",
    "torch AdamW foreach",
    "schedulefree AdamWScheduleFree (foreach)",
    "sf_hf SF-AdamW fused",
    "sf_hf refined SF-AdamW fused",
    "sf_hf SF-AdamW foreach twin",
    "sf_hf SF-AdamW fused, norm handed over",
    "sf_hf refined SF-AdamW fused, norm handed over",
    "SF-AdamW fused, no check",
    "the check alone: all_finite",
    "torch AdamW fused + clip_grad_norm_",
    "sf_hf SF-AdamW fused + clip_grad_norm_",
    "sf_hf refined SF-AdamW fused + clip_grad_norm_",
]
COLUMNS = ["median_ms", "min_ms", "cpu_ms", "gb_s", "x_adamw", "peak_mib", "state_bytes"]


def table(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        name = line[:52].strip()
        if name in ROWS:
            rows[name] = dict(zip(COLUMNS, line[52:].split()))
    return rows


def test_a_tiny_run_prints_every_row_and_target_and_the_memory_figures_hold():
    command = [
        sys.executable,
        "benchmarks/optimizer_step.py",
        "--sizes",
        "1M",
        "--bf16-sizes",
        "",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--pairs",
        "2",
        "--compile-cache",
        "default",
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = table(out)
    assert list(rows) == ROWS
    one_temporary_mib = 1e6 * 4 / 2**20  # 1M float32 parameters
    # the foreach implementations allocate a full-size temporary, the fused steps none; both hold z and v only
    assert float(rows["sf_hf SF-AdamW foreach twin"]["peak_mib"]) >= 0.9 * one_temporary_mib
    for name in ("sf_hf SF-AdamW fused", "sf_hf refined SF-AdamW fused", "sf_hf SF-AdamW fused, norm handed over"):
        assert float(rows[name]["peak_mib"]) < 0.5 * one_temporary_mib
    for name in ("torch AdamW fused", "sf_hf SF-AdamW fused", "sf_hf refined SF-AdamW fused"):
        assert rows[name]["state_bytes"] == "8.0"
    assert all(float(row["x_adamw"]) > 0 for row in rows.values())
    assert "time ratios are medians over 2 pairs of steps taken back to back" in out
    targets = re.findall(r"^(PASS|FAIL) \[1M float32\] (.*)$", out, flags=re.MULTILINE)
    assert len(targets) == 10
    assert ("PASS", "sf_hf SF-AdamW fused: state 8.00 bytes/param (target 8)") in targets
    assert sum(1 for _, text in targets if "norm handed over (as ScheduleFreeTrainer steps)" in text) == 2
    assert re.search(rf"^{sum(v == 'PASS' for v, _ in targets)} of 10 target checks pass$", out, flags=re.MULTILINE)
