"""Helpers shared by the benchmarks: the machine they ran on, model shapes, sizes, peak memory.

python -c "from benchmarks.common import machine_summary; print(machine_summary())"
"""

import ctypes
import os
import platform
import re
import subprocess

import torch

# sf_hf/models.py "llama-124m": 12 layers, width 768, SwiGLU MLP 2048, vocab 50,304 (GPT-2's, padded),
# input and output embeddings tied (GPT-2 small's 124M). No biases; RMSNorm weights only.
LLAMA_124M = dict(layers=12, width=768, mlp=2048, vocab=50304, tied_embeddings=True)
# ~1B: 18 layers of width 2048, SwiGLU 5632 (TinyLlama's widths, without its grouped K/V), the same vocabulary, tied:
# 1,027.9M parameters in 164 tensors.
LLAMA_1B = dict(layers=18, width=2048, mlp=5632, vocab=50304, tied_embeddings=True)
LLAMA_SIZES = {"llama-124m": LLAMA_124M, "llama-1b": LLAMA_1B}


def llama_shapes(layers: int, width: int, mlp: int, vocab: int, tied_embeddings: bool) -> list[tuple[int, ...]]:
    """The parameter shapes of a Llama (in `LlamaForCausalLM.named_parameters()` order)."""
    block = [(width, width)] * 4 + [(mlp, width), (mlp, width), (width, mlp), (width,), (width,)]
    shapes = [(vocab, width)] + block * layers + [(width,)]
    return shapes if tied_embeddings else shapes + [(vocab, width)]


def named_or_counted_shapes(size: str, tensors: int) -> list[tuple[int, ...]]:
    """A key of LLAMA_SIZES (its Llama's shapes) or a parameter count ('10M') split into `tensors` flat tensors."""
    if size.lower() in LLAMA_SIZES:
        return llama_shapes(**LLAMA_SIZES[size.lower()])
    count = parse_count(size)
    return [(count // tensors,)] * (tensors - 1) + [(count - (tensors - 1) * (count // tensors),)]


def parse_count(text: str) -> int:
    """'10M' -> 10_000_000, '1.5k' -> 1_500, '123' -> 123."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGbB]?)\s*", text)
    if not match:
        raise ValueError(f"Invalid size {text!r}: use a count such as 10M, 500k or 123456.")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_summary() -> str:
    memory = memory_gib()
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        + (f"memory {memory:.1f} GiB" if memory else "memory n/a")
        + f"; torch {torch.__version__}, Python {platform.python_version()}, load average {load_average()}"
    )


# Peak memory bandwidth (GB/s, the vendor's figure) by device name, first match wins: what a memory-bound step's
# "bytes moved / time" is compared with.
PEAK_BANDWIDTH_GBS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5 (reported as "NVIDIA H100 80GB HBM3")
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),  # the 40 GB cards, SXM4 and PCIe
)


def peak_bandwidth_gbs(device_name: str) -> float | None:
    """The peak memory bandwidth of a GPU named `device_name` (`torch.cuda.get_device_name()`), `None` if unknown."""
    return next((gbs for key, gbs in PEAK_BANDWIDTH_GBS if key.lower() in device_name.lower()), None)


# ------------------------------------------------------------------ peak memory of one block of code


def return_freed_memory_to_os(threshold: int = 64 * 1024) -> bool:
    """Asks glibc to mmap every allocation >= threshold bytes and unmap it on free.

    By default glibc raises its mmap threshold after the first large free (up to 32 MiB), after which
    freed temporaries stay in the heap and later ones reuse them without growing the resident set, so an
    RSS high-water mark would miss them. With a fixed threshold every large tensor is fresh memory.
    """
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, threshold) == 1  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakExtraRSS:
    """Peak growth of this process's resident memory while the block runs, in bytes (`None` if unknown).

    Linux only: writing 5 to /proc/self/clear_refs resets the high-water mark VmHWM to the current RSS.
    It counts every page the process touches in the block (tensors, Python objects, allocator arenas),
    so it is an upper bound on the block's temporaries, at page resolution.
    """

    def __enter__(self):
        self.bytes = None
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self._before = _status_kib("VmRSS")
        except OSError:
            self._before = None
        return self

    def __exit__(self, *exc):
        if self._before is not None:
            self.bytes = max(0, _status_kib("VmHWM") - self._before) * 1024
        return False


class PeakMemory:
    """Peak growth of the memory `device` holds while the block runs, in bytes (`None` if unknown).

    CUDA: `torch.cuda.max_memory_allocated` (tensors only, not the caching allocator's reserve) over what was
    allocated when the block began. CPU: `PeakExtraRSS`.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            self._rss = PeakExtraRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._before
        else:
            self._rss.__exit__(*exc)
            self.bytes = self._rss.bytes
        return False
