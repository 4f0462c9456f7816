"""The paper's claims (../shared/PAPER.md) at small scale, tuned per method and repeated over seeds: `make paper`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py                 # full: ~40 min on 2 idle CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py --quick         # tiny sizes, the end-to-end test
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py --report-only   # tables/plots from finished runs
    .venv/bin/python benchmarks/paper_claims.py --gpu --dry-run                  # the 124M plan (`make paper-gpu`)

Protocol (every scale):
1. Sweep: every configuration (a method with its b1, C and batch) is trained at each learning rate of its grid
   (4 values spaced by 2x; ScheduleFree+'s "lr" is the multiplier of its Polyak step) for the full horizon,
   with seed 0. The lr with the lowest final validation loss is that configuration's lr.
2. Seeds: every configuration is trained again at its lr with seeds 1 and 2 (seed = initial weights and data
   order; seed s gives every method the same initial weights and batches, so comparisons are paired by seed).
3. Decay branches (claims 1-2) start from checkpoints of the AdamW constant-lr run (WSD's constant phase) and
   of SF b1=0.95, at the chosen lr, for every seed.
4. Verdicts: a difference d (mean over seeds of the per-seed differences) "holds" when it exceeds 2 standard
   errors (std of the per-seed differences / sqrt(seeds)) in the claim's direction, "does not hold" when it
   exceeds them in the other direction, and is "within noise" otherwise. The seed-0 run at the chosen lr is
   one of the seeds (the lr was chosen on it, so its loss is slightly optimistic for every method alike).

Full CPU setting: the embedded King James corpus (1,129 train / 60 validation chapters), a byte-level BPE of
512 tokens trained on the train split (1.67M train tokens), blocks of 128; a 3-layer Llama of width 48 (4 heads,
SwiGLU 128, tied embeddings: 108k parameters). Batch 16 x 128 = 2,048 tokens, 512 steps = 1.05M tokens (9.7 tokens
per parameter, 0.63 epoch); the 4x-batch runs take 8,192 tokens per step for 128 steps (the same tokens). Warmup
5%, weight decay 0.1 on linear weights, AdamW betas (0.9, 0.95) and clipping 1.0; SF b2 0.99, no clipping (the
paper's); refined C = 200 (the paper's at 0.5M tokens per batch). Validation: 128 validation blocks (16k tokens)
at every 10% of the steps and at 75%. `--jobs 2` runs two trainings at once in subprocesses, one torch thread
each. Each run records its CPU seconds; the report sums them.

GPU setting (`--gpu`, `make paper-gpu`): the paper's 124M Llama (recipes/llama-124m), GPT-2 tokenizer, blocks of
512, 64 x 512 = 32k tokens per step for 1,000 steps (a shortened horizon), bf16, the same protocol and grid.
`--dry-run` prints the plan and its token count without training.

Runs are named CONFIG_lrLR_sSEED (runs/NAME/result.json) and branches CONFIG_lrLR_sSEED-decay50/75. Each finished
run writes its result.json at once; a rerun skips finished runs, so an interrupted benchmark loses at most the
runs in flight (and the sweep's choices are remade from the same files). The tokenized data is cached in OUT/data.
Outputs in OUT (default runs/paper_claims): results.md (tables), claims.txt (one line per claim) and
figures/paper_claims_{loss,b1_spread}.png (`--figures DIR` writes the PNGs there instead).
"""

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INCOMPLETE = "INCOMPLETE (runs missing)"
NOISE_SE = 2.0  # a difference is real when it exceeds this many standard errors
SF_REF_B1 = 0.95  # the paper's b1: claims 1-2 and the 4x-batch runs
BRANCH_POINTS = (0.5, 0.75)  # decay branches end here; the 100% branch is the WSD run itself
DECAY_FRACTION = 0.2  # a branch ending at p decays over the last 20% of its length, as the WSD run does
EVAL_FRACTIONS = tuple(round(0.1 * i, 2) for i in range(1, 11)) + (0.75,)
PAPER = dict(parameters=124e6, tokens=2.62e9, batch_tokens=524_288, steps=5000, c=200)  # ../shared/PAPER.md


@dataclass(frozen=True)
class Scale:
    """Sizes, grids and seeds of one benchmark setting (full, quick or gpu)."""

    vocab_size: int  # BPE size trained on the corpus (0: the GPT-2 tokenizer)
    block_size: int
    model: dict
    batch: int
    steps: int
    eval_blocks: int
    eval_batch: int
    lrs_adamw: tuple
    lrs_sf: tuple
    lrs_sf_plus: tuple
    b1s: tuple = (0.5, 0.9, 0.95)
    seeds: tuple = (0, 1, 2)
    c: float = 200.0
    dataset: str = "embedded"
    train_docs: int | None = None  # use the first N train documents (None: all)
    valid_docs: int | None = None
    train_tokens: int | None = None  # a dataset other than "embedded": stream documents until this many tokens
    big_batch_factor: int = 4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    ema_decay: float = 0.99
    sf_plus_weight_decay: float = 1.0  # AdamC: scaled by the Polyak step squared, so not comparable to AdamW's 0.1
    gpu: bool = False

    @property
    def tokens_per_run(self) -> int:
        return self.steps * self.batch * self.block_size


LR_GRID = (2.5e-3, 5e-3, 1e-2, 2e-2)
FULL = Scale(
    vocab_size=512,
    block_size=128,
    model=dict(
        preset="llama-tiny",
        num_hidden_layers=3,
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
    ),
    batch=16,
    steps=512,
    eval_blocks=128,
    eval_batch=64,
    lrs_adamw=LR_GRID,
    lrs_sf=LR_GRID,
    lrs_sf_plus=(0.125, 0.25, 0.5, 1.0),
)
QUICK = Scale(
    vocab_size=300,
    block_size=32,
    model=dict(
        preset="llama-tiny",
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    ),
    batch=4,
    steps=8,
    eval_blocks=8,
    eval_batch=8,
    lrs_adamw=(3e-3, 6e-3),
    lrs_sf=(3e-3, 6e-3),
    lrs_sf_plus=(0.5, 1.0),
    b1s=(0.5, 0.95),
    seeds=(0, 1),
    train_docs=30,
    valid_docs=6,
)
GPU = Scale(
    vocab_size=0,
    block_size=512,
    model=dict(preset="llama-124m"),
    batch=64,
    steps=500,
    eval_blocks=512,
    eval_batch=64,
    lrs_adamw=(5e-4, 1e-3, 2e-3, 4e-3),
    lrs_sf=(1e-3, 2e-3, 4e-3, 8e-3),
    lrs_sf_plus=(0.125, 0.25, 0.5, 1.0),
    dataset="DKYoon/SlimPajama-6B",
    train_tokens=64 * 512 * 500,
    gpu=True,
)


@dataclass(frozen=True)
class Config:
    """One method with its settings; its runs differ only in lr and seed."""

    name: str
    family: str  # adamw_cosine, adamw_wsd, adamw_ema, sf, refined, sf_plus
    optimizer_name: str
    b1: float | None = None
    c: float | None = None
    big_batch: bool = False
    branched: bool = False  # decay branches start from its checkpoints (claims 1-2)


@dataclass(frozen=True)
class Task:
    """One training run (kind "train") or one decay branch from a checkpoint of another run (kind "branch")."""

    name: str
    kind: str
    config: str
    family: str
    optimizer_name: str
    batch: int
    steps: int
    lr: float
    seed: int
    b1: float | None = None
    c: float | None = None
    big_batch: bool = False
    save_at: tuple = ()
    source: str | None = None  # branch: the run it starts from
    start: int | None = None  # branch: the checkpoint's step
    decay_steps: int | None = None
    deps: tuple = field(default=())


def configs(scale: Scale) -> list[Config]:
    """Every configuration, in the order its runs are started (the claims that finish first come first)."""
    c = scale.c
    sf = {b1: Config(f"sf_b{b1}", "sf", "sf_adamw", b1=b1, branched=b1 == SF_REF_B1) for b1 in scale.b1s}
    out = [
        Config("adamw_wsd", "adamw_wsd", "adamw_wsd", branched=True),
        sf[SF_REF_B1],
        Config("adamw_cosine", "adamw_cosine", "adamw_cosine"),
    ]
    out += [
        Config("adamw_cosine-4x", "adamw_cosine", "adamw_cosine", big_batch=True),
        Config(f"sf_b{SF_REF_B1}-4x", "sf", "sf_adamw", b1=SF_REF_B1, big_batch=True),
        Config(f"refined_c{c:g}_b{SF_REF_B1}-4x", "refined", "sf_adamw_refined", b1=SF_REF_B1, c=c, big_batch=True),
        Config("sf_plus", "sf_plus", "sf_plus"),
    ]
    out += [sf[b1] for b1 in scale.b1s if b1 != SF_REF_B1]  # claim 3 last: it needs the most runs (6 configs)
    out += [Config(f"refined_c{c:g}_b{b1}", "refined", "sf_adamw_refined", b1=b1, c=c) for b1 in scale.b1s]
    return out


def lr_grid(scale: Scale, config: Config) -> tuple:
    return {"sf": scale.lrs_sf, "refined": scale.lrs_sf, "sf_plus": scale.lrs_sf_plus}.get(
        config.family, scale.lrs_adamw
    )


def run_name(config: str, lr: float, seed: int) -> str:
    return f"{config}_lr{lr:g}_s{seed}"


def branch_steps(steps: int, point: float) -> tuple:
    """(start, K) of a branch that ends at `point` of the steps and decays over its last DECAY_FRACTION."""
    end = round(point * steps)
    k = round(DECAY_FRACTION * end)
    return end - k, k


def _final(result: dict | None) -> float:
    loss = result.get("final_loss") if result else None
    return loss if loss is not None and math.isfinite(loss) else math.inf


def best_lr(scale: Scale, config: Config, R: dict[str, dict | None]) -> float | None:
    """The grid lr with the lowest seed-0 final loss, once every seed-0 run of the sweep has finished."""
    results = {lr: R.get(run_name(config.name, lr, scale.seeds[0])) for lr in lr_grid(scale, config)}
    if any(r is None for r in results.values()):
        return None
    return min(results, key=lambda lr: (_final(results[lr]), lr))


def plan(scale: Scale, R: dict[str, dict | None]) -> list[Task]:
    """Every task that can be named from the finished runs R, in priority order.

    The seed-0 sweep is always known; a configuration's other seeds, its decay branches and the AdamW + EMA run
    (at WSD's lr) appear once its sweep has finished. Run `plan` again as results come in.
    """
    T, B, f = scale.steps, scale.batch, scale.big_batch_factor
    saves = tuple(branch_steps(T, p)[0] for p in BRANCH_POINTS)
    tasks: list[Task] = []
    last: list[Task] = []
    for config in configs(scale):
        batch, steps = (B * f, T // f) if config.big_batch else (B, T)
        common = dict(
            config=config.name,
            family=config.family,
            optimizer_name=config.optimizer_name,
            batch=batch,
            steps=steps,
            b1=config.b1,
            c=config.c,
            big_batch=config.big_batch,
            save_at=saves if config.branched else (),
        )
        tasks += [
            Task(run_name(config.name, lr, scale.seeds[0]), "train", lr=lr, seed=scale.seeds[0], **common)
            for lr in lr_grid(scale, config)
        ]
        lr = best_lr(scale, config, R)
        if lr is None:
            continue
        tasks += [
            Task(run_name(config.name, lr, seed), "train", lr=lr, seed=seed, **common) for seed in scale.seeds[1:]
        ]
        if config.branched:
            for seed in scale.seeds:
                source = run_name(config.name, lr, seed)
                for p in BRANCH_POINTS:
                    start, k = branch_steps(T, p)
                    tasks.append(
                        Task(
                            f"{source}-decay{round(100 * p)}",
                            "branch",
                            lr=lr,
                            seed=seed,
                            source=source,
                            start=start,
                            decay_steps=k,
                            deps=(source,),
                            **dict(common, steps=start + k, save_at=()),
                        )
                    )
        if config.name == "adamw_wsd":  # AdamW + EMA at WSD's lr (constant lr, no decay): one seed, no verdict, last
            last = [
                Task(
                    run_name("adamw_ema", lr, scale.seeds[0]),
                    "train",
                    "adamw_ema",
                    "adamw_ema",
                    "adamw_ema",
                    B,
                    T,
                    lr,
                    scale.seeds[0],
                )
            ]
    return tasks + last


def full_plan(scale: Scale) -> list[Task]:
    """The plan once every sweep has finished (the lr chosen is a placeholder: the grid's first): for counts."""
    R: dict[str, dict | None] = {}
    while True:
        tasks = plan(scale, R)
        if all(t.name in R for t in tasks):
            return tasks
        R.update({t.name: {"final_loss": t.lr} for t in tasks})


# ---------------------------------------------------------------------------------------------- data


def _stream_documents(scale: Scale, tokenizer):
    """The first documents of a (streamed) corpus, until `scale.train_tokens` tokens, and its validation docs."""
    import datasets

    from sf_hf.data import load_text_dataset

    corpus = load_text_dataset(scale.dataset, streaming=True, validation_size=1000)
    texts, count = [], 0
    for row in corpus["train"]:
        texts.append(row["text"])
        count += len(tokenizer(row["text"])["input_ids"]) + 1
        if count >= scale.train_tokens:
            break
    valid, count = [], 0
    for row in corpus["validation"]:
        valid.append(row["text"])
        count += len(tokenizer(row["text"])["input_ids"]) + 1
        if count >= scale.eval_blocks * scale.block_size:
            break
    return datasets.Dataset.from_dict({"text": texts}), datasets.Dataset.from_dict({"text": valid})


def prepare_data(out: Path, scale: Scale):
    """The tokenizer and packed train/validation blocks, built once and cached in OUT/data."""
    import datasets
    from transformers import AutoTokenizer

    from sf_hf.data import load_gpt2_tokenizer, load_text_dataset, pack_into_blocks, train_bpe_tokenizer

    folder = out / "data"
    if not (folder / "ready").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        if scale.dataset == "embedded":
            corpus = load_text_dataset("embedded")
            train, valid = corpus["train"], corpus["validation"]
            if scale.train_docs:
                train = train.select(range(scale.train_docs))
            if scale.valid_docs:
                valid = valid.select(range(scale.valid_docs))
        elif scale.vocab_size:
            raise ValueError("a BPE is trained on the embedded corpus only; other datasets use GPT-2's (vocab_size=0)")
        if scale.vocab_size:
            tokenizer = train_bpe_tokenizer(
                train["text"], vocab_size=scale.vocab_size, model_max_length=scale.block_size
            )
        else:
            tokenizer = load_gpt2_tokenizer()
        if scale.dataset != "embedded":
            train, valid = _stream_documents(scale, tokenizer)
        tokenizer.save_pretrained(folder / "tokenizer")
        pack_into_blocks(train, tokenizer, scale.block_size).save_to_disk(folder / "train")
        pack_into_blocks(valid, tokenizer, scale.block_size).save_to_disk(folder / "validation")
        (folder / "ready").write_text("ok\n")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    train = datasets.load_from_disk(str(folder / "train"))
    valid = datasets.load_from_disk(str(folder / "validation"))
    return tokenizer, train, valid.select(range(min(scale.eval_blocks, len(valid))))


# ---------------------------------------------------------------------------------------------- one run


def eval_steps(steps: int) -> list[int]:
    return sorted({max(1, round(f * steps)) for f in EVAL_FRACTIONS})


def run_dir(out: Path, name: str) -> Path:
    return out / "runs" / name


def read_result(out: Path, name: str) -> dict | None:
    path = run_dir(out, name) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}


def write_result(out: Path, name: str, result: dict) -> None:
    path = run_dir(out, name) / "result.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1))
    os.replace(partial, path)


def device_args(scale: Scale) -> dict:
    return dict(use_cpu=False, bf16=True) if scale.gpu else dict(use_cpu=True)


def training_config(scale: Scale, task: Task, output_dir: Path, **extra):
    from sf_hf import ScheduleFreeConfig

    schedule_free = task.family in ("sf", "refined")
    warmup = math.ceil(scale.warmup_fraction * task.steps)
    if task.family == "sf_plus":
        extra = dict(
            adam_beta1=0.9,
            adam_beta2=0.95,
            weight_decay=scale.sf_plus_weight_decay,
            c_warmup=2 * warmup,
            max_grad_norm=0.0,
            **extra,
        )
    else:
        extra = dict(
            adam_beta1=task.b1 if schedule_free else 0.9,
            adam_beta2=0.99 if schedule_free else 0.95,
            weight_decay=scale.weight_decay,
            max_grad_norm=0.0 if schedule_free else 1.0,
            **extra,
        )
    return ScheduleFreeConfig(
        output_dir=str(output_dir),
        optimizer_name=task.optimizer_name,
        learning_rate=task.lr,
        decoupling_c=task.c or 200.0,
        ema_decay=scale.ema_decay,
        weight_decay_params="linear",
        warmup_steps=warmup,
        max_steps=task.steps,
        per_device_train_batch_size=task.batch,
        per_device_eval_batch_size=scale.eval_batch,
        logging_steps=max(1, task.steps // 20),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=task.seed,
        data_seed=task.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        sf_fused=False,
        **device_args(scale),
        **extra,
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
    torch.manual_seed(task.seed)
    overrides = {k: v for k, v in scale.model.items() if k != "preset"}
    model = build_model(
        scale.model["preset"], len(tokenizer), scale.block_size, eos_token_id=tokenizer.eos_token_id, **overrides
    )
    callbacks = [
        _at_steps_callback(set(eval_steps(task.steps)), "should_evaluate"),
        _at_steps_callback(set(task.save_at), "should_save"),
        RiverDiagnosticsCallback(),
    ]
    if scale.dataset == "embedded" and not scale.train_docs and not scale.valid_docs and scale.vocab_size:
        record = dict(
            data=dict(dataset_name="embedded", text_column="text", block_size=scale.block_size),
            model=dict(scale.model, vocab_size=len(tokenizer)),
        )  # `sf-hf probe` can rebuild the data
        (folder / "run_args.json").write_text(json.dumps(record, indent=2) + "\n")
    trainer = ScheduleFreeTrainer(
        model=model,
        args=training_config(scale, task, folder),
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    history = trainer.state.log_history
    evals = [
        {k.replace("eval_river_", "").replace("eval_", ""): v for k, v in h.items()}
        for h in history
        if "eval_loss" in h
    ]
    return dict(
        final_loss=evals[-1]["loss"],
        evals=evals,
        train=[{"step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")} for h in history if "loss" in h],
        parameters=sum(p.numel() for p in model.parameters()),
    )


def run_branch(out: Path, scale: Scale, task: Task, data) -> dict:
    from sf_hf.probe import probe_checkpoint

    _, train, valid = data
    source = read_result(out, task.source)
    checkpoint = run_dir(out, task.source) / f"checkpoint-{task.start}"
    work = run_dir(out, task.name) / "work"
    result = probe_checkpoint(
        checkpoint,
        decay_steps=task.decay_steps,
        train_dataset=train,
        eval_dataset=valid,
        output_dir=work,
        weight_decay_params="linear",
        max_grad_norm=0.0 if task.family == "sf" else 1.0,
        seed=task.seed,
        data_seed=task.seed,
        eval_batch_size=scale.eval_batch,
        sf_fused=False,
        **device_args(scale),
    )
    shutil.rmtree(work, ignore_errors=True)
    end = task.start + task.decay_steps
    control = next((e["loss"] for e in source["evals"] if e["step"] == end), None)
    return dict(
        final_loss=result.loss_after,
        loss_before=result.loss_before,
        loss_control=control,
        start_lr=result.start_lr,
        evals=[{"step": task.start, "loss": result.loss_before}, {"step": end, "loss": result.loss_after}],
    )


def run_task(out: Path, scale: Scale, task: Task, data=None, worker: bool = False) -> dict:
    """Runs one task (if not finished) and writes its result.json, with its wall and CPU seconds (and, in a worker
    process, the whole process's CPU seconds, imports and data loading included)."""
    done = read_result(out, task.name)
    if done is not None:
        return done
    data = data or prepare_data(out, scale)
    start, cpu = time.time(), time.process_time()
    run_dir(out, task.name).mkdir(parents=True, exist_ok=True)
    result = (run_branch if task.kind == "branch" else run_training)(out, scale, task, data)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        task=asdict(task),
        tokens_per_step=task.batch * scale.block_size,
        seconds=time.time() - start,
        cpu_seconds=time.process_time() - cpu,
        process_cpu_seconds=usage.ru_utime + usage.ru_stime if worker else None,
    )
    write_result(out, task.name, result)
    print(
        f"[paper_claims] {task.name}: final validation loss {result['final_loss']:.4f} "
        f"({result['seconds']:.0f} s, {result['cpu_seconds']:.0f} CPU-s)",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------- scheduling


def run_all(out: Path, scale: Scale, only: Sequence[str] | None, jobs: int, threads: int) -> list[str]:
    """Runs every unfinished task of the plan (`jobs` at a time, in subprocesses when jobs > 1), replanning as
    results come in; returns the failed ones."""
    failed: list[str] = []
    running: dict[str, subprocess.Popen] = {}
    data = None
    logs = out / "logs"
    while True:
        R = read_results(out)
        ready = [
            t
            for t in plan(scale, R)
            if t.name not in R and t.name not in running and t.name not in failed and (not only or t.name in only)
        ]
        failed += [t.name for t in ready if any(d in failed for d in t.deps)]
        ready = [t for t in ready if t.name not in failed and all(d in R for d in t.deps)]
        if not ready and not running:
            return failed
        if ready and data is None:
            data = prepare_data(out, scale)
        if jobs <= 1:
            task = ready[0]
            try:
                run_task(out, scale, task, data)
            except Exception as err:  # one failed run must not lose the others: report it and go on
                print(f"[paper_claims] {task.name} FAILED: {err!r}", flush=True)
                failed.append(task.name)
            continue
        logs.mkdir(parents=True, exist_ok=True)
        for task in ready[: jobs - len(running)]:
            command = [sys.executable, __file__, "--out", str(out), "--task", task.name, "--threads", str(threads)]
            with open(logs / f"{task.name}.log", "w") as log:
                running[task.name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(f"[paper_claims] started {task.name} (pid {running[task.name].pid})", flush=True)
        time.sleep(1.0)
        for name, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            result = read_result(out, name)
            if process.returncode != 0 or result is None:
                failed.append(name)
                print(f"[paper_claims] {name} FAILED (exit {process.returncode}); see {logs / name}.log", flush=True)
            else:
                print(
                    f"[paper_claims] {name}: {result['final_loss']:.4f} ({result['cpu_seconds']:.0f} CPU-s)", flush=True
                )


# ---------------------------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]):
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired(diffs: Sequence[float | None], n: int):
    """(mean, standard error) of per-seed differences; None when a seed is missing."""
    if len(diffs) < n or n < 2 or any(d is None or not math.isfinite(d) for d in diffs):
        return None, None
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def verdict(d: float | None, se: float | None) -> str:
    """d > 0 is the claim's direction."""
    if d is None:
        return INCOMPLETE
    if d > NOISE_SE * se:
        return "HOLDS"
    if d < -NOISE_SE * se:
        return "DOES NOT HOLD"
    return "WITHIN NOISE"


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def fmt_pm(d: float | None, se: float | None) -> str:
    return "n/a" if d is None else f"{d:+.4f} ± {se:.4f} (SE)"


def fmt_lr(lr: float | None) -> str:
    return "n/a" if lr is None else f"{lr:g}"


# ---------------------------------------------------------------------------------------------- report


class Results:
    """The finished runs, read by configuration, lr and seed."""

    def __init__(self, out: Path, scale: Scale):
        self.scale, self.R = scale, read_results(out)
        self.configs = {c.name: c for c in configs(scale)}
        self.lr = {name: best_lr(scale, c, self.R) for name, c in self.configs.items()}
        wsd_lr = self.lr["adamw_wsd"]
        self.lr["adamw_ema"] = wsd_lr

    def run(self, config: str, seed: int, suffix: str = "") -> dict | None:
        lr = self.lr.get(config)
        return None if lr is None else self.R.get(run_name(config, lr, seed) + suffix)

    def per_seed(self, config: str, step: int | None = None, suffix: str = "", key: str = "final_loss"):
        """The metric for each seed (None where missing): the final loss, or the eval loss at `step`."""
        values = []
        for seed in self.scale.seeds:
            r = self.run(config, seed, suffix)
            if r is None:
                values.append(None)
            elif step is None:
                values.append(r.get(key))
            else:
                values.append(next((e["loss"] for e in r["evals"] if e["step"] == step), None))
        return values

    def summary(self, config: str, **kw):
        values = [v for v in self.per_seed(config, **kw) if v is not None]
        m, s = mean_std(values)
        return m, s, len(values)


def diff(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    return [None if x is None or y is None else x - y for x, y in zip(a, b)]


def fmt_summary(m, s, n) -> str:
    if m is None:
        return "n/a"
    return f"{m:.4f} ± {s:.4f} (n={n})" if s is not None else f"{m:.4f} (n={n})"


def regime_rows(scale: Scale, parameters: int | None) -> list[str]:
    """How far this setting is from the paper's: tokens/parameter, batch tokens, steps, averaging window."""
    rows = [
        "| setting | parameters | tokens | tokens/param | batch tokens | steps | refined window T/C (steps) |",
        "|---|---|---|---|---|---|---|",
        f"| paper, 0.5M batch | 124M | 2.62B | {PAPER['tokens'] / PAPER['parameters']:.0f} | 524,288 | 5,000 | "
        f"{PAPER['steps'] / PAPER['c']:.0f} (C=200) |",
    ]
    for label, f in (("this, batch x1", 1), (f"this, batch x{scale.big_batch_factor}", scale.big_batch_factor)):
        steps, batch_tokens = scale.steps // f, scale.batch * f * scale.block_size
        p = f"{parameters:,}" if parameters else "n/a"
        tpp = f"{scale.tokens_per_run / parameters:.1f}" if parameters else "n/a"
        rows.append(
            f"| {label} | {p} | {scale.tokens_per_run:,} | {tpp} | {batch_tokens:,} | {steps:,} | "
            f"{steps / scale.c:.1f} (C={scale.c:g}) |"
        )
    return rows


def report(out: Path, scale: Scale, figures: Path) -> list[str]:
    """Writes results.md, claims.txt and the PNGs from the finished runs; returns the claim lines."""
    res = Results(out, scale)
    R, T, n = res.R, scale.steps, len(scale.seeds)
    tasks = plan(scale, R)  # with the lr each sweep chose (full_plan's placeholder lr would name other seed runs)
    parameters = next((r.get("parameters") for r in R.values() if r.get("parameters")), None)
    md = [
        "# Paper claims at small scale: results",
        "",
        f"Model: {scale.model}, vocab {scale.vocab_size or 'GPT-2'}, block {scale.block_size}; batch "
        f"{scale.batch} x {scale.block_size} tokens for {T} steps; batch x{scale.big_batch_factor}: "
        f"{scale.batch * scale.big_batch_factor} for {T // scale.big_batch_factor} steps. Seeds {list(scale.seeds)}. "
        "Loss: validation nats/token at x.",
        "",
        "## Regime against the paper's",
        "",
    ]
    md += regime_rows(scale, parameters)

    # 1. the sweep
    md += [
        "",
        f"## Learning-rate sweep (seed {scale.seeds[0]}, full horizon; final validation loss)",
        "",
        "Chosen = lowest; (edge) = the chosen lr is at the end of the grid.",
        "",
        "| config | " + " | ".join(f"lr {i + 1}" for i in range(len(scale.lrs_adamw))) + " | chosen lr |",
        "|---|" + "---|" * (len(scale.lrs_adamw) + 1),
    ]
    for name, config in res.configs.items():
        grid = lr_grid(scale, config)
        cells = []
        for lr in grid:
            r = R.get(run_name(name, lr, scale.seeds[0]))
            value = fmt(_final(r)) if r else "-"
            cells.append(f"{lr:g}: **{value}**" if lr == res.lr[name] else f"{lr:g}: {value}")
        chosen = res.lr[name]
        edge = " (edge)" if chosen is not None and chosen in (grid[0], grid[-1]) else ""
        md.append(f"| {name} | " + " | ".join(cells) + f" | {fmt_lr(chosen)}{edge} |")

    # 2. seeds at the chosen lr
    md += [
        "",
        "## Final validation loss at the chosen lr, mean ± std over seeds",
        "",
        "| config | lr | " + " | ".join(f"seed {s}" for s in scale.seeds) + " | mean ± std |",
        "|---|---|" + "---|" * (n + 1),
    ]
    for name in list(res.configs) + ["adamw_ema"]:
        values = res.per_seed(name)
        md.append(
            f"| {name} | {fmt_lr(res.lr[name])} | "
            + " | ".join(fmt(v) for v in values)
            + f" | {fmt_summary(*res.summary(name))} |"
        )

    claims = []
    # claim 1: SF's x at each branch point against the WSD branch decayed to that point
    sf_ref = f"sf_b{SF_REF_B1}"
    points = [(p, round(p * T), f"-decay{round(100 * p)}") for p in BRANCH_POINTS] + [(1.0, T, "")]
    md += [
        "",
        "## Claim 1: WSD branches against SF's x at the same step (mean ± std over seeds)",
        "",
        "| step | WSD branch ending there | AdamW constant lr (no decay) | SF b1=0.95 | WSD - SF (paired, ± SE) |",
        "|---|---|---|---|---|",
    ]
    parts, verdicts = [], []
    for p, step, suffix in points:
        wsd = res.per_seed("adamw_wsd", suffix=suffix)
        sf = res.per_seed(sf_ref, step=step)
        constant = (
            res.per_seed("adamw_wsd", step=step)
            if p < 1
            # at 100%: the EMA run's raw iterate
            else [
                r["evals"][-1].get("loss_y") if r else None
                for r in (res.run("adamw_ema", seed) for seed in scale.seeds)
            ]
        )
        d, se = paired(diff(wsd, sf), n)
        v = verdict(d, se)
        verdicts.append(v)
        ms = lambda xs: fmt_summary(*mean_std([x for x in xs if x is not None]), sum(x is not None for x in xs))  # noqa: E731
        md.append(f"| {step} ({round(100 * p)}%) | {ms(wsd)} | {ms(constant)} | {ms(sf)} | {fmt_pm(d, se)} |")
        parts.append(f"{round(100 * p)}%: WSD - SF {fmt_pm(d, se)} -> {v}")
    overall = (
        INCOMPLETE
        if INCOMPLETE in verdicts
        else "DOES NOT HOLD"
        if "DOES NOT HOLD" in verdicts
        else "HOLDS"
        if all(v == "HOLDS" for v in verdicts)
        else "WITHIN NOISE (SF matches WSD within 2 SE)"
    )
    claims.append(
        f"Claim 1 (SF b1={SF_REF_B1}'s x matches or beats the WSD branch decayed to the same step; "
        f"d = WSD - SF, {n} seeds): " + "; ".join(parts) + f" -> {overall}"
    )

    # claim 2: decay gains over the control
    md += [
        "",
        "## Claim 2: what a short linear decay to 0 gains over the same run at constant lr",
        "",
        "Gain = loss of the run at constant lr at the branch's last step - loss after the decay; per seed, "
        "averaged over the 50% and 75% branches.",
        "",
        "| source | " + " | ".join(f"seed {s}" for s in scale.seeds) + " | mean ± std |",
        "|---|" + "---|" * (n + 1),
    ]
    gains = {}
    for source in ("adamw_wsd", sf_ref):
        per_seed = []
        for seed in scale.seeds:
            g = []
            for p in BRANCH_POINTS:
                r = res.run(source, seed, f"-decay{round(100 * p)}")
                g.append(None if r is None or r.get("loss_control") is None else r["loss_control"] - r["final_loss"])
            per_seed.append(None if None in g else statistics.fmean(g))
        gains[source] = per_seed
        present = [g for g in per_seed if g is not None]
        md.append(
            f"| {source} | "
            + " | ".join(fmt_signed(g) for g in per_seed)
            + f" | {fmt_summary(*mean_std(present), len(present))} |"
        )
    d, se = paired(diff(gains["adamw_wsd"], gains[sf_ref]), n)
    own = paired(gains[sf_ref], n)
    claims.append(
        f"Claim 2 (a short lr decay gains AdamW more than SF b1={SF_REF_B1}; d = AdamW's gain - SF's gain, "
        f"mean over the 50%/75% branches, {n} seeds): {fmt_pm(d, se)}; SF's own gain {fmt_pm(*own)} "
        f"({verdict(*own).lower().replace('holds', 'positive').replace('does not hold', 'negative')})"
        f" -> {verdict(d, se)}"
    )

    # claim 3: spread across b1, per seed, each b1 at its own lr
    md += [
        "",
        f"## Claim 3: spread of the final loss across b1 in {list(scale.b1s)} (max - min; each b1 at its own lr)",
        "",
        "| variant | " + " | ".join(f"seed {s}" for s in scale.seeds) + " | mean ± std |",
        "|---|" + "---|" * (n + 1),
    ]
    spreads = {}
    for label, pattern in (("vanilla SF", "sf_b{b1}"), (f"refined C={scale.c:g}", f"refined_c{scale.c:g}_b{{b1}}")):
        by_b1 = [res.per_seed(pattern.format(b1=b1)) for b1 in scale.b1s]
        per_seed = [None if None in col else max(col) - min(col) for col in zip(*by_b1)]
        spreads[label] = per_seed
        present = [s for s in per_seed if s is not None]
        md.append(
            f"| {label} | "
            + " | ".join(fmt(s) for s in per_seed)
            + f" | {fmt_summary(*mean_std(present), len(present))} |"
        )
    labels = list(spreads)
    d, se = paired(diff(spreads[labels[0]], spreads[labels[1]]), n)
    claims.append(
        f"Claim 3 (refined C={scale.c:g}'s spread of final loss across b1 is smaller than vanilla's; "
        f"d = vanilla spread - refined spread, {n} seeds): {fmt_pm(d, se)} -> {verdict(d, se)}"
    )

    # claim 4: at 4x batch refined closes the gap between vanilla SF and cosine AdamW
    f = scale.big_batch_factor
    cos4, van4 = res.per_seed("adamw_cosine-4x"), res.per_seed(f"sf_b{SF_REF_B1}-4x")
    ref4 = res.per_seed(f"refined_c{scale.c:g}_b{SF_REF_B1}-4x")
    premise, closes, behind = (paired(diff(van4, cos4), n), paired(diff(van4, ref4), n), paired(diff(ref4, cos4), n))
    if premise[0] is None or closes[0] is None:
        v4 = INCOMPLETE
    elif verdict(*premise) != "HOLDS":
        v4 = "NOT TESTABLE: vanilla SF does not trail cosine AdamW by more than 2 SE here (no gap to close)"
    elif verdict(*closes) != "HOLDS":
        v4 = "DOES NOT HOLD" if verdict(*closes) == "DOES NOT HOLD" else "WITHIN NOISE (refined no better than vanilla)"
    else:
        v4 = "HOLDS" if verdict(*behind) != "HOLDS" else "PARTLY (refined narrows the gap; still behind cosine)"
    claims.append(
        f"Claim 4 (at {f}x batch refined C={scale.c:g} closes the gap between vanilla SF and cosine AdamW; "
        f"b1={SF_REF_B1}, {n} seeds): vanilla - cosine {fmt_pm(*premise)}, vanilla - refined "
        f"{fmt_pm(*closes)}, refined - cosine {fmt_pm(*behind)} -> {v4}"
    )

    # ScheduleFree+ next to SF and WSD (not a claim of the paper: a comparison with the same rule)
    plus = res.per_seed("sf_plus")
    d_sf, d_wsd = paired(diff(res.per_seed(sf_ref), plus), n), paired(diff(res.per_seed("adamw_wsd"), plus), n)
    claims.append(
        f"ScheduleFree+ (lr multiplier {fmt_lr(res.lr['sf_plus'])}; d > 0: ScheduleFree+ better): "
        f"vs SF b1={SF_REF_B1} {fmt_pm(*d_sf)} -> {verdict(*d_sf)}; vs AdamW WSD {fmt_pm(*d_wsd)} -> "
        f"{verdict(*d_wsd)}"
    )

    md += [
        "",
        "## River diagnostics at the last step (seed 0, chosen lr)",
        "",
        "Loss at x (evaluated) and at y (where gradients are taken); gap = y - x; window = (1 - b1) / c steps.",
        "",
        "| run | loss at x | loss at y | gap | x-y distance | c | window (steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in list(res.configs) + ["adamw_ema"]:
        r = res.run(name, scale.seeds[0])
        last = r["evals"][-1] if r else {}
        if "loss_y" in last and "averaging_weight" in last:
            md.append(
                f"| {name} | {fmt(last['loss_x'])} | {fmt(last['loss_y'])} | {fmt_signed(last['loss_gap'])} | "
                f"{last['xy_distance']:.3f} | {last['averaging_weight']:.4f} | {last['averaging_window']:.1f} |"
            )

    cpu = sum(r.get("process_cpu_seconds") or r.get("cpu_seconds") or 0 for r in R.values())
    wall = sum(r.get("seconds", 0) for r in R.values())
    done = sum(t.name in R for t in tasks)
    md += ["", "## Claims (the noise rule: d > 2 SE holds, d < -2 SE does not hold, otherwise within noise)", ""]
    md += [f"- {c}" for c in claims]
    md += [
        "",
        f"Runs finished: {done}/{len(tasks)}; summed CPU time {cpu / 60:.1f} CPU-min (each worker process, "
        f"imports included) = {cpu / 120:.1f} min on 2 idle cores at 2 runs at a time; summed run wall time "
        f"{wall / 60:.1f} min (runs overlap with --jobs > 1, and other load inflates it).",
    ]
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "claims.txt").write_text("\n".join(claims) + "\n")
    plot(res, figures)
    return claims


def plot(res: Results, figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = res.scale
    figures.mkdir(parents=True, exist_ok=True)
    colors = {0.5: "tab:red", 0.9: "tab:orange", 0.95: "tab:green"}

    def curves(ax, name, **style):
        runs = [res.run(name, seed) for seed in scale.seeds]
        runs = [r for r in runs if r]
        if not runs:
            return
        steps = [e["step"] for e in runs[0]["evals"]]
        losses = [[next((e["loss"] for e in r["evals"] if e["step"] == s), math.nan) for s in steps] for r in runs]
        mean = [statistics.fmean(col) for col in zip(*losses)]
        xs = [s * runs[0]["tokens_per_step"] / 1e6 for s in steps]
        ax.plot(xs, mean, label=f"{name} (lr {fmt_lr(res.lr.get(name))}, {len(runs)} seeds)", **style)
        if len(runs) > 1:
            low = [min(col) for col in zip(*losses)]
            high = [max(col) for col in zip(*losses)]
            ax.fill_between(xs, low, high, alpha=0.15, color=style.get("color"))

    # 1. validation loss against tokens, mean over seeds (band: min-max)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    f = scale.big_batch_factor
    for ax, suffix in zip(axes, ("", f"-{f}x")):
        curves(ax, "adamw_cosine" + suffix, color="black")
        if not suffix:
            curves(ax, "adamw_wsd", color="tab:blue")
            curves(ax, "sf_plus", color="tab:purple")
        for b1 in (SF_REF_B1,) if suffix else scale.b1s:
            curves(ax, f"sf_b{b1}{suffix}", color=colors.get(b1), ls="--")
            curves(ax, f"refined_c{scale.c:g}_b{b1}{suffix}", color=colors.get(b1), ls="-", alpha=0.7)
        lows = [line.get_ydata().min() for line in ax.get_lines() if len(line.get_ydata())]
        if lows:
            ax.set_ylim(min(lows) - 0.05, min(lows) + 1.2)
        ax.set_title(f"batch x{f if suffix else 1}: validation loss (mean over seeds, band min-max)")
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("validation loss (nats/token)")
    fig.tight_layout()
    fig.savefig(figures / "paper_claims_loss.png", dpi=110)
    plt.close(fig)

    # 2. final loss against b1, each b1 at its own lr, mean ± std over seeds
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pattern, marker in (
        ("vanilla SF", "sf_b{b1}", "o-"),
        (f"refined C={scale.c:g}", f"refined_c{scale.c:g}_b{{b1}}", "s-"),
    ):
        pts = [(b1, *res.summary(pattern.format(b1=b1))[:2]) for b1 in scale.b1s]
        pts = [(b1, m, s or 0.0) for b1, m, s in pts if m is not None]
        if pts:
            xs, ms, ss = zip(*pts)
            ax.errorbar(xs, ms, yerr=ss, fmt=marker, capsize=3, label=label)
    m, _, _ = res.summary("adamw_cosine")
    if m is not None:
        ax.axhline(m, color="black", ls=":", label="AdamW cosine")
    ax.set_xlabel("b1")
    ax.set_xticks(list(scale.b1s))
    ax.set_ylabel("final validation loss (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figures / "paper_claims_b1_spread.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def describe_plan(scale: Scale, tokens_per_second: float | None) -> str:
    """The whole grid (counts, tokens) and, given a throughput, its expected cost."""
    tasks = full_plan(scale)
    train = [t for t in tasks if t.kind == "train"]
    sweep = [t for t in train if t.seed == scale.seeds[0] and t.config != "adamw_ema"]
    tokens = sum(t.steps * t.batch * scale.block_size for t in tasks)
    evals = (
        sum(
            len(eval_steps(t.steps)) * (2 if t.family in ("sf", "refined", "sf_plus", "adamw_ema") else 1)
            for t in train
        )
        * scale.eval_blocks
        * scale.block_size
    )
    lines = [
        f"plan: {len(configs(scale))} configs; {len(sweep)} sweep runs (seed {scale.seeds[0]}), "
        f"{len(train) - len(sweep)} more trainings (seeds {list(scale.seeds[1:])} at each chosen lr, AdamW + "
        "EMA), "
        f"{len(tasks) - len(train)} decay branches = {len(tasks)} tasks",
        f"model {scale.model}; {scale.tokens_per_run:,} tokens per training ({scale.steps} steps x "
        f"{scale.batch * scale.block_size:,} tokens; x{scale.big_batch_factor} batch: "
        f"{scale.steps // scale.big_batch_factor} steps); {tokens / 1e6:,.1f}M training tokens in all, "
        f"{evals / 1e6:,.1f}M evaluation tokens; device {'GPU (bf16)' if scale.gpu else 'CPU'}",
    ]
    if tokens_per_second:
        seconds = (tokens + evals / 3) / tokens_per_second  # a forward pass is about a third of a training step
        lines.append(f"expected cost at {tokens_per_second:,.0f} training tokens/s: {seconds / 3600:.1f} h")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="results, runs and data cache (default runs/paper_claims[_gpu])")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: the end-to-end test")
    size.add_argument("--gpu", action="store_true", help="the paper's 124M setting on one GPU, shortened horizon")
    parser.add_argument("--jobs", type=int, help="trainings at once, in subprocesses (default 2 on CPU, 1 on GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    parser.add_argument("--figures", help="where the PNGs go (default OUT/figures)")
    parser.add_argument("--steps", type=int, help="override the base run length (steps at batch x1)")
    parser.add_argument(
        "--dataset",
        help="corpus: 'embedded', a local file/folder or a cached Hub id (gpu default: "
        "DKYoon/SlimPajama-6B, streamed until the tokens of one run)",
    )
    parser.add_argument("--only", nargs="+", help="run only these runs (and nothing they depend on)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its cost; train nothing")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        help="throughput for --dry-run's cost (default: 130k on GPU, assumed; 15k on CPU, measured)",
    )
    parser.add_argument("--task", help=argparse.SUPPRESS)  # a worker: run this one task
    return parser.parse_args(argv)


def scale_from(args: argparse.Namespace) -> Scale:
    scale = QUICK if args.quick else GPU if args.gpu else FULL
    changes = {k: v for k, v in dict(steps=args.steps, dataset=args.dataset).items() if v is not None}
    if args.steps and scale.train_tokens:
        changes["train_tokens"] = args.steps * scale.batch * scale.block_size
    return replace(scale, **changes)


def check_settings(out: Path, scale: Scale) -> None:
    """OUT holds runs of one setting only: a rerun with other sizes must use another --out."""
    path = out / "settings.json"
    settings = json.loads(json.dumps(asdict(scale)))
    if path.is_file():
        if json.loads(path.read_text()) != settings:
            raise SystemExit(f"{out} holds runs made with other settings ({path}); use another --out or delete it.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def load_settings(out: Path) -> Scale:
    saved = json.loads((out / "settings.json").read_text())
    return Scale(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out or ROOT / "runs" / ("paper_claims_gpu" if args.gpu else "paper_claims"))
    if args.dry_run:
        scale = scale_from(args)
        print(describe_plan(scale, args.tokens_per_second or (130e3 if scale.gpu else 15e3)))
        return 0
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    if args.task:  # a worker takes the settings its parent wrote
        scale = load_settings(out)
        run_task(out, scale, next(t for t in plan(scale, read_results(out)) if t.name == args.task), worker=True)
        return 0
    scale = scale_from(args)
    check_settings(out, scale)
    figures = Path(args.figures) if args.figures else out / "figures"
    jobs = args.jobs or (1 if scale.gpu else 2)
    if args.only:
        known = {t.name for t in full_plan(scale)} | {t.name for t in plan(scale, read_results(out))}
        unknown = set(args.only) - known
        if unknown:
            raise SystemExit(f"Unknown runs {sorted(unknown)}; known (placeholder lrs): {', '.join(sorted(known))}")
    failed = [] if args.report_only else run_all(out, scale, args.only, jobs, args.threads)
    claims = report(out, scale, figures)
    print("\n".join(claims))
    print(f"[paper_claims] wrote {out / 'results.md'}, {out / 'claims.txt'} and PNGs in {figures}")
    if failed:
        print(f"[paper_claims] FAILED runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
