"""benchmarks/paper_claims.py end to end at tiny sizes (`--quick`): every run, the tables, the claims, the PNGs.

    pytest tests/test_paper_claims.py -q
"""

import importlib
import json

import pytest


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    bench = importlib.import_module("benchmarks.paper_claims")
    out = tmp_path_factory.mktemp("paper_claims")
    status = bench.main(["--quick", "--jobs", "1", "--out", str(out)])
    return bench, out, status


def test_quick_benchmark_runs_every_run_and_writes_the_report(quick_run, capsys):
    bench, out, status = quick_run
    assert status == 0
    tasks = bench.build_tasks(bench.QUICK)
    names = {t.name for t in tasks}
    assert {"adamw_cosine", "adamw_wsd", "adamw_wsd-decay50", "adamw_wsd-decay75", "adamw_ema", "sf_b0.5",
            "sf_b0.95-decay75", "refined_c50_b0.9", "refined_c200_b0.95", "adamw_cosine-4x", "sf_b0.9-4x",
            "refined_c200_b0.5-4x"} <= names
    assert len([t for t in tasks if t.kind == "train"]) == 23 and len(tasks) == 31
    for task in tasks:
        result = json.loads((out / "runs" / task.name / "result.json").read_text())
        assert result["final_loss"] == pytest.approx(result["evals"][-1]["loss"])
        assert 0 < result["final_loss"] < 10
        if task.big_batch:  # same tokens as the base runs, in a quarter of the steps
            assert result["tokens_per_step"] * task.steps == 4 * bench.QUICK.batch * bench.QUICK.block_size * (
                bench.QUICK.steps // 4)

    # the one shared tokenized dataset, cached in the output folder
    assert (out / "data" / "ready").is_file() and (out / "data" / "tokenizer").is_dir()

    # a WSD branch starts from the constant-lr run's checkpoint: its loss at the start is that run's eval there
    wsd = json.loads((out / "runs" / "adamw_wsd" / "result.json").read_text())
    branch = json.loads((out / "runs" / "adamw_wsd-decay75" / "result.json").read_text())
    start = branch["task"]["start"]
    assert branch["loss_before"] == pytest.approx(next(e["loss"] for e in wsd["evals"] if e["step"] == start), abs=1e-5)
    assert branch["loss_control"] == next(e["loss"] for e in wsd["evals"]
                                          if e["step"] == start + branch["task"]["decay_steps"])

    # SF runs carry the river diagnostics at each evaluation
    sf = json.loads((out / "runs" / "sf_b0.9" / "result.json").read_text())
    assert all({"loss_x", "loss_y", "xy_distance", "averaging_weight", "averaging_window"} <= set(e)
               for e in sf["evals"])

    claims = (out / "claims.txt").read_text().splitlines()
    assert [line.split(" ")[1] for line in claims] == ["1", "2", "3", "4"]
    assert all("->" in line for line in claims)
    results = (out / "results.md").read_text()
    assert "## Final validation loss" in results and "| SF-AdamW b1=0.95 |" in results and "n/a |" not in results
    assert "| ScheduleFree+ (no lr) |" in results and "## ScheduleFree+ next to SF" in results
    plus = json.loads((out / "runs" / "sf_plus" / "result.json").read_text())
    assert all(h["lr"] > 0 for h in plus["train"])  # the Polyak step, logged as the learning rate
    for png in ("paper_claims_loss.png", "paper_claims_b1_spread.png", "paper_claims_river.png"):
        assert (out / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_runs_and_redoes_missing_ones(quick_run, capsys):
    bench, out, _ = quick_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    (out / "runs" / "sf_b0.5" / "result.json").unlink()
    capsys.readouterr()
    assert bench.main(["--quick", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sf_b0.5: final validation loss" in printed
    assert printed.count("final validation loss") == 1  # nothing else was retrained
    for path, stamp in stamps.items():
        if path.parent.name != "sf_b0.5":
            assert path.stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["--quick", "--steps", "12", "--jobs", "1", "--out", str(out)])
