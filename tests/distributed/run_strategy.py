"""One launch per strategy: train, evaluate, save and resume, and write the values tests/distributed asserts on.

    ACCELERATE_USE_CPU=true accelerate launch --config_file accelerate_configs/ddp.yaml --num_processes 2 \
        --mixed_precision no -m tests.distributed.run_strategy --out /tmp/ddp
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 2 --mixed_precision no \
        --zero3_init_flag false -m tests.distributed.run_strategy --out /tmp/zero3
    torchrun --nproc_per_node 2 -m tests.distributed.run_strategy --fsdp2 --deepspeed-bf16 --out /tmp/torchrun

Trainer strategies (DDP, DeepSpeed ZeRO-1/2/3): a ScheduleFreeTrainer runs STEPS steps with a checkpoint at
SAVE_AT (and an evaluation there, so the run switches y -> x -> y mid-way), evaluates, saves; a second trainer
resumes from the checkpoint; a third runs the same steps with no evaluation and no checkpoint (observing a run
must not change it; with --bf16-params all three run again with bf16 parameters). FSDP2 (torchrun, torch's
fully_shard; accelerate runs DDP on CPU): the same with a plain loop, DCP checkpoints and a consolidated full
state dict. Every rank writes the weights it computes with (x_module_rank{r}.safetensors); rank 0 writes the
optimizer's own x (x_master.safetensors, from DeepSpeed's fp32 partitions or the FSDP2 shards), y, the x of the
resumed and of the unobserved runs, and results.json. With --sf-plus, the launch also trains ScheduleFree+
(Trainer, or a plain loop on FSDP2 shards) and writes the same into OUT/sf_plus.
"""

import argparse
import faulthandler
import json
import os
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreePlusAdamW, ScheduleFreeTrainer  # noqa: E402
from sf_hf.distributed import optimizer_chain, reshard_fsdp2, resolve_optimizer, switch_weights  # noqa: E402
from sf_hf.optim.kernels import all_finite  # noqa: E402
from tests.trainer_utils import VOCAB, TokenDataset, config, tiny_model  # noqa: E402

faulthandler.enable()  # a crash (even at exit, after the results are written) leaves its stacks in the log
torch.set_num_threads(1)
STEPS, SAVE_AT, PER_DEVICE = 6, 3, 4
TRAIN, EVAL = TokenDataset(64, seed=1), TokenDataset(8, seed=2)
HYPER = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, warmup_steps=3, decoupling_c=5.0)  # = trainer_utils.config
# ScheduleFree+ (--sf-plus): annealing, c warmup and AdamC decay all active within STEPS; the foreach twin (a compile
# per process would cost more than the whole run)
HYPER_PLUS = dict(
    lr=1.0,
    betas=(0.9, 0.95),
    weight_decay=1.0,
    warmup_steps=2,
    c_warmup=2,
    sf_beta1=0.8,
    sf_beta1_anneal_steps=4,
    sf_beta1_max=0.95,
)
SF_PLUS_ARGS = dict(
    optimizer_name="sf_plus",
    learning_rate=1.0,
    adam_beta1=0.9,
    adam_beta2=0.95,
    weight_decay=1.0,
    warmup_steps=2,
    c_warmup=2,
    sf_beta1=0.8,
    sf_beta1_anneal_steps=4,
    sf_beta1_max=0.95,
    sf_fused=False,
)


def contiguous(weights: dict) -> dict:
    return {n: t.detach().to("cpu", torch.float32).contiguous().clone() for n, t in weights.items()}


# ---------------------------------------------------------------------------------------------- Trainer strategies


def trainer_args(out: Path, **overrides):
    # On CPU ddp_backend="gloo": DeepSpeed needs it (ACCELERATE_USE_CPU would turn DeepSpeed into DDP); use_cpu
    # stays False for the same reason, and DDP gets the CPU from ACCELERATE_USE_CPU.
    settings = dict(
        max_steps=STEPS,
        per_device_train_batch_size=PER_DEVICE,
        per_device_eval_batch_size=PER_DEVICE,
        save_strategy="steps",
        save_steps=SAVE_AT,
        eval_strategy="steps",
        eval_steps=SAVE_AT,
        use_cpu=False,
        ddp_backend=None if torch.cuda.is_available() else "gloo",
        bf16=os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16",
    )  # DeepSpeed refuses a mismatch
    return config(out, **{**settings, **overrides})


def is_zero3(trainer) -> bool:
    return trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3


def module_weights(trainer) -> dict:
    """The weights the module computes with, gathered (ZeRO-3, FSDP2 on GPUs) into full tensors on every rank."""
    params = dict(trainer.model.named_parameters())
    if is_zero3(trainer):
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(params.values()))
    else:
        context = nullcontext()
    with context:
        return contiguous({n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in params.items()})


def master_weights(trainer) -> dict:
    """The optimizer's own tensors (x in eval mode): DeepSpeed's fp32 partitions, gathered; else the parameters."""
    if not trainer.is_deepspeed_enabled:
        return module_weights(trainer)
    from deepspeed.utils import safe_get_full_fp32_param

    return contiguous({n: safe_get_full_fp32_param(p) for n, p in trainer.model.named_parameters()})


class RecordAt(TrainerCallback):
    """Keeps the optimizer's x at the checkpoint of `step` (all ranks take part in the gather)."""

    def __init__(self, step):
        self.step, self.trainer, self.x = step, None, None

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.x = master_weights(self.trainer)


def losses(trainer) -> dict:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def describe(trainer) -> dict:
    base = trainer._base_optimizer()
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return dict(
        world_size=trainer.args.world_size,
        distributed_type=str(trainer.accelerator.distributed_type).split(".")[-1],
        zero_stage=plugin.zero_stage if plugin else None,
        chain=[type(o).__name__ for o in optimizer_chain(trainer.optimizer)],
        k=[g["k"] for g in base.param_groups],
        module_dtype=str(next(trainer.model.parameters()).dtype),
        ds_config={k: v for k, v in (plugin.deepspeed_config if plugin else {}).items() if "zero" in k or k == "bf16"},
    )


@torch.no_grad()
def single_process_loss(weights: dict, like: torch.Tensor) -> float:
    """The EVAL loss of `weights` in a fresh, undistributed model on the device and in the dtype of `like`."""
    model = tiny_model().to(like.device, like.dtype)
    model.load_state_dict(weights)
    return lm_loss(model.eval(), EVAL.ids.to(like.device)).item()


def refused(out: Path, config_file: str) -> dict:
    """Builds a trainer under another DeepSpeed JSON and returns how its train() fails (or that it did not)."""
    os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config_file
    args = trainer_args(out, max_steps=1, eval_strategy="no", save_strategy="no")
    trainer = ScheduleFreeTrainer(model=tiny_model(), args=args, train_dataset=TRAIN)
    try:
        trainer.train()
    except Exception as err:  # the test asserts on the type and the message
        return dict(
            error=type(err).__name__,
            message=str(err),
            chain=[type(o).__name__ for o in optimizer_chain(trainer.optimizer)],
        )
    return dict(error=None, chain=[type(o).__name__ for o in optimizer_chain(trainer.optimizer)])


def run_trainer(out: Path, refuse_config: str = None, bf16_params: bool = False, sf_plus: bool = False) -> None:
    rank = int(os.environ.get("RANK", 0))
    results = {}
    if refuse_config:  # ZeRO-Offload with accelerate's default swap: must fail before the first step
        main_config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        results["refused"] = refused(out / "refused", refuse_config)
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = main_config

    record = RecordAt(SAVE_AT)
    straight = ScheduleFreeTrainer(
        model=tiny_model(), args=trainer_args(out / "run"), train_dataset=TRAIN, eval_dataset=EVAL, callbacks=[record]
    )
    record.trainer = straight
    straight.train()
    x_master, x_module = master_weights(straight), module_weights(straight)
    results.update(
        describe(straight),
        losses=losses(straight),
        eval_loss=straight.evaluate()["eval_loss"],
        single_process_eval_loss=single_process_loss(x_module, next(straight.model.parameters())),
    )
    straight.save_model(str(out / "final"))
    straight.use_training_weights()
    y = module_weights(straight)
    straight.use_averaged_weights()

    resumed = ScheduleFreeTrainer(
        model=tiny_model(seed=1), args=trainer_args(out / "resumed"), train_dataset=TRAIN, eval_dataset=EVAL
    )
    resumed.train(resume_from_checkpoint=str(out / "run" / f"checkpoint-{SAVE_AT}"))
    x_resumed = master_weights(resumed)
    results.update(
        resumed_losses=losses(resumed),
        resumed_eval_loss=resumed.evaluate()["eval_loss"],
        resumed_k=[g["k"] for g in resumed._base_optimizer().param_groups],
    )

    # the same run never evaluated nor saved: observing a run must not change it
    x_unobserved = unobserved_x(out / "unobserved", tiny_model())
    outputs = dict(x_master=x_master, y=y, x_resumed=x_resumed, x_at_save=record.x, x_unobserved=x_unobserved)
    if bf16_params:  # and all three again with bf16 parameters (fp32 z and v, y rounded to bf16 at every step)
        observed = ScheduleFreeTrainer(
            model=tiny_model().to(torch.bfloat16),
            args=trainer_args(out / "bf16"),
            train_dataset=TRAIN,
            eval_dataset=EVAL,
        )
        observed.train()
        resumed = ScheduleFreeTrainer(
            model=tiny_model(seed=1).to(torch.bfloat16),
            args=trainer_args(out / "bf16_resumed"),
            train_dataset=TRAIN,
            eval_dataset=EVAL,
        )
        resumed.train(resume_from_checkpoint=str(out / "bf16" / f"checkpoint-{SAVE_AT}"))
        results["bf16_module_dtype"] = str(next(observed.model.parameters()).dtype)
        outputs.update(
            bf16_x_observed=master_weights(observed),
            bf16_x_resumed=master_weights(resumed),
            bf16_x_unobserved=unobserved_x(out / "bf16_unobserved", tiny_model().to(torch.bfloat16)),
        )

    save_file(x_module, str(out / f"x_module_rank{rank}.safetensors"))
    if rank == 0:
        for name, weights in outputs.items():
            save_file(weights, str(out / f"{name}.safetensors"))
        (out / "results.json").write_text(json.dumps(results, indent=1))
    if sf_plus:
        run_sf_plus_trainer(out / "sf_plus")
    end_process_group()


def unobserved_x(out: Path, model) -> dict:
    """x at the end of the same run with no evaluation and no checkpoint on the way."""
    trainer = ScheduleFreeTrainer(
        model=model, args=trainer_args(out, save_strategy="no", eval_strategy="no"), train_dataset=TRAIN
    )
    trainer.train()
    return master_weights(trainer)


def run_sf_plus_trainer(out: Path) -> None:
    """ScheduleFree+ through the Trainer: STEPS steps; per-rank x and y, the optimizer's x, losses and Polyak steps."""
    rank = int(os.environ.get("RANK", 0))
    out.mkdir(parents=True, exist_ok=True)
    trainer = ScheduleFreeTrainer(
        model=tiny_model(),
        train_dataset=TRAIN,
        args=trainer_args(out / "run", eval_strategy="no", save_strategy="no", **SF_PLUS_ARGS),
    )
    trainer.train()
    base = trainer._base_optimizer()
    results = dict(
        describe(trainer),
        losses=losses(trainer),
        sf_beta1_y=base.param_groups[0]["sf_beta1_y"],
        polyak_lr={h["step"]: h["learning_rate"] for h in trainer.state.log_history if "loss" in h},
    )
    x_master, x_module = master_weights(trainer), module_weights(trainer)
    trainer.use_training_weights()
    y_module = module_weights(trainer)
    trainer.use_averaged_weights()
    save_file(x_module, str(out / f"x_module_rank{rank}.safetensors"))
    save_file(y_module, str(out / f"y_module_rank{rank}.safetensors"))
    if rank == 0:
        save_file(x_master, str(out / "x_master.safetensors"))
        (out / "results.json").write_text(json.dumps(results, indent=1))


def end_process_group() -> None:
    """Shuts gloo down while the interpreter is alive. Without it a two-process run can finish its work and still
    exit with SIGABRT ("terminate called without an active exception"): a gloo worker thread drops the last
    reference to a tensor of the last collective after Python has let go of it, the tensor's Python object must be
    freed, and taking the GIL during interpreter finalization makes the thread exit through a noexcept frame
    (std::terminate; the core shows ProcessGroupGloo::runLoop -> ~AsyncWork -> decref_pyobject -> take_gil ->
    pthread_exit). A bare gloo all_reduce loop on a loaded 2-core machine: 11 aborts in 20 runs without it, none in
    20 with it. destroy_process_group shuts every backend down, joining its worker threads."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- FSDP2 (plain loop)


def batch_ids(step: int, world: int = 1, rank: int = 0) -> torch.Tensor:
    """The global batch of `step` (1-based; PER_DEVICE x 2 sequences), or one rank's share of it."""
    order = torch.randperm(len(TRAIN), generator=torch.Generator().manual_seed(step))[: 2 * PER_DEVICE]
    share = len(order) // world
    return TRAIN.ids[order[rank * share : (rank + 1) * share]]


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def build_optimizer(model, fused=None) -> RefinedScheduleFreeAdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return RefinedScheduleFreeAdamW([dict(params=decay), dict(params=rest, weight_decay=0.0)], fused=fused, **HYPER)


def loop_step(model, optimizer, step: int, world: int = 1, rank: int = 0) -> float:
    """One training step at y; returns the global mean loss."""
    switch_weights(optimizer, train=True, model=model)
    model.train()
    loss = lm_loss(model, batch_ids(step, world, rank))
    loss.backward()
    if hasattr(optimizer, "set_loss"):  # ScheduleFree+: this rank's mean loss (equal shares: the ranks' mean is global)
        optimizer.set_loss(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    value = loss.detach().clone()
    if world > 1:
        dist.all_reduce(value)
    return value.item() / world


@torch.no_grad()
def loop_eval(model, optimizer, world: int = 1, rank: int = 0) -> float:
    """The mean loss over EVAL at x (each rank takes its share; equal token counts, so the mean of means)."""
    switch_weights(optimizer, train=False, model=model)
    model.eval()
    share = len(EVAL) // world
    value = lm_loss(model, EVAL.ids[rank * share : (rank + 1) * share]).detach().clone()
    if world > 1:
        dist.all_reduce(value)
    return value.item() / world


def build_plus_optimizer(model) -> ScheduleFreePlusAdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return ScheduleFreePlusAdamW([dict(params=decay), dict(params=rest, weight_decay=0.0)], fused=False, **HYPER_PLUS)


def reference_loop(steps: int = STEPS, build=None) -> dict:
    """The FSDP2 run's single-process twin: one unsharded model, the whole global batch per step."""
    model = tiny_model()
    optimizer = (build or build_optimizer)(model)
    trajectory, lrs = {}, {}
    for step in range(1, steps + 1):
        trajectory[step] = loop_step(model, optimizer, step)
        lrs[step] = optimizer.param_groups[0]["scheduled_lr"]
    eval_loss = loop_eval(model, optimizer)
    return dict(losses=trajectory, eval_loss=eval_loss, x=contiguous(dict(model.named_parameters())), lrs=lrs)


def run_fsdp2_plus(out: Path) -> None:
    """ScheduleFree+ on FSDP2 shards (plain loop): losses, Polyak steps and x, for `reference_loop(build=...)`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = tiny_model()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = build_plus_optimizer(model)
    resolve_optimizer(optimizer, ScheduleFreePlusAdamW)
    results = dict(losses={}, lrs={})
    for step in range(1, STEPS + 1):
        results["losses"][step] = loop_step(model, optimizer, step, world, rank)
        results["lrs"][step] = optimizer.param_groups[0]["scheduled_lr"]
    loop_eval(model, optimizer, world, rank)
    reshard_fsdp2(model)
    x = contiguous({n: p.full_tensor() for n, p in model.named_parameters()})
    results["k"] = [g["k"] for g in optimizer.param_groups]
    # a NaN in the last rank's gradient shard: the summed ||g||_1 is NaN on every rank, so both skip the step
    switch_weights(optimizer, train=True, model=model)
    loss = lm_loss(model, batch_ids(STEPS + 1, world, rank))
    loss.backward()
    if rank == world - 1:
        with torch.no_grad():
            next(model.parameters()).grad.to_local().view(-1)[-1] = float("nan")
    optimizer.set_loss(loss)
    optimizer.step()
    skipped = [None] * world
    dist.all_gather_object(skipped, [(g["k"], g["skipped_steps"]) for g in optimizer.param_groups])
    results["nan_step_k_and_skipped_per_rank"] = skipped
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(x, str(out / "x_master.safetensors"))
        (out / "results.json").write_text(json.dumps(results, indent=1))


def run_fsdp2(out: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))

    def sharded_model(seed=0):
        model = tiny_model(seed)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def full(model) -> dict:  # the optimizer's own tensors: the shards (registered again by reshard), gathered
        reshard_fsdp2(model)
        return contiguous({n: p.full_tensor() for n, p in model.named_parameters()})

    def consolidated(model) -> dict:  # what a published model.safetensors holds (all ranks take part)
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    results = dict(world_size=world, distributed_type="FSDP2", losses={}, resumed_losses={})
    model = sharded_model()
    optimizer = build_optimizer(model)
    resolve_optimizer(optimizer, RefinedScheduleFreeAdamW)
    results["dtensor_params"] = all(isinstance(p, DTensor) for p in model.parameters())
    for step in range(1, STEPS + 1):
        results["losses"][step] = loop_step(model, optimizer, step, world, rank)
        if step == SAVE_AT - 1:  # an evaluation at x leaves the root module unsharded (a forward without backward):
            loop_eval(model, optimizer, world, rank)  # the next training step must not compute with that stale x
            results["root_unsharded_after_eval"] = any(not isinstance(p, DTensor) for p in model.parameters())
        if step == SAVE_AT:  # evaluate and checkpoint at x, as the Trainer does; training then resumes at y
            results["eval_loss_at_save"] = loop_eval(model, optimizer, world, rank)
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out / "checkpoint"))
            x_at_save, saved_at_save = full(model), consolidated(model)
    results["eval_loss"] = loop_eval(model, optimizer, world, rank)
    # the weights the model computes with: every FSDP module's all-gathered (unsharded) parameters
    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in fsdp_modules:
        module.unshard()
    x_module = contiguous(dict(model.named_parameters()))
    x_master, saved = full(model), consolidated(model)
    switch_weights(optimizer, train=True, model=model)
    y = full(model)
    switch_weights(optimizer, train=False, model=model)
    results["k"] = [g["k"] for g in optimizer.param_groups]
    results["chain"] = [type(optimizer).__name__]
    results["fsdp_modules"] = len(fsdp_modules)

    resumed = sharded_model(seed=1)
    resumed_optimizer = build_optimizer(resumed)
    resolve_optimizer(resumed_optimizer, RefinedScheduleFreeAdamW)  # creates the state DCP would create by a step
    model_sd, optim_sd = get_state_dict(resumed, resumed_optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(out / "checkpoint"))
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for step in range(SAVE_AT + 1, STEPS + 1):
        results["resumed_losses"][step] = loop_step(resumed, resumed_optimizer, step, world, rank)
    results["resumed_eval_loss"] = loop_eval(resumed, resumed_optimizer, world, rank)
    results["resumed_k"] = [g["k"] for g in resumed_optimizer.param_groups]

    x_resumed = full(resumed)

    # the same run never evaluated nor saved: observing a run must not change it
    unobserved = sharded_model()
    unobserved_optimizer = build_optimizer(unobserved)
    for step in range(1, STEPS + 1):
        loop_step(unobserved, unobserved_optimizer, step, world, rank)
    switch_weights(unobserved_optimizer, train=False, model=unobserved)
    x_unobserved = full(unobserved)

    # the foreach twin on the same shards (the run above took the compiled kernel when it builds here)
    results["fused"] = optimizer._use_fused(optimizer.param_groups[0]["params"][0].to_local())
    twin = sharded_model()
    twin_optimizer = build_optimizer(twin, fused=False)
    for step in range(1, STEPS + 1):
        loop_step(twin, twin_optimizer, step, world, rank)
    loop_eval(twin, twin_optimizer, world, rank)
    x_foreach = full(twin)

    # a NaN in one rank's gradient shard: every rank must skip the step (a DTensor all-reduce would drop the NaN)
    switch_weights(twin_optimizer, train=True, model=twin)
    lm_loss(twin, batch_ids(STEPS + 1, world, rank)).backward()
    if rank == world - 1:
        with torch.no_grad():
            next(twin.parameters()).grad.to_local().view(-1)[-1] = float("nan")
    twin_optimizer.step()
    skipped = [None] * world
    dist.all_gather_object(skipped, [(g["k"], g["skipped_steps"]) for g in twin_optimizer.param_groups])
    results["nan_step_k_and_skipped_per_rank"] = skipped

    # the same through a handed-over norm: clip_grad_norm_ of DTensor gradients gives a DTensor norm, which
    # set_grad_norm reduces; a finite one lets the step go without reading the gradients, a NaN on one rank's
    # shard skips the step on every rank
    own_checks = []
    twin_optimizer._grads_finite = lambda grads: own_checks.append(len(grads)) or all_finite(grads)
    for step, poisoned in ((STEPS + 2, False), (STEPS + 3, True)):
        twin_optimizer.zero_grad(set_to_none=True)
        lm_loss(twin, batch_ids(step, world, rank)).backward()
        if poisoned and rank == world - 1:
            with torch.no_grad():
                next(twin.parameters()).grad.to_local().view(-1)[0] = float("nan")
        twin_optimizer.set_grad_norm(torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=1.0))
        twin_optimizer.step()
    handed = [None] * world
    dist.all_gather_object(
        handed, ([(g["k"], g["skipped_steps"]) for g in twin_optimizer.param_groups], len(own_checks))
    )
    results["handed_norm_k_skipped_and_own_checks_per_rank"] = handed
    save_file(x_module, str(out / f"x_module_rank{rank}.safetensors"))
    if rank == 0:
        for name, weights in (
            ("x_master", x_master),
            ("y", y),
            ("x_resumed", x_resumed),
            ("x_at_save", x_at_save),
            ("x_foreach", x_foreach),
            ("x_unobserved", x_unobserved),
        ):
            save_file(weights, str(out / f"{name}.safetensors"))
        for folder, weights in (("final", saved), (f"run/checkpoint-{SAVE_AT}", saved_at_save)):
            (out / folder).mkdir(parents=True, exist_ok=True)
            save_file(contiguous(weights), str(out / folder / "model.safetensors"))
        (out / "results.json").write_text(json.dumps(results, indent=1))


# ---------------------------------------------------------------------------------------------- DeepSpeed bf16


def run_deepspeed_bf16(out: Path, stages=(2, 3)) -> None:
    """ZeRO-2 and ZeRO-3 in bf16 (fp32 master partitions, bf16 module), with DeepSpeed's engine and no Trainer.

    transformers refuses bf16 on a machine without GPU unless use_cpu=True, which turns DeepSpeed off, so on CPU
    the bf16 path is only reachable like this; DeepSpeed itself runs it.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    deepspeed.init_distributed(dist_backend="gloo")  # wraps the process group torchrun's one already set up
    rank, world = dist.get_rank(), dist.get_world_size()
    results = dict(world_size=world)
    for stage in stages:
        model = tiny_model()
        config = {
            "train_micro_batch_size_per_gpu": PER_DEVICE,
            "gradient_accumulation_steps": 1,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
        }
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model), config=config)
        resolve_optimizer(optimizer, RefinedScheduleFreeAdamW)
        params = dict(engine.module.named_parameters())

        def gathered(stage=stage, params=params) -> dict:
            context = deepspeed.zero.GatheredParameters(list(params.values())) if stage == 3 else nullcontext()
            with context:
                return contiguous(params)

        losses = {}
        for step in range(1, STEPS + 1):
            switch_weights(optimizer, train=True, model=engine)
            engine.train()
            loss = lm_loss(engine, batch_ids(step, world, rank))
            engine.backward(loss)
            engine.step()
            losses[step] = loss.item()
        eval_loss = loop_eval(engine, optimizer, world, rank)
        x_master = contiguous({n: safe_get_full_fp32_param(p) for n, p in params.items()})
        x_module = gathered()
        saved = engine._zero3_consolidated_16bit_state_dict() if stage == 3 else engine.module.state_dict()
        switch_weights(optimizer, train=True, model=engine)
        y = gathered()
        switch_weights(optimizer, train=False, model=engine)
        save_file(x_module, str(out / f"zero{stage}_x_module_rank{rank}.safetensors"))
        if rank == 0:
            single = tiny_model().to(torch.bfloat16)
            single.load_state_dict({n: t.to(torch.bfloat16) for n, t in x_module.items()})
            with torch.no_grad():
                single_loss = lm_loss(single.eval(), EVAL.ids).item()
            results[f"zero{stage}"] = dict(
                module_dtype=str(next(iter(params.values())).dtype),
                k=[g["k"] for g in optimizer.param_groups],
                losses=losses,
                eval_loss=eval_loss,
                single_process_eval_loss=single_loss,
                chain=[type(o).__name__ for o in optimizer_chain(optimizer)],
            )
            for name, weights in (("x_master", x_master), ("y", y), ("saved", contiguous(saved))):
                save_file(weights, str(out / f"zero{stage}_{name}.safetensors"))
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fsdp2", action="store_true", help="torchrun + fully_shard instead of the Trainer")
    parser.add_argument("--deepspeed-bf16", action="store_true", help="torchrun + DeepSpeed's engine, bf16")
    parser.add_argument("--refuse-config", help="a DeepSpeed JSON that must be refused before the first step")
    parser.add_argument("--bf16-params", action="store_true", help="the Trainer runs again with bf16 parameters")
    parser.add_argument("--sf-plus", action="store_true", help="also run ScheduleFree+ (into OUT/sf_plus)")
    cli = parser.parse_args()
    cli.out.mkdir(parents=True, exist_ok=True)
    if cli.fsdp2 or cli.deepspeed_bf16:  # one torchrun launch can run both (a process start saved)
        dist.init_process_group("gloo")
        if cli.fsdp2:
            run_fsdp2(cli.out)
            if cli.sf_plus:
                run_fsdp2_plus(cli.out / "sf_plus")
        if cli.deepspeed_bf16:
            (cli.out / "deepspeed_bf16").mkdir(exist_ok=True)
            run_deepspeed_bf16(cli.out / "deepspeed_bf16")
        end_process_group()
    else:
        run_trainer(cli.out, cli.refuse_config, cli.bf16_params, cli.sf_plus)
