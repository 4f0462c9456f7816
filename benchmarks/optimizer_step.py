"""Optimizer-step time and memory: sf_hf's Schedule-Free AdamW against torch's AdamW and `schedulefree`.

    python benchmarks/optimizer_step.py                     # 10M, 50M, llama-124m float32 and 50M bf16
    python benchmarks/optimizer_step.py --quick             # a smoke run: 2M float32, a few repeats
    python benchmarks/optimizer_step.py --sizes 50M --bf16-sizes "" --repeats 30
    OMP_WAIT_POLICY=PASSIVE python benchmarks/optimizer_step.py   # for a CPU-time column without spin-waits

Every optimizer of a case steps the same parameters with the same gradients (the values differ from a
real run, the work does not): the gradients are restored from a pristine copy before every timed step,
since `schedulefree` divides them in place. Repeats are interleaved, one step of each optimizer in
turn, in a rotating order, so a slow moment of a shared machine hits all of them; the table's ratios are
the median of the per-repeat ratios. The target lines at the end are measured apart, closer: each
comparison (a step and its baseline) takes `--pairs` pairs of steps back to back, in alternating order,
and its ratio is the median of the pairs' ratios (see `back_to_back_ratios`). Columns:

* median / min ms: wall-clock time of `step()`.
* cpu ms: median CPU time of the process during the step (all threads). On a shared machine it shows the
  work a step costs while the wall clock also shows the waiting; OpenMP threads spin while they wait
  unless OMP_WAIT_POLICY=PASSIVE, and that spinning is counted.
* GB/s: the minimum traffic of the update (read param, grad and state, write param and state:
  3 x param bytes + 2 x state bytes per parameter, 28 for float32 AdamW and SF-AdamW) over the median
  time. The foreach implementations move more than that; this is what the hardware would allow.
* peak extra MiB: how much the process's resident memory grows during one step, read from the kernel
  (VmHWM after resetting it), with glibc told to mmap every allocation >= 64 KiB so that freed
  temporaries are really returned and new ones really counted. An upper bound at page resolution.
* state B/param: bytes of every tensor in `optimizer.state`, per parameter.

The plain SF rows include the optimizer's own non-finite check (a non-finite gradient skips the whole
step before any state is written), which reads every gradient once more. Training loops measure the
gradient norm anyway (`Trainer` does at every step, clipping or not) and `ScheduleFreeTrainer` hands
it to the optimizer as the check (`set_grad_norm`): the "norm handed over" rows are the step as it
runs there, and the "+ clip_grad_norm_" rows the whole of it, norm and clipping included, against
AdamW's. The other indented rows take the check apart: the step without it, and the check alone.
"""

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch._dynamo.utils
from common import (
    LLAMA_124M,
    PeakExtraRSS,
    PeakMemory,
    llama_shapes,
    load_average,
    machine_summary,
    named_or_counted_shapes,
    return_freed_memory_to_os,
)
from torch.nn.utils import clip_grad_norm_, get_total_norm

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, ScheduleFreePlusAdamW
from sf_hf.optim import kernels
from sf_hf.optim.kernels import StepScalars, all_finite, fused_step

try:
    import schedulefree
except ImportError:  # a dev extra: its row is left out
    schedulefree = None

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SF_HPARAMS = dict(lr=2e-3, betas=(0.95, 0.99), weight_decay=0.1)  # the paper's LM settings
ADAMW_HPARAMS = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
TARGET_RATIO, TARGET_SPEEDUP, TARGET_STATE_BYTES = 1.10, 3.0, 8.0
MAX_GRAD_NORM = 1.0  # TrainingArguments' default
SF_ROWS = ("sf_hf SF-AdamW fused", "sf_hf refined SF-AdamW fused")
REFERENCE_ROW = "schedulefree AdamWScheduleFree (foreach)"


@dataclass
class Row:
    name: str
    step: Callable[[], object]
    traffic: float  # minimum bytes moved per parameter
    optimizer: torch.optim.Optimizer | None = None
    indent: bool = False
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first: float = math.nan
    peak: int | None = None


def shapes_for(size: str) -> list[tuple]:
    """llama-124m / llama-1b (their Llamas' shapes) or a count in 4 tensors, as a small model's big matrices."""
    return named_or_counted_shapes(size, 4)


def update_traffic(dtype: torch.dtype, states: int, state_dtype: torch.dtype | None = None) -> int:
    """The minimum bytes an update moves per parameter: param, grad and `states` state tensors read, param and
    states written (float32 AdamW and SF-AdamW: 3 x 4 + 2 x 2 x 4 = 28)."""
    state_bytes = torch.finfo(state_dtype or dtype).bits // 8
    return 3 * (torch.finfo(dtype).bits // 8) + 2 * states * state_bytes


def with_check(optimizer: ScheduleFreeAdamW, check: Callable) -> Callable[[], object]:
    def step():
        optimizer._grads_finite = check  # an instance attribute shadows the class's staticmethod
        try:
            return optimizer.step()
        finally:
            del optimizer._grads_finite

    return step


def with_handed_norm(optimizer: ScheduleFreeAdamW, norm: torch.Tensor) -> Callable[[], object]:
    """The step as `ScheduleFreeTrainer` takes it: the norm its loop measured anyway is the non-finite check."""

    def step():
        optimizer.set_grad_norm(norm)
        return optimizer.step()

    return step


def after_clipping(params, step: Callable[[], object], optimizer=None) -> Callable[[], object]:
    """`clip_grad_norm_` and the step, as `Trainer` runs them; the norm goes to `optimizer` if given."""

    def clip_and_step():
        norm = clip_grad_norm_(params, MAX_GRAD_NORM)
        if optimizer is not None:
            optimizer.set_grad_norm(norm)
        return step()

    return clip_and_step


def make_rows(params, grads, dtype) -> list[Row]:
    param_bytes = torch.finfo(dtype).bits // 8
    sf_traffic = update_traffic(dtype, 2, torch.float32)  # z and v are float32 for every parameter dtype
    native_traffic = update_traffic(dtype, 2)  # AdamW and schedulefree keep state in the param dtype
    sf = ScheduleFreeAdamW(params, fused=True, **SF_HPARAMS)
    refined = RefinedScheduleFreeAdamW(params, fused=True, decoupling_c=200.0, **SF_HPARAMS)
    twin = ScheduleFreeAdamW(params, fused=False, **SF_HPARAMS)
    adamw_fused = torch.optim.AdamW(params, fused=True, **ADAMW_HPARAMS)
    adamw_foreach = torch.optim.AdamW(params, foreach=True, **ADAMW_HPARAMS)
    for optimizer in (sf, refined, twin):
        optimizer.train()
    rows = [
        Row("torch AdamW fused", adamw_fused.step, native_traffic, adamw_fused),
        Row("torch AdamW foreach", adamw_foreach.step, native_traffic, adamw_foreach),
    ]
    if schedulefree is not None:
        reference = schedulefree.AdamWScheduleFree(params, foreach=True, warmup_steps=0, **SF_HPARAMS)
        reference.train()
        rows.append(Row(REFERENCE_ROW, reference.step, native_traffic, reference))
    norm = get_total_norm(grads)
    rows += [
        Row(SF_ROWS[0], sf.step, sf_traffic, sf),
        Row(SF_ROWS[1], refined.step, sf_traffic, refined),
        Row("sf_hf SF-AdamW foreach twin", twin.step, sf_traffic, twin),
        Row(f"{SF_ROWS[0]}, norm handed over", with_handed_norm(sf, norm), sf_traffic, sf, indent=True),
        Row(f"{SF_ROWS[1]}, norm handed over", with_handed_norm(refined, norm), sf_traffic, refined, indent=True),
        Row("SF-AdamW fused, no check", with_check(sf, lambda g: True), sf_traffic, sf, indent=True),
        Row("the check alone: all_finite", lambda: all_finite(grads), param_bytes, indent=True),
        Row("torch AdamW fused + clip_grad_norm_", after_clipping(params, adamw_fused.step), native_traffic),
        Row(f"{SF_ROWS[0]} + clip_grad_norm_", after_clipping(params, sf.step, sf), sf_traffic),
        Row(f"{SF_ROWS[1]} + clip_grad_norm_", after_clipping(params, refined.step, refined), sf_traffic),
    ]
    return rows


def target_comparisons(rows: list[Row]) -> list[tuple[str, str]]:
    """The (row, baseline) pairs whose time ratio an issue-7 target bounds, among `rows`."""
    names = {row.name for row in rows}
    comparisons = []
    for name in SF_ROWS:
        comparisons += [
            (f"{name}, norm handed over", "torch AdamW fused"),
            (f"{name} + clip_grad_norm_", "torch AdamW fused + clip_grad_norm_"),
            (REFERENCE_ROW, name),
        ]
    return [(a, b) for a, b in comparisons if a in names and b in names]


def state_bytes_per_param(optimizer: torch.optim.Optimizer, n_params: int) -> float:
    tensors = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors) / n_params


def run_case(size: str, dtype_name: str, args) -> dict:
    dtype = DTYPES[dtype_name]
    shapes = shapes_for(size)
    n = sum(math.prod(s) for s in shapes)
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((0.02 * torch.randn(s, generator=generator)).to(dtype)) for s in shapes]
    pristine = [torch.randn(s, generator=generator).to(dtype) for s in shapes]
    for p, g in zip(params, pristine):
        p.grad = g.clone()
    grads = [p.grad for p in params]
    rows = make_rows(params, grads, dtype)

    def timed(row: Row) -> tuple[float, float]:
        torch._foreach_copy_(grads, pristine)
        start, start_cpu = time.perf_counter(), time.process_time()
        row.step()
        return time.perf_counter() - start, time.process_time() - start_cpu

    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for row in rows:  # warm up; the first step of each row builds its state (and compiles, for fused)
        row.first = timed(row)[0]
        for _ in range(args.warmup - 1):
            timed(row)
    new_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    for repeat in range(args.repeats):
        shift = repeat % len(rows)
        for row in rows[shift:] + rows[:shift]:
            wall, cpu = timed(row)
            row.times.append(wall)
            row.cpu.append(cpu)
    pairs = {}
    if dtype == torch.float32:  # the targets are for float32
        by_name = {row.name: row for row in rows}
        for a, b in target_comparisons(rows):
            pairs[a, b] = back_to_back_ratios(by_name[a], by_name[b], timed, args.pairs)
    for row in rows:
        torch._foreach_copy_(grads, pristine)
        with PeakExtraRSS() as peak:
            row.step()
        row.peak = peak.bytes
    return dict(size=size, dtype=dtype_name, n=n, tensors=len(shapes), rows=rows, new_graphs=new_graphs, pairs=pairs)


# ------------------------------------------------------------------ one optimizer at a time, on any device


def device_rows(params: list, grads: list, dtype: torch.dtype) -> list[tuple[str, Callable, int]]:
    """(name, make, traffic) per optimizer of `device_case`; `make()` returns (optimizer, step), the step as a
    training loop takes it (`ScheduleFreeTrainer` hands over the gradient norm; ScheduleFree+ also needs the loss)."""
    sf_traffic, native_traffic = update_traffic(dtype, 2, torch.float32), update_traffic(dtype, 2)
    norm = get_total_norm(grads)

    def sf(cls, handed=True, **kwargs):
        def make():
            optimizer = cls(params, **kwargs)
            optimizer.train()
            return optimizer, with_handed_norm(optimizer, norm) if handed else optimizer.step

        return make

    def plus():
        optimizer = ScheduleFreePlusAdamW(params, fused=True)
        optimizer.train()
        handed = with_handed_norm(optimizer, norm)
        loss = torch.tensor(3.0, device=params[0].device)

        def step():
            optimizer.set_loss(loss)
            return handed()

        return optimizer, step

    def adamw(**kwargs):
        def make():
            optimizer = torch.optim.AdamW(params, **kwargs, **ADAMW_HPARAMS)
            return optimizer, optimizer.step

        return make

    rows = [
        ("torch AdamW fused", adamw(fused=True), native_traffic),
        ("torch AdamW foreach", adamw(foreach=True), native_traffic),
        (f"{SF_ROWS[0]}, norm handed over", sf(ScheduleFreeAdamW, fused=True, **SF_HPARAMS), sf_traffic),
        (SF_ROWS[0], sf(ScheduleFreeAdamW, handed=False, fused=True, **SF_HPARAMS), sf_traffic),
        (
            f"{SF_ROWS[1]}, norm handed over",
            sf(RefinedScheduleFreeAdamW, fused=True, decoupling_c=200.0, **SF_HPARAMS),
            sf_traffic,
        ),
        ("sf_hf SF-AdamW foreach twin, norm handed over", sf(ScheduleFreeAdamW, fused=False, **SF_HPARAMS), sf_traffic),
        ("sf_hf ScheduleFree+ fused, norm handed over", plus, update_traffic(dtype, 3, torch.float32)),
    ]
    if schedulefree is not None:
        make = sf(schedulefree.AdamWScheduleFree, handed=False, foreach=True, warmup_steps=0, **SF_HPARAMS)
        rows.append((REFERENCE_ROW, make, native_traffic))
    return rows


def device_case(size: str, dtype_name: str, device: torch.device, warmup: int, repeats: int) -> dict:
    """Every optimizer of `device_rows` on the same parameters and gradients on `device`, one at a time (all at
    once would hold seven optimizer states: ~70 GB at 1B float32 parameters). Per optimizer: the first step
    (state creation and compiling), `warmup` more untimed, then `repeats` timed (CUDA events on a GPU); the
    peak of the memory allocated while it lived, over the parameters and gradients, and its state bytes."""
    device, dtype = torch.device(device), DTYPES[dtype_name]
    shapes = shapes_for(size)
    n = sum(math.prod(s) for s in shapes)
    generator = torch.Generator(device).manual_seed(0)
    params = [torch.nn.Parameter((0.02 * torch.randn(s, generator=generator, device=device)).to(dtype)) for s in shapes]
    pristine = [torch.randn(s, generator=generator, device=device).to(dtype) for s in shapes]
    for p, g in zip(params, pristine):
        p.grad = g.clone()
    grads = [p.grad for p in params]

    def timed(step: Callable) -> float:
        torch._foreach_copy_(grads, pristine)  # schedulefree divides the gradients in place
        if device.type != "cuda":
            start = time.perf_counter()
            step()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    rows = []
    for name, make, traffic in device_rows(params, grads, dtype):
        with PeakMemory(device) as peak:
            optimizer, step = make()
            begin = time.perf_counter()
            timed(step)
            first = time.perf_counter() - begin
            for _ in range(warmup):
                timed(step)
            times = [timed(step) for _ in range(repeats)]
        state = state_bytes_per_param(optimizer, n)
        del optimizer, step
        median = statistics.median(times)
        rows.append(
            dict(
                name=name,
                median_ms=median * 1e3,
                min_ms=min(times) * 1e3,
                first_step_s=first,
                traffic_bytes_per_param=traffic,
                gb_s=traffic * n / median / 1e9,
                peak_extra_bytes_per_param=None if peak.bytes is None else peak.bytes / n,
                state_bytes_per_param=state,
            )
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    adamw = rows[0]["median_ms"]
    for row in rows:
        row["x_adamw_fused"] = row["median_ms"] / adamw
    return dict(size=size, dtype=dtype_name, params=n, tensors=len(shapes), device=str(device), rows=rows)


def back_to_back_ratios(a: Row, b: Row, timed: Callable[[Row], tuple[float, float]], count: int) -> dict:
    """`count` ratios of a's step time to b's, each from two steps taken back to back, a first in every other pair.

    The rotation of the table is fair to a slow minute of the machine, but not to what the step before left behind:
    there, the same step (norm handed over / no check, identical work) once came out 1.12x and 0.99x fused AdamW in
    one run. Adjacent steps in alternating order cancel both.
    """
    ratios = dict(times=[], cpu=[])
    for i in range(count):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        measured = {first.name: timed(first)}
        measured[second.name] = timed(second)
        for clock, (x, y) in zip(("times", "cpu"), zip(measured[a.name], measured[b.name])):
            ratios[clock].append(x / y)
    return {clock: statistics.median(values) for clock, values in ratios.items()}


def run_dispatch(args) -> None:
    """The per-call cost of the compiled step, on llama-124m's 110 tensors shrunk 10,000x (so the arithmetic is
    negligible and every tensor takes the one-thread kernel: no OpenMP barrier in the way): fused_step (CHUNK
    tensors per compiled call) against one compiled call per tensor, as before issue 7."""
    sizes = [max(2, math.prod(shape) // 10_000) for shape in llama_shapes(**LLAMA_124M)]
    assert max(sizes) < kernels.PARALLEL_MIN_NUMEL
    ys = [torch.randn(n) for n in sizes]
    zs, vs, gs = [y.clone() for y in ys], [torch.zeros_like(y) for y in ys], [torch.randn_like(y) for y in ys]
    scalars = StepScalars(2e-3, 0.01, 0.95, 0.99, 0.5, 1e-8, 0.1)
    per_tensor = torch.compile(kernels._fused_tensor_step, dynamic=True, fullgraph=True, options={"cpp.threads": 1})
    packed = torch.tensor(kernels._kernel_scalars(scalars))

    def one_call_per_tensor():  # the loop of fused_step before issue 7
        for y, z, v, g in zip(ys, zs, vs, gs):
            per_tensor(y.view(-1), z.view(-1), v.view(-1), g.reshape(-1), packed)

    rows = [
        Row(f"fused_step ({kernels.CHUNK} tensors per call)", lambda: fused_step(ys, zs, vs, gs, scalars), 0),
        Row("one compiled call per tensor (before)", one_call_per_tensor, 0),
    ]
    for row in rows:
        for _ in range(3):
            row.step()
    for repeat in range(5 * args.repeats):
        for row in rows[repeat % 2 :] + rows[: repeat % 2]:
            start, start_cpu = time.perf_counter(), time.process_time()
            row.step()
            row.times.append(time.perf_counter() - start)
            row.cpu.append(time.process_time() - start_cpu)
    print(
        f"\nDispatch cost: llama-124m's {len(sizes)} tensors shrunk 10,000x ({sum(sizes) / 1e3:.1f}k parameters), "
        "one thread:"
    )
    for row in rows:
        median = statistics.median(row.times)
        print(
            f"  {row.name:40s} {median * 1e3:7.2f} ms per step = {median / len(sizes) * 1e6:5.1f} us per tensor "
            f"(min {min(row.times) * 1e3:.2f} ms, cpu {statistics.median(row.cpu) * 1e3:.2f} ms)"
        )


def paired_ratio(a: Row, b: Row, clock: str = "times") -> float:
    """Median over repeats of a's time / b's time, each pair taken in the same round (clock: times or cpu)."""
    return statistics.median(x / y for x, y in zip(getattr(a, clock), getattr(b, clock)))


def print_case(case: dict) -> None:
    n, rows = case["n"], case["rows"]
    by_name = {row.name: row for row in rows}
    adamw = by_name["torch AdamW fused"]
    print(f"\n{case['size']} {case['dtype']}: {n / 1e6:.1f}M parameters in {case['tensors']} tensors")
    header = f"{'':52s}{'median ms':>10s}{'min ms':>9s}{'cpu ms':>9s}{'GB/s':>7s}{'x AdamW fused':>15s}"
    print(header + f"{'peak extra MiB':>16s}{'state B/param':>15s}")
    for row in rows:
        median = statistics.median(row.times)
        name = ("  " + row.name) if row.indent else row.name
        peak = f"{row.peak / 2**20:.1f}" if row.peak is not None else "n/a"
        state = f"{state_bytes_per_param(row.optimizer, n):.1f}" if row.optimizer and not row.indent else "-"
        print(
            f"{name:52s}{median * 1e3:10.2f}{min(row.times) * 1e3:9.2f}{statistics.median(row.cpu) * 1e3:9.2f}"
            f"{row.traffic * n / median / 1e9:7.1f}{paired_ratio(row, adamw):15.3f}{peak:>16s}{state:>15s}"
        )
    sf = by_name["sf_hf SF-AdamW fused"]
    print(
        f"first SF-AdamW fused step (state creation + compiling {case['new_graphs']} graphs, or loading them from "
        f"the cache): {sf.first:.2f} s; median step {statistics.median(sf.times) * 1e3:.1f} ms"
    )


def print_targets(case: dict) -> list[bool]:
    """One line per target of issue 7, for a float32 case."""
    n, rows, pairs = case["n"], {row.name: row for row in case["rows"]}, case["pairs"]
    adamw = rows["torch AdamW fused"]
    where = f"[{case['size']} {case['dtype']}]"
    results = []

    def report(ok: bool, text: str) -> None:
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'} {where} {text}")

    full_size = 4 * n  # one float32 temporary the size of the model
    for name in SF_ROWS:
        row = rows[name]
        ratio = pairs[f"{name}, norm handed over", "torch AdamW fused"]
        report(
            ratio["times"] <= TARGET_RATIO,
            f"{name}, norm handed over (as ScheduleFreeTrainer steps): "
            f"{ratio['times']:.3f}x fused AdamW (target <= {TARGET_RATIO:.2f}x; CPU time {ratio['cpu']:.3f}x)",
        )
        ratio = pairs[f"{name} + clip_grad_norm_", "torch AdamW fused + clip_grad_norm_"]
        report(
            ratio["times"] <= TARGET_RATIO,
            f"{name} + clip_grad_norm_: {ratio['times']:.3f}x fused AdamW + "
            f"clip_grad_norm_ (target <= {TARGET_RATIO:.2f}x; CPU time {ratio['cpu']:.3f}x)",
        )
        print(
            f"note {where} {name} alone, reading every gradient for its own check (no norm handed over; AdamW "
            f"checks nothing): {paired_ratio(row, adamw):.3f}x fused AdamW in the table's rotation"
        )
        if (REFERENCE_ROW, name) in pairs:
            speedup = pairs[REFERENCE_ROW, name]
            report(
                speedup["times"] >= TARGET_SPEEDUP,
                f"{name}: {speedup['times']:.2f}x faster than "
                f"schedulefree.AdamWScheduleFree (target >= {TARGET_SPEEDUP:.0f}x; CPU time {speedup['cpu']:.2f}x)",
            )
        state = state_bytes_per_param(row.optimizer, n)
        report(state <= TARGET_STATE_BYTES, f"{name}: state {state:.2f} bytes/param (target {TARGET_STATE_BYTES:.0f})")
        if row.peak is not None:
            report(
                row.peak <= full_size,
                f"{name}: peak extra memory during the step {row.peak / 2**20:.1f} MiB = {row.peak / full_size:.3f} "
                f"of one full-size float32 temporary ({full_size / 2**20:.0f} MiB; target <= 1)",
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="10M,50M,llama-124m",
        help="comma-separated parameter counts (4 tensors "
        "each) and/or llama-124m (its 110 tensors); '' with --bf16-sizes '' for the dispatch cost only",
    )
    parser.add_argument("--bf16-sizes", default="50M", help="sizes also run with bfloat16 parameters ('' for none)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per optimizer and case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer first")
    parser.add_argument("--pairs", type=int, default=24, help="back-to-back step pairs per target comparison")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: 2M float32, 3 repeats")
    parser.add_argument(
        "--compile-cache",
        choices=["fresh", "default"],
        default=None,
        help="torch.compile's on-disk cache: 'fresh' (an empty one: the first step shows the real "
        "compile cost; default of a full run) or 'default' (the user's; default with --quick)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.pairs < 1:
        parser.error("--repeats and --pairs must be at least 1.")
    if args.quick:
        args.sizes, args.bf16_sizes, args.repeats, args.warmup, args.pairs = "2M", "", 3, 2, 4
    cache = args.compile_cache or ("default" if args.quick else "fresh")
    fresh_cache = tempfile.mkdtemp(prefix="sf_hf_inductor_") if cache == "fresh" else None
    if fresh_cache:
        import os

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh_cache

    print(machine_summary())
    honest_memory = return_freed_memory_to_os()
    print(
        f"compile cache: {cache}; glibc mmap threshold fixed at 64 KiB: {honest_memory}; "
        f"schedulefree {'installed' if schedulefree else 'missing: its row is left out'}"
    )
    plan = [(size, "float32") for size in args.sizes.split(",") if size.strip()]
    plan += [(size, "bfloat16") for size in args.bf16_sizes.split(",") if size.strip()]
    cases = []
    try:
        for size, dtype_name in plan:
            cases.append(run_case(size.strip(), dtype_name, args))
            print_case(cases[-1])
        run_dispatch(args)
    finally:
        if fresh_cache:
            shutil.rmtree(fresh_cache, ignore_errors=True)
    if not cases:
        return
    first_steps = [(case, next(row for row in case["rows"] if row.name == "sf_hf SF-AdamW fused")) for case in cases]
    print(
        f"\nOne-time compile cost (cache: {cache}): "
        + "; ".join(
            f"{c['size']} {c['dtype']}: first step {row.first:.1f} s, {c['new_graphs']} graphs"
            for c, row in first_steps
        )
    )

    print(
        f"\nTargets (issue 7; CPU float32; time ratios are medians over {args.pairs} pairs of steps taken back to "
        f"back in alternating order), load average {load_average()}:"
    )
    results = [ok for case in cases if case["dtype"] == "float32" for ok in print_targets(case)]
    print(f"{sum(results)} of {len(results)} target checks pass")


if __name__ == "__main__":
    main()
