"""One prepared GPU check (issue 25): everything only a GPU shows, in one command, in under 8 minutes on an H100.

    make gpu-check                                   # on a machine with one CUDA GPU (docs/benchmarks.md)
    python benchmarks/gpu_check.py                   # the same, with the Python and torch at hand
    python benchmarks/gpu_check.py --cpu-smoke       # the same script on CPU at tiny sizes, < 1 min (the test suite's)
    python benchmarks/gpu_check.py --budget 300 --out DIR

Parts, in this order, each with its own time limit, within a total budget (`--budget`, 460 s on a GPU):

1. tests on the device: the x/y, checkpoint, exact-resume and fused-kernel tests with `SF_HF_TEST_DEVICE=cuda
   SF_HF_TEST_DTYPE=bfloat16` (tests/devices.py): the CPU suite's assertions, on CUDA with bf16 parameters;
2. optimizer step: `optimizer_step.device_case` at llama-124m and llama-1b, bf16 and float32: ms per step, the
   ratio to fused AdamW, bytes moved over time against the device's peak bandwidth, peak memory per parameter;
3. mode switch: `switch_cost.run_case` (eval()/train() of the optimizer) at the same sizes;
4. trainer: the 124M recipe (bf16, the bundled corpus) in `ScheduleFreeTrainer` against `Trainer` + fused AdamW,
   `trainer_throughput.compare`: tokens/s, their ratio and the evaluation loss at the end (SF at x);
5. the suite's `gpu`-marked tests (`pytest -m gpu`), last: the multi-process launches take the longest.

Each part runs in a process of its own (a crash or an out-of-memory error stays there) that is killed at its
limit; a failing part records its error and the next one starts. The report, `report.json` and `report.md`, is
rewritten after every part (and every benchmark case), in the folder printed at the start:
`$OUT/gpu_check-<UTC time>/` when OUT is set (what the device runner brings back), else
`benchmarks/results/gpu_check-<UTC time>/`. Exit status 0 only if every part passed.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# The x/y, checkpoint and exact-resume tests of the Trainer and the fused kernels' tests, run on the device.
DEVICE_TESTS = [
    "tests/test_exact_resume.py",
    "tests/test_fused.py",
    "tests/test_trainer.py::test_checkpoints_save_model_and_push_folder_hold_x",
    "tests/test_trainer.py::test_push_to_hub_uploads_x",
    "tests/test_trainer.py::test_evaluate_is_at_x_and_training_resumes_at_y",
    "tests/test_trainer.py::test_resume_is_bitwise_identical_to_an_uninterrupted_run",
]
RECIPE_124M = str(ROOT / "recipes" / "llama-124m" / "pretrain" / "config_sf_adamw_refined.yaml")

# What each part does, on a GPU and in the CPU smoke run; limit_s: the part's time limit in seconds.
PLANS = {
    "gpu": dict(
        device="cuda",
        budget_s=460,  # + start-up and report: < 8 min (480 s) on an H100
        env={},
        tests_on_device=dict(limit_s=110, paths=DEVICE_TESTS, env=dict(SF_HF_TEST_DTYPE="bfloat16")),
        optimizer_step=dict(
            limit_s=130, sizes=["llama-124m", "llama-1b"], dtypes=["bfloat16", "float32"], warmup=3, repeats=20
        ),
        switch=dict(limit_s=60, sizes=["llama-124m", "llama-1b"], dtypes=["bfloat16", "float32"], repeats=3),
        trainer=dict(
            limit_s=90,
            steps=100,
            warmup=10,
            repeats=1,
            warmup_run_steps=10,
            recipe_flags=[
                *("--config", RECIPE_124M, "--dataset_name", "embedded", "--streaming", "false"),
                *("--global_batch_size", "64", "--max_eval_blocks", "64", "--dataloader_num_workers", "4"),
            ],
        ),
        tests_gpu_marked=dict(limit_s=200, paths=["tests"], marker="gpu"),  # gets what is left: ~70 s
    ),
    "cpu-smoke": dict(
        device="cpu",
        budget_s=900,  # < 1 min of work; the limits leave room for a machine shared with other jobs
        env=dict(OMP_NUM_THREADS="1"),  # tiny tensors: threads only wait for each other on a small shared machine
        tests_on_device=dict(
            limit_s=240,
            paths=["tests/test_trainer.py::test_checkpoints_save_model_and_push_folder_hold_x"],
            env=dict(SF_HF_TEST_DTYPE="bfloat16"),
        ),
        optimizer_step=dict(limit_s=240, sizes=["16k", "64k"], dtypes=["bfloat16", "float32"], warmup=1, repeats=2),
        switch=dict(limit_s=240, sizes=["16k", "64k"], dtypes=["bfloat16", "float32"], repeats=2),
        trainer=dict(
            limit_s=240,
            steps=3,
            warmup=1,
            repeats=1,
            warmup_run_steps=0,
            recipe_flags=[
                *("--model_preset", "llama-tiny", "--block_size", "32", "--tokenizer_vocab_size", "300"),
                *("--global_batch_size", "4", "--per_device_train_batch_size", "4"),
                *("--max_train_blocks", "64", "--max_eval_blocks", "4"),
            ],
        ),
        tests_gpu_marked=dict(limit_s=240, paths=["tests/distributed/test_strategies.py"], marker="gpu"),
    ),
}
PARTS = ["tests_on_device", "optimizer_step", "switch", "trainer", "tests_gpu_marked"]
PYTEST_OUTCOME = r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)"


# ------------------------------------------------------------------ the parts that run in a process of their own


def each_case(plan: dict, run, save) -> dict:
    """`run(size, dtype)` for every dtype and size of the plan, saving after each; a case that fails (out of memory
    at 1B float32, say) is recorded in "errors" and the next one runs; the part fails at the end if any did."""
    result = dict(cases=[], errors=[])
    for dtype in plan["dtypes"]:
        for size in plan["sizes"]:
            try:
                result["cases"].append(run(size, dtype))
            except Exception as err:
                traceback.print_exc()
                result["errors"].append(f"{size} {dtype}: {type(err).__name__}: {err}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            save(result)
    if result["errors"]:
        raise SystemExit(f"{len(result['errors'])} case(s) failed: " + "; ".join(result["errors"]))
    return result


def optimizer_step_part(plan: dict, save) -> dict:
    from optimizer_step import device_case

    device = torch.device(plan["device"])
    return each_case(plan, lambda size, dtype: device_case(size, dtype, device, plan["warmup"], plan["repeats"]), save)


def switch_part(plan: dict, save) -> dict:
    from switch_cost import run_case

    fused = plan["device"] != "cpu"  # on a GPU the optimizer steps, and so switches, through the compiled pass

    def run(size: str, dtype: str) -> dict:
        return run_case(size, getattr(torch, dtype), plan["repeats"], plan["device"], fused, state_sizes=False)

    return each_case(plan, run, save)


def trainer_part(plan: dict, save) -> dict:
    from trainer_throughput import compare

    keys = ("steps", "warmup", "repeats", "warmup_run_steps")
    return compare(plan["recipe_flags"], **{k: plan[k] for k in keys}, evaluate=True)


CHILD_PARTS = {"optimizer_step": optimizer_step_part, "switch": switch_part, "trainer": trainer_part}


def run_child_part(name: str, plan: dict, result_path: Path) -> None:
    """In the part's own process: runs it, writing what it has to `result_path` after every case."""

    def save(result: dict) -> None:
        write_json(result_path, result)

    save(CHILD_PARTS[name](plan, save))


# ------------------------------------------------------------------ the parent: plan, limits, report


def write_json(path: Path, data: dict) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=1, default=str))
    partial.replace(path)


def run_limited(command: list[str], log: Path, limit: float, env: dict | None = None) -> tuple[int | None, float]:
    """Runs `command` with output to `log`, killing its whole process group at `limit` seconds.
    Returns (exit status or None if killed at the limit, seconds)."""
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            status = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
    return status, time.perf_counter() - start


def tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def part_environment(extra: dict) -> dict:
    """This process's environment, offline, with this checkout first on the import path and `extra` set."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def pytest_part(name: str, plan: dict, device: str, limit: float, folder: Path, env: dict) -> dict:
    """One pytest run; its per-test outcomes are read from the -v log, so a run killed at its limit keeps them."""
    env = part_environment(dict(env, SF_HF_TEST_DEVICE=device, **plan.get("env", {})))
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"]
    if "marker" in plan:
        command += ["-m", plan["marker"], "--continue-on-collection-errors"]
    command += plan["paths"]
    log = folder / f"{name}.log"
    status, seconds = run_limited(command, log, limit, env)
    outcomes = dict(re.findall(PYTEST_OUTCOME, log.read_text(errors="replace"), flags=re.MULTILINE))
    counts = {kind: sum(1 for o in outcomes.values() if o == kind) for kind in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    ok = status == 0 and counts["FAILED"] == counts["ERROR"] == 0
    result = dict(
        status="ok" if ok else ("timeout" if status is None else "failed"),
        seconds=seconds,
        limit_s=limit,
        command=" ".join([*(f"{k}={v}" for k, v in plan.get("env", {}).items()), "python", *command[1:]]),
        device=device,
        counts={kind.lower(): n for kind, n in counts.items()},
        tests=outcomes,
    )
    if not ok:
        result["error"] = tail(log)
    return result


def child_part(name: str, plan: dict, device: str, limit: float, folder: Path, env: dict) -> dict:
    result_path = folder / f"{name}.json"
    result_path.unlink(missing_ok=True)
    env = part_environment(env)
    spec = json.dumps(dict(plan, device=device))
    command = [sys.executable, str(Path(__file__)), "--part", name, "--spec", spec, "--result", str(result_path)]
    log = folder / f"{name}.log"
    status, seconds = run_limited(command, log, limit, env)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result_path.unlink(missing_ok=True)
    result.update(status="ok" if status == 0 else ("timeout" if status is None else "failed"), seconds=seconds)
    result["limit_s"] = limit
    if status != 0:
        result["error"] = tail(log)
    return result


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    from common import machine_summary, peak_bandwidth_gbs

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    env = dict(
        device=device,
        device_name=platform.processor() or platform.machine(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        host=machine_summary(),
        sf_hf_commit=commit.stdout.strip() or None,
        packages={
            name: package_version(name)
            for name in ("transformers", "accelerate", "triton", "deepspeed", "schedulefree")
        },
        peak_bandwidth_gbs=None,
    )
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=props.name,
            device_memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            peak_bandwidth_gbs=peak_bandwidth_gbs(props.name),
        )
    return env


def children_cpu_s() -> float:
    """CPU seconds of the finished child processes (and theirs): a part's work, whatever else the machine runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report_folder(out: str | None) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(out) if out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results")
    return base / f"gpu_check-{stamp}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (< 1 min): the test suite's run")
    parser.add_argument("--budget", type=float, default=None, help="total seconds for all parts (GPU 460, smoke 900)")
    parser.add_argument(
        "--out",
        default=None,
        help="the report goes to OUT/gpu_check-<UTC time>/ (default: $OUT, else benchmarks/results)",
    )
    parser.add_argument("--part", choices=sorted(CHILD_PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:  # the process of one part, started by the parent below
        run_child_part(args.part, json.loads(args.spec), Path(args.result))
        return 0

    from gpu_check_report import render_markdown

    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    plan = PLANS[mode]
    device = plan["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device. On a GPU machine "
            "install the CUDA build of torch first (docs/benchmarks.md, 'GPU check'); on CPU run --cpu-smoke."
        )
    folder = report_folder(args.out)
    folder.mkdir(parents=True)
    print(f"gpu_check ({mode}): report in {folder}", flush=True)
    started = time.perf_counter()
    budget = args.budget or plan["budget_s"]
    report = dict(
        mode=mode,
        started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        budget_s=budget,
        environment=environment(device),
        parts={},
    )

    def write_report() -> None:
        report["elapsed_s"] = time.perf_counter() - started
        own = resource.getrusage(resource.RUSAGE_SELF)
        report["cpu_s"] = own.ru_utime + own.ru_stime + children_cpu_s()
        write_json(folder / "report.json", report)
        (folder / "report.md").write_text(render_markdown(report))

    write_report()
    for name in PARTS:
        left = budget - (time.perf_counter() - started)
        limit = min(plan[name]["limit_s"], left)
        if limit < 5:
            report["parts"][name] = dict(status="skipped", error=f"no time left in the {budget:.0f} s budget")
        else:
            print(f"  {name} (limit {limit:.0f} s) ...", flush=True)
            run = pytest_part if name.startswith("tests_") else child_part
            cpu_before = children_cpu_s()
            report["parts"][name] = run(name, plan[name], device, limit, folder, plan["env"])
            report["parts"][name]["cpu_s"] = children_cpu_s() - cpu_before
            print(
                f"  {name}: {report['parts'][name]['status']} in {report['parts'][name]['seconds']:.1f} s", flush=True
            )
        write_report()
    failed = [name for name, part in report["parts"].items() if part["status"] != "ok"]
    print(
        f"gpu_check ({mode}) done in {report['elapsed_s']:.0f} s ({report['cpu_s']:.0f} s of CPU time); "
        f"not ok: {', '.join(failed) or 'none'}"
    )
    print(f"report: {folder / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
