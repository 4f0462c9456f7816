"""benchmarks/trainer_throughput.py at a tiny size: both arms (and their untimed warm-up runs) start from the same
weights on the same batches, so the only difference the benchmark measures is the trainer and the optimizer.

    pytest tests/test_trainer_throughput.py -q
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_both_arms_train_the_same_model_on_the_same_data_and_a_ratio_is_printed():
    flags = [
        "--steps",
        "3",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--warmup_run_steps",
        "1",
        "--model_preset",
        "llama-tiny",
        "--block_size",
        "32",
        "--tokenizer_vocab_size",
        "300",
        "--global_batch_size",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--max_train_blocks",
        "64",
        "--max_eval_blocks",
        "4",
    ]
    proc = subprocess.run(
        [sys.executable, "benchmarks/trainer_throughput.py", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    first_losses = re.findall(r"\{'loss': '([0-9.]+)'", out)  # logging_first_step: the loss before any update
    assert len(first_losses) == 6 and len(set(first_losses)) == 1, first_losses
    assert len(re.findall(r"repeat \d: (sf|adamw) +[0-9,]+ tokens/s", out)) == 4
    ratio = float(re.search(r"SF / AdamW throughput: ([0-9.]+)", out).group(1))
    assert 0.2 < ratio < 5
