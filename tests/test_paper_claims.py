"""benchmarks/paper_claims.py end to end at tiny sizes (`--quick`): the sweep, the seeds at the chosen lr, the
decay branches, the tables, the claims with their noise rule, the PNGs; and the GPU plan (`--gpu --dry-run`).

    pytest tests/test_paper_claims.py -q
"""

import importlib
import json
import math

import pytest


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.paper_claims")


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_claims")
    status = bench.main(["--quick", "--jobs", "1", "--out", str(out)])
    return out, status


def _results(out):
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}


def test_quick_benchmark_sweeps_then_repeats_the_best_lr_over_seeds(bench, quick_run):
    out, status = quick_run
    assert status == 0
    scale, R = bench.QUICK, _results(out)
    tasks = bench.plan(scale, R)
    assert all(t.name in R for t in tasks)  # nothing left to run
    assert len(tasks) == len(bench.full_plan(scale)) == len(R) == 39

    for config in bench.configs(scale):
        grid = bench.lr_grid(scale, config)
        sweep = {lr: R[f"{config.name}_lr{lr:g}_s0"]["final_loss"] for lr in grid}
        chosen = min(sweep, key=sweep.get)  # the lowest seed-0 final loss, read back from the files
        assert bench.best_lr(scale, config, R) == chosen
        others = [
            name
            for name in R
            if name.startswith(config.name + "_lr") and not name.endswith("_s0") and "decay" not in name
        ]
        assert others == [f"{config.name}_lr{chosen:g}_s1"]  # the other seed runs at the chosen lr only

    # seed s: the same initial weights and first batch for every method (the loss before the first update),
    # and not the same as another seed's
    first = {name: r["train"][0]["loss"] for name, r in R.items() if "train" in r and "-4x" not in name}
    assert len({v for k, v in first.items() if k.endswith("_s0")}) == 1
    seed1 = {v for k, v in first.items() if k.endswith("_s1")}
    assert len(seed1) == 1 and seed1 != {first["adamw_cosine_lr0.003_s0"]}

    # every run records what it cost
    assert all(r["cpu_seconds"] > 0 for r in R.values())
    for r in R.values():
        assert r["final_loss"] == pytest.approx(r["evals"][-1]["loss"]) and 0 < r["final_loss"] < 10
        if r["task"]["big_batch"]:  # same tokens as the base runs, in a quarter of the steps
            assert r["tokens_per_step"] * r["task"]["steps"] == scale.tokens_per_run

    # a WSD branch starts from the constant-lr run's checkpoint, for every seed, at the chosen lr
    lr = bench.best_lr(scale, bench.configs(scale)[0], R)
    for seed in scale.seeds:
        trunk = R[f"adamw_wsd_lr{lr:g}_s{seed}"]
        branch = R[f"adamw_wsd_lr{lr:g}_s{seed}-decay75"]
        start = branch["task"]["start"]
        assert branch["loss_before"] == pytest.approx(
            next(e["loss"] for e in trunk["evals"] if e["step"] == start), abs=1e-5
        )
        assert branch["loss_control"] == next(
            e["loss"] for e in trunk["evals"] if e["step"] == start + branch["task"]["decay_steps"]
        )

    sf = R[f"sf_b0.95_lr{bench.best_lr(scale, bench.configs(scale)[1], R):g}_s0"]
    assert all(
        {"loss_x", "loss_y", "xy_distance", "averaging_weight", "averaging_window"} <= set(e) for e in sf["evals"]
    )
    assert all(h["lr"] > 0 for r in R.values() if r["task"]["family"] == "sf_plus" for h in r["train"])

    claims = (out / "claims.txt").read_text().splitlines()
    assert [line.split(" ")[1] for line in claims] == ["1", "2", "3", "4", "(lr"]
    assert all(" -> " in line and "INCOMPLETE" not in line and "± " in line for line in claims)
    results = (out / "results.md").read_text()
    for heading in (
        "## Regime against the paper's",
        "## Learning-rate sweep",
        "## Final validation loss at the chosen",
        "## Claim 1",
        "## Claim 2",
        "## Claim 3",
        "## Claims",
    ):
        assert heading in results
    assert "| paper, 0.5M batch | 124M | 2.62B | 21 | 524,288 | 5,000 | 25 (C=200) |" in results
    for png in ("paper_claims_loss.png", "paper_claims_b1_spread.png"):
        assert (out / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_rule(bench):
    # per-seed differences +0.30, +0.25, +0.35: mean 0.30, SE 0.05/sqrt(3) = 0.0289 -> beyond 2 SE
    d, se = bench.paired([0.30, 0.25, 0.35], 3)
    assert d == pytest.approx(0.30) and se == pytest.approx(0.05 / math.sqrt(3))
    assert bench.verdict(d, se) == "HOLDS" and bench.verdict(-d, se) == "DOES NOT HOLD"
    assert bench.verdict(*bench.paired([0.30, -0.10, 0.10], 3)) == "WITHIN NOISE"  # mean 0.10, SE 0.115
    assert bench.paired([0.30, None, 0.10], 3) == (None, None)
    assert bench.verdict(None, None) == bench.INCOMPLETE


def test_rerun_skips_finished_runs_and_redoes_missing_ones(bench, quick_run, capsys):
    out, _ = quick_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    redo = next(p for p in stamps if p.parent.name.startswith("sf_b0.5_lr") and p.parent.name.endswith("_s1"))
    redo.unlink()
    capsys.readouterr()
    assert bench.main(["--quick", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{redo.parent.name}: final validation loss" in printed
    assert printed.count("final validation loss") == 1  # nothing else was retrained
    for path, stamp in stamps.items():
        if path != redo:
            assert path.stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["--quick", "--steps", "12", "--jobs", "1", "--out", str(out)])


def test_gpu_plan_is_the_124m_setting_with_the_same_protocol(bench, tmp_path, capsys):
    out = tmp_path / "gpu"
    assert bench.main(["--gpu", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # a plan only: nothing trained or written
    assert "'preset': 'llama-124m'" in printed and "GPU (bf16)" in printed
    assert "48 sweep runs" in printed and "85 tasks" in printed and "expected cost at 130,000" in printed
    tasks = bench.full_plan(bench.GPU)
    assert {t.steps for t in tasks if t.kind == "train"} == {500, 125}
    assert {t.batch * bench.GPU.block_size for t in tasks if t.kind == "train"} == {32_768, 131_072}
    assert bench.device_args(bench.GPU) == dict(use_cpu=False, bf16=True)
