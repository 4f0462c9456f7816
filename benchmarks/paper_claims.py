"""The paper's claims (../shared/PAPER.md) at small scale, side by side: `make paper`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py                   # full: ~25 min on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py --quick           # tiny sizes, ~1 min (the test)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py --report-only     # tables/plots from finished runs

Hardware: 2 CPU cores, no GPU; `--jobs 2` runs two trainings at once, one torch thread each (on a loaded
2-core machine one thread per process is several times faster than two threads in one process).

Setup (full): the embedded King James corpus (1,129 train / 60 validation chapters), a byte-level BPE of 2,048
tokens trained on the train split, blocks of 128 tokens; a 4-layer Llama of width 128 (4 heads, SwiGLU 344,
tied embeddings, 1.05M parameters). Batch 8 x 128 = 1,024 tokens per step, 480 steps = 492k tokens (~0.45
epoch); the 4x-batch runs take 32 x 128 = 4,096 tokens per step for 120 steps (the same tokens). Warmup 5% of
the steps, weight decay 0.1 on linear weights, AdamW lr 3e-3, betas (0.9, 0.95) and clipping 1.0; SF lr 6e-3,
b2 0.99, no clipping (the paper's choices, lrs scaled up for a 1M-parameter model). Validation: the first 128
validation blocks (16k tokens) at every 10% of the steps and at 75%. Every run starts from the same initial
weights and sees the same batches. Cost: ~2,700 CPU-seconds (0.16 s per 1,024-token step on one thread), so
~23 min on 2 idle cores with --jobs 2; the Schedule-Free step is the foreach twin (`sf_fused=False`), as the
compiled one would compile once per process and the step time is not what is measured here.

Runs (23 trainings plus 8 decay branches; names as in runs/NAME/result.json):
    adamw_cosine                   AdamW, cosine to 10% of the peak lr
    adamw_wsd                      AdamW, constant lr then a linear decay over the last 20% (the 100% branch);
                                   checkpoints at 40% and 60% of the steps, in its constant phase
    adamw_wsd-decay50, -decay75    WSD branches: from those checkpoints, a linear decay to 0 ending at 50% / 75%
    adamw_ema                      AdamW at constant lr, evaluated at an EMA of the weights (decay 0.99)
    sf_b{0.5,0.9,0.95}             SF-AdamW (vanilla); checkpoints at 40% and 60%
    sf_b*-decay50, -decay75        the same short decay from SF checkpoints (`sf_hf.pipeline.probe`)
    refined_c{50,200}_b*           refined SF-AdamW
    *-4x                           cosine, SF and refined again at 4x the batch and 1/4 of the steps
    sf_plus                        ScheduleFree+ (no lr: the Polyak step times --lr-sf-plus, default 1; Adam betas
                                   (0.9, 0.95), AdamC decay 1.0, c warmup = 2 x warmup), beside SF, refined, WSD
Each finished run writes runs/NAME/result.json at once; a rerun skips finished runs, so an interrupted
benchmark loses at most the runs in flight. The tokenized data is cached in OUT/data.

Outputs in OUT (default runs/paper_claims): results.md (tables), claims.txt (one line per claim) and
figures/paper_claims_{loss,b1_spread,river}.png (`--figures DIR` writes the PNGs there instead).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MATCH_TOL = 0.01  # nats: "matches" = within this of the other number (about 1% in perplexity)
INCOMPLETE = "INCOMPLETE (runs missing)"
SMALL_GAIN_RATIO = 0.25  # "gains little": the SF decay gains less than this fraction of AdamW's
B1S = (0.5, 0.9, 0.95)
CS = (50.0, 200.0)
PROBED = ("sf_b0.5", "sf_b0.9", "sf_b0.95")
BRANCH_POINTS = (0.5, 0.75)  # WSD/SF decay branches end here; the 100% branch is adamw_wsd itself
DECAY_FRACTION = 0.2  # a branch ending at p decays over the last 20% of its length, as adamw_wsd does
EVAL_FRACTIONS = tuple(round(0.1 * i, 2) for i in range(1, 11)) + (0.75,)


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark setting (full or quick)."""

    vocab_size: int
    block_size: int
    model: dict
    batch: int
    steps: int
    eval_blocks: int
    eval_batch: int
    lr_adamw: float
    lr_sf: float
    train_docs: Optional[int] = None  # use the first N train chapters (None: all)
    valid_docs: Optional[int] = None
    big_batch_factor: int = 4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    ema_decay: float = 0.99
    sf_plus_weight_decay: float = 1.0  # AdamC: scaled by the Polyak step squared, so not comparable to AdamW's 0.1
    lr_sf_plus: float = 1.0  # the multiplier of ScheduleFree+'s Polyak step (the authors' 1)
    seed: int = 0


FULL = Scale(
    vocab_size=2048, block_size=128,
    model=dict(preset="llama-small", num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=344),
    batch=8, steps=480, eval_blocks=128, eval_batch=64, lr_adamw=3e-3, lr_sf=6e-3,
)
QUICK = Scale(
    vocab_size=300, block_size=32,
    model=dict(preset="llama-tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
               num_key_value_heads=2, intermediate_size=64),
    batch=4, steps=8, eval_blocks=8, eval_batch=8, lr_adamw=3e-3, lr_sf=6e-3, train_docs=30, valid_docs=6,
)


@dataclass(frozen=True)
class Task:
    """One training run (kind "train") or one decay branch from a checkpoint of another run (kind "branch")."""

    name: str
    kind: str
    family: str  # adamw_cosine, adamw_wsd, adamw_ema, sf, refined, sf_plus
    optimizer_name: str
    batch: int
    steps: int
    b1: Optional[float] = None
    c: Optional[float] = None
    big_batch: bool = False
    save_at: tuple = ()
    source: Optional[str] = None  # branch: the run it starts from
    start: Optional[int] = None  # branch: the checkpoint's step
    decay_steps: Optional[int] = None

    @property
    def deps(self) -> tuple:
        return (self.source,) if self.source else ()


def branch_steps(steps: int, point: float) -> tuple:
    """(start, K) of a branch that ends at `point` of the steps and decays over its last DECAY_FRACTION."""
    end = round(point * steps)
    k = round(DECAY_FRACTION * end)
    return end - k, k


def build_tasks(scale: Scale) -> List[Task]:
    """All runs, in the order they are started (runs that branches need first)."""
    T, B = scale.steps, scale.batch
    saves = tuple(branch_steps(T, p)[0] for p in BRANCH_POINTS)
    sf = {b1: Task(f"sf_b{b1}", "train", "sf", "sf_adamw", B, T, b1=b1, save_at=saves) for b1 in B1S}
    trunk = Task("adamw_wsd", "train", "adamw_wsd", "adamw_wsd", B, T, save_at=saves)
    tasks = [trunk] + [sf[b1] for b1 in reversed(B1S)]
    for source in [trunk] + [t for t in sf.values() if t.name in PROBED]:
        for p in BRANCH_POINTS:
            start, k = branch_steps(T, p)
            family = "adamw_wsd" if source is trunk else "sf"
            tasks.append(Task(f"{source.name}-decay{round(100 * p)}", "branch", family, source.optimizer_name, B,
                              start + k, b1=source.b1, source=source.name, start=start, decay_steps=k))
    tasks += [Task("adamw_cosine", "train", "adamw_cosine", "adamw_cosine", B, T),
              Task("adamw_ema", "train", "adamw_ema", "adamw_ema", B, T)]
    tasks += [Task(f"refined_c{c:g}_b{b1}", "train", "refined", "sf_adamw_refined", B, T, b1=b1, c=c)
              for c in CS for b1 in B1S]
    tasks += [Task("sf_plus", "train", "sf_plus", "sf_plus", B, T)]
    f = scale.big_batch_factor
    big = dict(batch=B * f, steps=T // f, big_batch=True)
    tasks += [Task("adamw_cosine-4x", "train", "adamw_cosine", "adamw_cosine", **big)]
    tasks += [Task(f"sf_b{b1}-4x", "train", "sf", "sf_adamw", b1=b1, **big) for b1 in B1S]
    tasks += [Task(f"refined_c{c:g}_b{b1}-4x", "train", "refined", "sf_adamw_refined", b1=b1, c=c, **big)
              for c in CS for b1 in B1S]
    return tasks


# ---------------------------------------------------------------------------------------------- data


def prepare_data(out: Path, scale: Scale):
    """The tokenizer and packed train/validation blocks, built once and cached in OUT/data."""
    import datasets
    from transformers import PreTrainedTokenizerFast

    from sf_hf.data import load_text_dataset, pack_into_blocks, train_bpe_tokenizer

    folder = out / "data"
    if not (folder / "ready").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        corpus = load_text_dataset("embedded")
        train, valid = corpus["train"], corpus["validation"]
        if scale.train_docs:
            train = train.select(range(scale.train_docs))
        if scale.valid_docs:
            valid = valid.select(range(scale.valid_docs))
        tokenizer = train_bpe_tokenizer(train["text"], vocab_size=scale.vocab_size, model_max_length=scale.block_size)
        tokenizer.save_pretrained(folder / "tokenizer")
        pack_into_blocks(train, tokenizer, scale.block_size).save_to_disk(folder / "train")
        pack_into_blocks(valid, tokenizer, scale.block_size).save_to_disk(folder / "validation")
        (folder / "ready").write_text("ok\n")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    train = datasets.load_from_disk(str(folder / "train"))
    valid = datasets.load_from_disk(str(folder / "validation"))
    return tokenizer, train, valid.select(range(min(scale.eval_blocks, len(valid))))


# ---------------------------------------------------------------------------------------------- one run


def eval_steps(steps: int) -> List[int]:
    return sorted({max(1, round(f * steps)) for f in EVAL_FRACTIONS})


def run_dir(out: Path, name: str) -> Path:
    return out / "runs" / name


def read_result(out: Path, name: str) -> Optional[dict]:
    path = run_dir(out, name) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(out: Path, name: str, result: dict) -> None:
    path = run_dir(out, name) / "result.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1))
    os.replace(partial, path)


def training_config(scale: Scale, task: Task, output_dir: Path, **extra):
    from sf_hf import ScheduleFreeConfig

    schedule_free = task.family in ("sf", "refined")
    warmup = math.ceil(scale.warmup_fraction * task.steps)
    if task.family == "sf_plus":
        extra = dict(learning_rate=scale.lr_sf_plus, adam_beta1=0.9, adam_beta2=0.95,
                     weight_decay=scale.sf_plus_weight_decay, c_warmup=2 * warmup, max_grad_norm=0.0, **extra)
    else:
        extra = dict(learning_rate=scale.lr_sf if schedule_free else scale.lr_adamw,
                     adam_beta1=task.b1 if schedule_free else 0.9, adam_beta2=0.99 if schedule_free else 0.95,
                     weight_decay=scale.weight_decay, max_grad_norm=0.0 if schedule_free else 1.0, **extra)
    return ScheduleFreeConfig(
        output_dir=str(output_dir), optimizer_name=task.optimizer_name, decoupling_c=task.c or 200.0,
        ema_decay=scale.ema_decay, weight_decay_params="linear", warmup_steps=warmup, max_steps=task.steps,
        per_device_train_batch_size=task.batch,
        per_device_eval_batch_size=scale.eval_batch, logging_steps=max(1, task.steps // 20), eval_strategy="no",
        save_strategy="no", report_to="none", use_cpu=True, seed=scale.seed, data_seed=scale.seed,
        dataloader_num_workers=0, disable_tqdm=True, sf_fused=False, **extra,
    )


def _at_steps_callback(steps, flag: str):
    from transformers import TrainerCallback

    class AtSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in steps:
                setattr(control, flag, True)

    return AtSteps()


def run_training(out: Path, scale: Scale, task: Task, data) -> dict:
    import torch

    from sf_hf import ScheduleFreeTrainer
    from sf_hf.diagnostics import RiverDiagnosticsCallback
    from sf_hf.models import build_model

    tokenizer, train, valid = data
    folder = run_dir(out, task.name)
    torch.manual_seed(scale.seed)
    overrides = {k: v for k, v in scale.model.items() if k != "preset"}
    model = build_model(scale.model["preset"], len(tokenizer), scale.block_size, eos_token_id=tokenizer.eos_token_id,
                        **overrides)
    callbacks = [_at_steps_callback(set(eval_steps(task.steps)), "should_evaluate"),
                 _at_steps_callback(set(task.save_at), "should_save"), RiverDiagnosticsCallback()]
    if not scale.train_docs and not scale.valid_docs:  # the whole embedded corpus: `sf-hf probe` can rebuild it
        record = dict(data=dict(dataset_name="embedded", text_column="text", block_size=scale.block_size),
                      model=dict(scale.model, vocab_size=len(tokenizer)))
        (folder / "run_args.json").write_text(json.dumps(record, indent=2) + "\n")
    trainer = ScheduleFreeTrainer(model=model, args=training_config(scale, task, folder), train_dataset=train,
                                  eval_dataset=valid, processing_class=tokenizer, callbacks=callbacks)
    trainer.train()
    history = trainer.state.log_history
    evals = [{k.replace("eval_river_", "").replace("eval_", ""): v for k, v in h.items()}
             for h in history if "eval_loss" in h]
    return dict(final_loss=evals[-1]["loss"], evals=evals,
                train=[{"step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")}
                       for h in history if "loss" in h],
                parameters=sum(p.numel() for p in model.parameters()))


def run_branch(out: Path, scale: Scale, task: Task, data) -> dict:
    from sf_hf.pipeline.probe import probe_checkpoint

    _, train, valid = data
    source = read_result(out, task.source)
    checkpoint = run_dir(out, task.source) / f"checkpoint-{task.start}"
    work = run_dir(out, task.name) / "work"
    result = probe_checkpoint(
        checkpoint, decay_steps=task.decay_steps, train_dataset=train, eval_dataset=valid, output_dir=work,
        weight_decay_params="linear", max_grad_norm=0.0 if task.family == "sf" else 1.0, seed=scale.seed,
        data_seed=scale.seed, eval_batch_size=scale.eval_batch, use_cpu=True, sf_fused=False,
    )
    shutil.rmtree(work, ignore_errors=True)
    end = task.start + task.decay_steps
    control = next((e["loss"] for e in source["evals"] if e["step"] == end), None)
    return dict(final_loss=result.loss_after, loss_before=result.loss_before, loss_control=control,
                start_lr=result.start_lr, evals=[{"step": task.start, "loss": result.loss_before},
                                                 {"step": end, "loss": result.loss_after}])


def run_task(out: Path, scale: Scale, task: Task, data=None) -> dict:
    """Runs one task (if not finished) and writes its result.json."""
    done = read_result(out, task.name)
    if done is not None:
        return done
    data = data or prepare_data(out, scale)
    start = time.time()
    run_dir(out, task.name).mkdir(parents=True, exist_ok=True)
    result = (run_branch if task.kind == "branch" else run_training)(out, scale, task, data)
    result.update(task=asdict(task), tokens_per_step=task.batch * scale.block_size, seconds=time.time() - start)
    write_result(out, task.name, result)
    print(f"[paper_claims] {task.name}: final validation loss {result['final_loss']:.4f} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


# ---------------------------------------------------------------------------------------------- scheduling


def run_all(out: Path, scale: Scale, tasks: List[Task], jobs: int, threads: int) -> List[str]:
    """Runs every unfinished task (`jobs` at a time, in subprocesses when jobs > 1); returns the failed ones."""
    pending = [t for t in tasks if read_result(out, t.name) is None]
    failed: List[str] = []
    if not pending:
        return failed
    data = prepare_data(out, scale)
    if jobs <= 1:
        for task in pending:
            if not all(read_result(out, d) for d in task.deps):
                failed.append(task.name)
                continue
            try:
                run_task(out, scale, task, data)
            except Exception as err:  # one failed run must not lose the others: report it and go on
                print(f"[paper_claims] {task.name} FAILED: {err!r}", flush=True)
                failed.append(task.name)
        return failed
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: Dict[str, subprocess.Popen] = {}
    while pending or running:
        for task in list(pending):
            if len(running) >= jobs:
                break
            if any(d in failed for d in task.deps):
                pending.remove(task)
                failed.append(task.name)
            elif all(read_result(out, d) is not None for d in task.deps):
                pending.remove(task)
                command = [sys.executable, __file__, "--out", str(out), "--task", task.name, "--threads", str(threads)]
                log = open(logs / f"{task.name}.log", "w")
                running[task.name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                print(f"[paper_claims] started {task.name} (pid {running[task.name].pid})", flush=True)
        time.sleep(1.0)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                if process.returncode != 0 or read_result(out, name) is None:
                    failed.append(name)
                    print(f"[paper_claims] {name} FAILED (exit {process.returncode}); see {logs / name}.log",
                          flush=True)
                else:
                    print(f"[paper_claims] {name}: {read_result(out, name)['final_loss']:.4f}", flush=True)
        if not running and pending and not any(all(read_result(out, d) for d in t.deps) for t in pending):
            failed += [t.name for t in pending]  # what they start from failed or was not selected (--only)
            pending = []
    return failed


# ---------------------------------------------------------------------------------------------- report


def loss_at(result: Optional[dict], step: int) -> Optional[float]:
    if result is None:
        return None
    return next((e["loss"] for e in result["evals"] if e["step"] == step), None)


def fmt(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_signed(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def constant_adamw_at_end(ema: Optional[dict], step: int) -> Optional[float]:
    """Constant-lr AdamW at the last step: the raw iterate (y) of the AdamW + EMA run, which has the same lr."""
    if ema is None:
        return None
    return next((e.get("loss_y") for e in ema["evals"] if e["step"] == step), None)


def gap(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def spread(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return max(values) - min(values) if len(values) == len(B1S) else None


def report(out: Path, scale: Scale, tasks: List[Task], figures: Path) -> List[str]:
    """Writes results.md, claims.txt and the PNGs from the finished runs; returns the claim lines."""
    R = {t.name: read_result(out, t.name) for t in tasks}
    T = scale.steps
    tokens = lambda step, batch: step * batch * scale.block_size  # noqa: E731
    final = lambda name: R[name]["final_loss"] if R.get(name) else None  # noqa: E731

    md = ["# Paper claims at small scale: results", "",
          f"Model: {scale.model}, vocab {scale.vocab_size}, block {scale.block_size}; base batch {scale.batch} "
          f"x {scale.block_size} tokens for {T} steps ({tokens(T, scale.batch):,} tokens); 4x batch "
          f"{scale.batch * scale.big_batch_factor} for {T // scale.big_batch_factor} steps. lr AdamW "
          f"{scale.lr_adamw:g}, SF {scale.lr_sf:g}. Validation: {scale.eval_blocks} blocks. Loss in nats/token.", ""]

    md += ["## Final validation loss", "", "| method | batch x1 | batch x4 |", "|---|---|---|"]
    rows = [("AdamW cosine", "adamw_cosine"), ("AdamW WSD (decay over the last 20%)", "adamw_wsd"),
            ("AdamW + EMA (0.99)", "adamw_ema")]
    rows += [(f"SF-AdamW b1={b1}", f"sf_b{b1}") for b1 in B1S]
    rows += [(f"refined C={c:g} b1={b1}", f"refined_c{c:g}_b{b1}") for c in CS for b1 in B1S]
    rows.append(("ScheduleFree+ (no lr)", "sf_plus"))
    for label, name in rows:
        big = fmt(final(name + "-4x")) if name + "-4x" in R else "(not run)"
        md.append(f"| {label} | {fmt(final(name))} | {big} |")

    # ScheduleFree+ next to SF, refined and AdamW WSD: validation loss along the run
    plus = R.get("sf_plus")
    md += ["", "## ScheduleFree+ next to SF, refined and AdamW WSD", "",
           "ScheduleFree+ sets its own step (Polyak; `lr` multiplier 1): no lr was tuned for it. Polyak lr = its step "
           "size at the last logged step.", "",
           "| step | ScheduleFree+ | SF b1=0.9 | SF b1=0.95 | refined C=200 b1=0.95 | AdamW WSD |",
           "|---|---|---|---|---|---|"]
    for step in eval_steps(T):
        md.append(f"| {step} | " + " | ".join(fmt(loss_at(R.get(n), step)) for n in (
            "sf_plus", "sf_b0.9", "sf_b0.95", "refined_c200_b0.95", "adamw_wsd")) + " |")
    if plus:
        lrs = [h.get("lr") for h in plus["train"] if h.get("lr") is not None]
        md += ["", f"ScheduleFree+ Polyak lr: first {fmt(lrs[0] if lrs else None, 5)}, max "
                   f"{fmt(max(lrs) if lrs else None, 5)}, last {fmt(lrs[-1] if lrs else None, 5)}."]

    # claim 1: SF's x at each branch point against the WSD branch decayed to that point
    points = [(p, round(p * T)) for p in BRANCH_POINTS] + [(1.0, T)]
    wsd = {1.0: final("adamw_wsd")}
    wsd.update({p: final(f"adamw_wsd-decay{round(100 * p)}") for p in BRANCH_POINTS})
    md += ["", "## Decay branches against SF's x at the same step", "",
           "WSD branch = AdamW at constant lr, then a linear decay to 0 over the last 20% of the branch, ending at "
           "the step. AdamW constant = AdamW at constant lr at that step, no decay (the WSD run before its decay; at "
           "100% the raw iterate of the AdamW + EMA run, which has the same lr schedule).", "",
           "| step | tokens | WSD branch | AdamW constant | " + " | ".join(f"SF b1={b1}" for b1 in B1S)
           + " | " + " | ".join(f"refined C={c:g} b1={b1}" for c in CS for b1 in B1S) + " |",
           "|" + "---|" * (4 + len(B1S) * (1 + len(CS)))]
    for p, step in points:
        constant = loss_at(R.get("adamw_wsd"), step) if p < 1 else constant_adamw_at_end(R.get("adamw_ema"), step)
        cells = [loss_at(R.get(f"sf_b{b1}"), step) for b1 in B1S]
        cells += [loss_at(R.get(f"refined_c{c:g}_b{b1}"), step) for c in CS for b1 in B1S]
        md.append(f"| {step} ({round(100 * p)}%) | {tokens(step, scale.batch):,} | {fmt(wsd[p])} | {fmt(constant)} | "
                  + " | ".join(fmt(v) for v in cells) + " |")
    sf_ref = "sf_b0.95"
    claim1 = [(p, step, loss_at(R.get(sf_ref), step), wsd[p]) for p, step in points]
    ok1 = [sf is not None and w is not None and sf <= w + MATCH_TOL for _, _, sf, w in claim1]
    claims = [
        "Claim 1 (SF's x at each branch point matches or beats the WSD branch decayed to it; SF b1=0.95, match = "
        f"within {MATCH_TOL} nats): " + "; ".join(
            f"{round(100 * p)}%: SF {fmt(sf)} vs WSD {fmt(w)} ({fmt_signed(gap(sf, w))})" for p, _, sf, w in claim1)
        + " -> " + (INCOMPLETE if any(sf is None or w is None for _, _, sf, w in claim1) else
                    f"{'HOLDS' if all(ok1) else 'DOES NOT HOLD'} at {sum(ok1)}/{len(ok1)} points")]

    # claim 2: decay gains
    md += ["", "## Short decays: what a linear lr decay to 0 gains", "",
           "From a checkpoint at `start`, K steps with the lr falling linearly to 0 (`sf_hf.pipeline.probe`). "
           "`no decay` = the same run at constant lr at the same step (the control). Gain vs control is the decay's "
           "own gain.", "",
           "| branch | start | K | loss at start | after decay | no decay | gain vs start | gain vs control |",
           "|---|---|---|---|---|---|---|---|"]
    gains: Dict[str, List[Optional[float]]] = {}
    for t in tasks:
        if t.kind != "branch" or R.get(t.name) is None:
            continue
        r = R[t.name]
        control = r.get("loss_control")
        gain = None if control is None else control - r["final_loss"]
        gains.setdefault(t.source, []).append(gain)
        md.append(f"| {t.name} | {t.start} | {t.decay_steps} | {fmt(r['loss_before'])} | {fmt(r['final_loss'])} | "
                  f"{fmt(control)} | {fmt_signed(r['loss_before'] - r['final_loss'])} | {fmt_signed(gain)} |")
    mean = lambda xs: None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)  # noqa: E731
    adamw_gain, sf_gain = mean(gains.get("adamw_wsd")), mean(gains.get(sf_ref))
    ok2 = adamw_gain is not None and sf_gain is not None and adamw_gain > 0 and sf_gain < SMALL_GAIN_RATIO * adamw_gain
    others = ", ".join(f"{name} {fmt_signed(mean(g))}" for name, g in gains.items()
                       if name not in ("adamw_wsd", sf_ref))
    claims.append(
        "Claim 2 (a short lr decay from an SF run gains little, unlike constant-lr AdamW; mean gain over the control "
        f"at {'/'.join(str(round(100 * p)) + '%' for p in BRANCH_POINTS)}, little = under {SMALL_GAIN_RATIO:g} x "
        f"AdamW's): AdamW {fmt_signed(adamw_gain)}, SF b1=0.95 {fmt_signed(sf_gain)} (other b1: {others or 'n/a'}) "
        f"-> {INCOMPLETE if adamw_gain is None or sf_gain is None else 'HOLDS' if ok2 else 'DOES NOT HOLD'}")

    # claim 3: spread across b1
    spreads = {}
    for suffix in ("", "-4x"):
        spreads[("vanilla", suffix)] = spread(final(f"sf_b{b1}{suffix}") for b1 in B1S)
        for c in CS:
            spreads[(f"C={c:g}", suffix)] = spread(final(f"refined_c{c:g}_b{b1}{suffix}") for b1 in B1S)
    md += ["", "## Spread of the final loss across b1 in {" + ", ".join(map(str, B1S)) + "} (max - min)", "",
           "| variant | batch x1 | batch x4 |", "|---|---|---|"]
    for variant in ["vanilla"] + [f"C={c:g}" for c in CS]:
        md.append(f"| {variant} | {fmt(spreads[(variant, '')])} | {fmt(spreads[(variant, '-4x')])} |")
    vanilla = spreads[("vanilla", "")]
    ok3 = [vanilla is not None and spreads[(f"C={c:g}", "")] is not None and spreads[(f"C={c:g}", "")] < vanilla
           for c in CS]
    claims.append(
        "Claim 3 (the refined variant's spread of final loss across b1 is smaller than vanilla's; batch x1): vanilla "
        f"{fmt(vanilla)}, " + ", ".join(f"refined C={c:g} {fmt(spreads[(f'C={c:g}', '')])}" for c in CS)
        + f" (batch x4: vanilla {fmt(spreads[('vanilla', '-4x')])}, "
        + ", ".join(f"C={c:g} {fmt(spreads[(f'C={c:g}', '-4x')])}" for c in CS) + ") -> "
        + (INCOMPLETE if any(spreads[(v, "")] is None for v in ["vanilla"] + [f"C={c:g}" for c in CS]) else
           "HOLDS" if all(ok3) else "HOLDS for " + ", ".join(f"C={c:g}" for c, ok in zip(CS, ok3) if ok)
           if any(ok3) else "DOES NOT HOLD"))

    # claim 4: at 4x batch, refined closes the gap between vanilla SF and cosine AdamW
    def best(names):
        values = [(final(n), n) for n in names if final(n) is not None]
        return min(values) if values else (None, None)

    cos4 = final("adamw_cosine-4x")
    van4, van4_name = best([f"sf_b{b1}-4x" for b1 in B1S])
    ref4, ref4_name = best([f"refined_c{c:g}_b{b1}-4x" for c in CS for b1 in B1S])
    cos1, (van1, _), (ref1, _) = (final("adamw_cosine"), best([f"sf_b{b1}" for b1 in B1S]),
                                  best([f"refined_c{c:g}_b{b1}" for c in CS for b1 in B1S]))
    gap_van, gap_ref = gap(van4, cos4), gap(ref4, cos4)
    if gap_van is None or gap_ref is None:
        verdict = INCOMPLETE
    elif gap_van <= MATCH_TOL:
        verdict = "NOT TESTABLE: vanilla SF does not trail cosine AdamW here (no gap to close)"
    else:
        verdict = "HOLDS" if gap_ref <= MATCH_TOL else ("PARTLY (the gap shrinks)" if gap_ref < gap_van
                                                        else "DOES NOT HOLD")
    claims.append(
        f"Claim 4 (at 4x batch the refined variant closes the gap between vanilla SF and cosine AdamW; best b1/C each, "
        f"closed = within {MATCH_TOL} nats): cosine {fmt(cos4)}, vanilla {fmt(van4)} ({van4_name}, gap "
        f"{fmt_signed(gap_van)}), refined {fmt(ref4)} ({ref4_name}, gap {fmt_signed(gap_ref)}); at batch x1 the gaps "
        f"are {fmt_signed(gap(van1, cos1))} and {fmt_signed(gap(ref1, cos1))} -> {verdict}")

    md += ["", "## River diagnostics at the last step (RiverDiagnosticsCallback)", "",
           "Loss at x (evaluated) and at y (where gradients are taken); gap = y - x (negative: x lags behind y); "
           "window = (1 - b1) / c steps, the span of recent y that x averages.", "",
           "| run | loss at x | loss at y | gap | x-y distance | c | window (steps) |", "|---|---|---|---|---|---|---|"]
    for t in tasks:
        last = R[t.name]["evals"][-1] if t.kind == "train" and R.get(t.name) else {}
        if "loss_y" in last and "averaging_weight" in last:
            md.append(f"| {t.name} | {fmt(last['loss_x'])} | {fmt(last['loss_y'])} | {fmt_signed(last['loss_gap'])} | "
                      f"{last['xy_distance']:.3f} | {last['averaging_weight']:.4f} | {last['averaging_window']:.1f} |")
    seconds = sum(r["seconds"] for r in R.values() if r)
    md += ["", "## Claims", ""] + [f"- {c}" for c in claims]
    md += ["", f"Runs finished: {sum(r is not None for r in R.values())}/{len(tasks)}; summed run time "
               f"{seconds / 60:.1f} min (runs overlap with --jobs > 1)."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "claims.txt").write_text("\n".join(claims) + "\n")
    plot(R, scale, tasks, figures)
    return claims


def plot(R: Dict[str, Optional[dict]], scale: Scale, tasks: List[Task], figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    colors = {0.5: "tab:red", 0.9: "tab:orange", 0.95: "tab:green"}
    style = {"adamw_cosine": ("black", "-"), "adamw_wsd": ("tab:blue", "-"), "adamw_ema": ("tab:purple", "-")}

    def curve(name):
        r = R.get(name)
        if not r:
            return [], []
        tokens_per_step = r["tokens_per_step"]
        evals = sorted(r["evals"], key=lambda e: e["step"])
        return [e["step"] * tokens_per_step / 1e6 for e in evals], [e["loss"] for e in evals]

    # 1. validation loss against tokens
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, suffix in zip(axes, ("", "-4x")):
        panel = [e["loss"] for name, r in R.items() if r and name.endswith("-4x") == bool(suffix) for e in r["evals"]]
        if panel:
            ax.set_ylim(min(panel) - 0.05, min(panel) + 1.2)
        for name, (color, ls) in style.items():
            if R.get(name + suffix):
                ax.plot(*curve(name + suffix), color=color, ls=ls, marker=".", label=name)
        for t in tasks:
            if t.kind == "branch" and not suffix and R.get(t.name):
                xs, ys = curve(t.name)
                wsd = t.family == "adamw_wsd"
                first = t.name.endswith("decay50")
                ax.plot(xs, ys, color="tab:blue" if wsd else colors[t.b1], ls=":", marker="v",
                        label=("WSD branches" if wsd else f"decay branches of SF b1={t.b1}") if first else None)
        for b1 in B1S:
            if R.get(f"sf_b{b1}{suffix}"):
                ax.plot(*curve(f"sf_b{b1}{suffix}"), color=colors[b1], ls="--", label=f"SF b1={b1}")
            if R.get(f"refined_c200_b{b1}{suffix}"):
                ax.plot(*curve(f"refined_c200_b{b1}{suffix}"), color=colors[b1], ls="-", alpha=0.6,
                        label=f"refined C=200 b1={b1}")
        ax.set_title(f"batch x{scale.big_batch_factor if suffix else 1}")
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/token)")
    lows = [e["loss"] for r in R.values() if r for e in r["evals"]]
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(figures / "paper_claims_loss.png", dpi=110)
    plt.close(fig)

    # 2. spread across b1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, suffix in zip(axes, ("", "-4x")):
        variants = [("vanilla SF", "sf_b{b1}", "o-", "tab:blue")] + [
            (f"refined C={c:g}", f"refined_c{c:g}_b{{b1}}", "s-", color)
            for c, color in zip(CS, ("tab:orange", "tab:green", "tab:brown", "tab:pink"))]
        for label, pattern, marker, color in variants:
            ys = [R[pattern.format(b1=b1) + suffix]["final_loss"] if R.get(pattern.format(b1=b1) + suffix) else None
                  for b1 in B1S]
            pts = [(b1, y) for b1, y in zip(B1S, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker, color=color, label=label)
        if R.get("adamw_cosine" + suffix):
            ax.axhline(R["adamw_cosine" + suffix]["final_loss"], color="black", ls=":", label="AdamW cosine")
        ax.set_title(f"final validation loss, batch x{scale.big_batch_factor if suffix else 1}")
        ax.set_xlabel("b1")
        ax.set_xticks(B1S)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures / "paper_claims_b1_spread.png", dpi=110)
    plt.close(fig)

    # 3. river diagnostics: loss at x and at y
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, pattern, title in zip(axes, ("sf_b{b1}", "refined_c200_b{b1}"), ("vanilla SF", "refined C=200")):
        for b1 in B1S:
            r = R.get(pattern.format(b1=b1))
            if not r:
                continue
            evals = [e for e in sorted(r["evals"], key=lambda e: e["step"]) if "loss_y" in e]
            xs = [e["step"] * r["tokens_per_step"] / 1e6 for e in evals]
            ax.plot(xs, [e["loss_x"] for e in evals], color=colors[b1], ls="-", label=f"x, b1={b1}")
            ax.plot(xs, [e["loss_y"] for e in evals], color=colors[b1], ls=":", label=f"y, b1={b1}")
        ax.set_title(f"{title}: validation loss at x (solid) and y (dotted)")
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
    if lows:
        axes[0].set_ylim(min(lows) - 0.05, min(lows) + 1.2)
    axes[0].set_ylabel("validation loss (nats/token)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(figures / "paper_claims_river.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "paper_claims"), help="results, runs and data cache")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in about a minute")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, in subprocesses (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    parser.add_argument("--figures", help="where the PNGs go (default OUT/figures)")
    parser.add_argument("--steps", type=int, help="override the base run length (steps at batch x1)")
    parser.add_argument("--lr-adamw", type=float, help="override the AdamW peak lr")
    parser.add_argument("--lr-sf", type=float, help="override the SF lr")
    parser.add_argument("--lr-sf-plus", type=float, help="override the ScheduleFree+ lr multiplier (default 1)")
    parser.add_argument("--only", nargs="+", help="run only these runs (and nothing they depend on)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs")
    parser.add_argument("--task", help=argparse.SUPPRESS)  # a worker: run this one task
    return parser.parse_args(argv)


def scale_from(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else FULL
    changes = {k: v for k, v in dict(steps=args.steps, lr_adamw=args.lr_adamw, lr_sf=args.lr_sf,
                                      lr_sf_plus=args.lr_sf_plus).items()
               if v is not None}
    return replace(scale, **changes)


def check_settings(out: Path, scale: Scale) -> None:
    """OUT holds runs of one setting only: a rerun with other sizes must use another --out."""
    path = out / "settings.json"
    settings = asdict(scale)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(settings)):
            raise SystemExit(f"{out} holds runs made with other settings ({path}); use another --out or delete it.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    out = Path(args.out)
    if args.task:  # a worker takes the settings its parent wrote
        scale = Scale(**json.loads((out / "settings.json").read_text()))
    else:
        scale = scale_from(args)
        check_settings(out, scale)
    tasks = build_tasks(scale)
    figures = Path(args.figures) if args.figures else out / "figures"
    if args.task:
        run_task(out, scale, next(t for t in tasks if t.name == args.task))
        return 0
    if args.only:
        unknown = set(args.only) - {t.name for t in tasks}
        if unknown:
            raise SystemExit(f"Unknown runs {sorted(unknown)}; known: {', '.join(t.name for t in tasks)}")
    selected = [t for t in tasks if not args.only or t.name in args.only]
    failed = [] if args.report_only else run_all(out, scale, selected, args.jobs, args.threads)
    claims = report(out, scale, tasks, figures)
    print("\n".join(claims))
    print(f"[paper_claims] wrote {out / 'results.md'}, {out / 'claims.txt'} and PNGs in {figures}")
    if failed:
        print(f"[paper_claims] FAILED runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
