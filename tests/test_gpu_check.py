"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's every part at tiny sizes on CPU, so that the script cannot rot
while no GPU is at hand; its report has every section, with numbers, and the numbers that do not depend on the clock
are the known ones.

    pytest tests/test_gpu_check.py -q
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import peak_bandwidth_gbs

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = [
    "torch AdamW fused",
    "torch AdamW foreach",
    "sf_hf SF-AdamW fused, norm handed over",
    "sf_hf SF-AdamW fused",
    "sf_hf refined SF-AdamW fused, norm handed over",
    "sf_hf SF-AdamW foreach twin, norm handed over",
    "sf_hf ScheduleFree+ fused, norm handed over",
    "schedulefree AdamWScheduleFree (foreach)",
]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    folders = list(out.glob("gpu_check-*"))
    assert len(folders) == 1, proc.stdout + proc.stderr
    report = json.loads((folders[0] / "report.json").read_text())
    return proc, report, (folders[0] / "report.md").read_text()


def test_every_part_passes_and_the_report_folder_is_printed(smoke):
    proc, report, _ = smoke
    statuses = {name: part["status"] for name, part in report["parts"].items()}
    errors = {name: part.get("error", "")[-1500:] for name, part in report["parts"].items() if "error" in part}
    assert statuses == dict.fromkeys(
        ["tests_on_device", "optimizer_step", "switch", "trainer", "tests_gpu_marked"], "ok"
    ), errors
    assert proc.returncode == 0
    assert "gpu_check (cpu-smoke): report in " in proc.stdout
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["peak_bandwidth_gbs"] is None
    assert all(positive(part["seconds"]) and part["seconds"] <= part["limit_s"] for part in report["parts"].values())


def test_tests_ran_on_the_device_option_and_the_gpu_marker_selects_the_gpu_tests(smoke):
    _, report, _ = smoke
    on_device = report["parts"]["tests_on_device"]
    assert on_device["counts"]["passed"] >= 1 and on_device["counts"]["failed"] == 0
    assert "SF_HF_TEST_DTYPE=bfloat16" in on_device["command"] and on_device["device"] == "cpu"
    marked = report["parts"]["tests_gpu_marked"]
    assert set(marked["tests"].values()) == {"SKIPPED"}  # no CUDA here
    assert "tests/distributed/test_strategies.py::test_fsdp2_through_accelerate_on_gpu" in marked["tests"]


def test_optimizer_step_rows_have_times_ratios_and_the_known_state_sizes(smoke):
    _, report, _ = smoke
    cases = report["parts"]["optimizer_step"]["cases"]
    assert [(c["size"], c["dtype"]) for c in cases] == [
        ("16k", "bfloat16"),
        ("64k", "bfloat16"),
        ("16k", "float32"),
        ("64k", "float32"),
    ]
    for case in cases:
        rows = {row["name"]: row for row in case["rows"]}
        assert list(rows) == OPTIMIZERS
        assert rows["torch AdamW fused"]["x_adamw_fused"] == 1.0
        for row in rows.values():
            assert all(positive(row[k]) for k in ("median_ms", "min_ms", "x_adamw_fused", "gb_s", "first_step_s"))
            assert row["peak_extra_bytes_per_param"] is not None and row["peak_extra_bytes_per_param"] >= 0
        # state per parameter: z and v in float32 for SF whatever the dtype; AdamW's two moments in the param dtype
        param_bytes = 2 if case["dtype"] == "bfloat16" else 4
        assert rows["torch AdamW fused"]["state_bytes_per_param"] == pytest.approx(
            2 * param_bytes, abs=0.01
        )  # + a step counter per tensor
        assert rows["sf_hf SF-AdamW fused"]["state_bytes_per_param"] == 8.0
        assert rows["sf_hf ScheduleFree+ fused, norm handed over"]["state_bytes_per_param"] == 12.0
        assert rows["sf_hf SF-AdamW fused"]["traffic_bytes_per_param"] == 3 * param_bytes + 16


def test_switch_and_trainer_sections_have_numbers(smoke):
    _, report, markdown = smoke
    switch = report["parts"]["switch"]["cases"]
    assert len(switch) == 4 and all(all(positive(ms) for ms in case["ms"].values()) for case in switch)
    assert set(switch[0]["ms"]) == {"eval()", "train(), exact", "train(), lerp (before)", "lerp y -> x (eval before)"}
    trainer = report["parts"]["trainer"]
    assert positive(trainer["ratio"]) and all(positive(v) for v in trainer["tokens_per_s"]["sf"])
    assert set(trainer["eval_loss"]) == {"sf", "adamw"} and all(positive(v) for v in trainer["eval_loss"].values())
    assert trainer["eval_loss"]["sf"] != trainer["eval_loss"]["adamw"]
    for heading in ("## Tests on the device", "## Optimizer step", "## Mode switch", "## Trainer", "## The suite's"):
        assert heading in markdown
    assert "| sf_hf ScheduleFree+ fused, norm handed over |" in markdown and "SF / AdamW tokens/s" in markdown


def test_peak_bandwidth_by_device_name():
    assert peak_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak_bandwidth_gbs("NVIDIA H100 PCIe") == 2000.0
    assert peak_bandwidth_gbs("NVIDIA H200") == 4800.0
    assert peak_bandwidth_gbs("NVIDIA A100-SXM4-80GB") == 2039.0
    assert peak_bandwidth_gbs("NVIDIA A100-PCIE-40GB") == 1555.0
    assert peak_bandwidth_gbs("Tesla T4") is None


def test_a_part_that_fails_or_overruns_is_recorded_and_killed(tmp_path):
    from benchmarks.gpu_check import child_part, run_limited

    status, seconds = run_limited([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log", 1.0)
    assert status is None and seconds < 30
    plan = dict(sizes=["12 apples", "1k"], dtypes=["float32"], repeats=1)
    part = child_part("switch", plan, "cpu", 120, tmp_path, {})
    assert part["status"] == "failed" and part["limit_s"] == 120
    assert part["errors"] == [
        "12 apples float32: ValueError: Invalid size '12 apples': use a count such as 10M, 500k or 123456."
    ]
    assert [case["params"] for case in part["cases"]] == [1000]  # the next case ran
    assert "1 case(s) failed" in part["error"]


def test_gpu_wheels_pin_the_versions_this_suite_runs_with():
    """The wheels carried to a GPU machine without a package index (benchmarks/gpu_wheels.py) are the versions of
    deepspeed, schedulefree, peft and trl that this suite is run with (setup.cfg's dev extra)."""
    from importlib.metadata import version

    from benchmarks.gpu_wheels import requirements

    pins = dict(line.split("==") for line in requirements() if "==" in line)
    assert set(pins) >= {"deepspeed", "schedulefree", "peft", "trl"}
    assert pins == {name: version(name) for name in pins}


def test_gpu_wheels_install_names_the_missing_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_wheels.py", "install", "--folder", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert f"No wheels in {tmp_path}: run `make gpu-wheels`" in proc.stderr
