"""What exact x/y switches cost: time per eval()/train() and the size of a checkpoint's optimizer state.

    python benchmarks/switch_cost.py                        # llama-124m's 110 tensors, float32 and bf16
    python benchmarks/switch_cost.py --size 10M --repeats 5

`eval()` now keeps a host copy of y and `train()` recomputes x from it (one tensor at a time, the same code path)
to check that the parameters still hold it before writing y back; before, `train()` only lerped x toward z.
Rows, each the median over `--repeats` interleaved repeats after one untimed round (wall clock, ms):

* eval(): copy of y + the lerp y -> x (as before, plus the copy);
* train(), exact: the check (x recomputed from the kept y, compared bit for bit) + the copy back;
* train(), lerp: the lerp x -> y alone (what train() did before, and does when the check fails);
* the lerp y -> x alone (what eval() did before).

The optimizer state of a checkpoint (torch.save of `state_dict()`, in bytes): written in train mode (z and v only)
and in eval mode (plus the kept y, in the parameters' dtype), as the Trainer writes it.
"""

import argparse
import io
import statistics
import time

import torch
from common import machine_summary, named_or_counted_shapes

from sf_hf import ScheduleFreeAdamW
from sf_hf.optim import x_to_y_, y_to_x_


def timed(function, device: torch.device) -> float:
    """Milliseconds of wall clock, the device's queued work included."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return (time.perf_counter() - start) * 1e3


def serialized_bytes(state_dict: dict) -> int:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def run_case(
    size: str, dtype: torch.dtype, repeats: int, device: str = "cpu", fused: bool = False, state_sizes: bool = True
) -> dict:
    """The switch rows for `size` (llama-124m, llama-1b or a count in 4 tensors) on `device`; `fused`: the optimizer
    steps and switches through the compiled pass (groups of >= 4M elements); `state_sizes`: also serialize the
    optimizer state in both modes (slow for billions of parameters)."""
    torch.manual_seed(0)
    device = torch.device(device)
    shapes = named_or_counted_shapes(size, 4)
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype, device=device) * 0.02) for s in shapes]
    n = sum(p.numel() for p in params)
    optimizer = ScheduleFreeAdamW(params, lr=1e-3, betas=(0.9, 0.99), fused=fused)
    optimizer.train()
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        optimizer.step()
    beta1 = optimizer.param_groups[0]["betas"][0]
    zs = [optimizer.state[p]["z"] for p in params]
    rows = {"eval()": [], "train(), exact": [], "train(), lerp (before)": [], "lerp y -> x (eval before)": []}
    optimizer.eval()  # one untimed round trip of each kind first: the fused pass compiles at its first call
    optimizer.train()
    y_to_x_(params, zs, beta1, fused=fused)
    x_to_y_(params, zs, beta1, fused=fused)
    for _ in range(repeats):
        rows["eval()"].append(timed(optimizer.eval, device))
        rows["train(), exact"].append(timed(optimizer.train, device))
        optimizer.eval()
        optimizer._kept_y.clear()  # what train() found before: nothing kept, so the lerp
        rows["train(), lerp (before)"].append(timed(optimizer.train, device))
        rows["lerp y -> x (eval before)"].append(timed(lambda: y_to_x_(params, zs, beta1, fused=fused), device))
        x_to_y_(params, zs, beta1, fused=fused)
    case = dict(
        size=size,
        dtype=str(dtype).replace("torch.", ""),
        params=n,
        device=str(device),
        fused=fused,
        ms={k: statistics.median(v) for k, v in rows.items()},
    )
    if state_sizes:
        case["train_mode_bytes"] = serialized_bytes(optimizer.state_dict())
        optimizer.eval()
        case["eval_mode_bytes"] = serialized_bytes(optimizer.state_dict())
    return case


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="llama-124m", help="llama-124m or a parameter count (4 tensors)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print(machine_summary())
    for name in args.dtypes.split(","):
        case = run_case(args.size, getattr(torch, name), args.repeats)
        print(
            f"\n{case['size']} {case['dtype']}: {case['params'] / 1e6:.1f}M parameters, {torch.get_num_threads()} "
            "threads, median ms"
        )
        for row, ms in case["ms"].items():
            print(f"  {row:<28} {ms:9.1f}")
        grown = case["eval_mode_bytes"] / case["train_mode_bytes"]
        print(
            f"  optimizer state: {case['train_mode_bytes'] / 2**20:.1f} MiB in train mode, "
            f"{case['eval_mode_bytes'] / 2**20:.1f} MiB in eval mode (x{grown:.2f}; "
            f"{(case['eval_mode_bytes'] - case['train_mode_bytes']) / case['params']:.2f} B/param more)"
        )


if __name__ == "__main__":
    main()
