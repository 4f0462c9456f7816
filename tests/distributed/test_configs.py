"""The shipped accelerate configs and SLURM launcher, and sf_hf.distributed's guards, without launching anything.

pytest tests/distributed/test_configs.py -q      # seconds
"""

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from sf_hf import RefinedScheduleFreeAdamW
from sf_hf.distributed import ReplacedOptimizerError, resolve_optimizer, warn_on_silent_fallback
from sf_hf.distributed.guards import OneScheduleAdvancePerStep

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "ddp": "MULTI_GPU",
    "deepspeed_zero1": "DEEPSPEED",
    "deepspeed_zero2": "DEEPSPEED",
    "deepspeed_zero3": "DEEPSPEED",
    "fsdp2": "FSDP",
}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_is_complete_and_says_how_to_run_it(name):
    path = ROOT / "accelerate_configs" / f"{name}.yaml"
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0].endswith(", for 1 node of 8 GPUs.")  # what `sf-hf recipes` shows
    assert any("num_processes" in line for line in header) and any("accelerate launch" in line for line in header)
    assert any("recipes/launch.slurm" in line for line in header)
    config = load_config_from_file(str(path))  # accelerate's own parser: unknown keys fail here
    assert str(config.distributed_type).split(".")[-1] == CONFIGS[name]
    assert (config.num_machines, config.machine_rank, config.num_processes) == (1, 0, 8)
    raw = yaml.safe_load(text)
    assert raw["mixed_precision"] == "bf16" and raw["use_cpu"] is False
    if name.startswith("deepspeed"):
        ds = raw["deepspeed_config"]
        assert ds["zero_stage"] == int(name[-1])
        assert ds["offload_optimizer_device"] == "none"  # accelerate would swap the optimizer for DeepSpeedCPUAdam
        assert "deepspeed_config_file" not in ds  # no optimizer block can replace sf_hf's optimizer
        assert ds.get("zero3_save_16bit_model", False) is (name == "deepspeed_zero3")
    if name == "fsdp2":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_slurm_launcher_fills_the_machine_fields_from_the_scheduler():
    env = dict(
        os.environ,
        SF_HF_DRY_RUN="1",
        SLURM_NNODES="4",
        SLURM_PROCID="2",
        SLURM_JOB_ID="4321",
        SLURM_GPUS_ON_NODE="8",
        MAIN_PROCESS_IP="node-17",
    )
    env.pop("SLURM_JOB_NODELIST", None)
    out = subprocess.run(
        ["bash", "recipes/launch.slurm", "deepspeed_zero3", "recipes/a b.yaml", "--max_steps", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = shlex.split(out)  # as the node's shell will split it
    expected = {
        "--config_file": "accelerate_configs/deepspeed_zero3.yaml",
        "--num_machines": "4",
        "--num_processes": "32",
        "--machine_rank": "2",
        "--main_process_ip": "node-17",
        "--main_process_port": str(29500 + 4321 % 1000),
    }
    for flag, value in expected.items():
        assert out[out.index(flag) + 1] == value
    assert out[-5:] == ["recipes/pretrain.py", "--config", "recipes/a b.yaml", "--max_steps", "5"]
    bad = subprocess.run(
        ["bash", "recipes/launch.slurm", "zero9", "r.yaml"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "deepspeed_zero3" in bad.stderr


def test_an_optimizer_swapped_in_by_deepspeed_is_refused():
    model = torch.nn.Linear(4, 4)

    class DeepSpeedCPUAdam(torch.optim.Adam):  # what accelerate substitutes under ZeRO-Offload
        pass

    chain = SimpleNamespace(optimizer=SimpleNamespace(optimizer=DeepSpeedCPUAdam(model.parameters())))
    with pytest.raises(ReplacedOptimizerError, match='"zero_force_ds_cpu_optimizer": false'):
        resolve_optimizer(chain, RefinedScheduleFreeAdamW)
    own = SimpleNamespace(optimizer=torch.optim.AdamW(model.parameters()))  # a DeepSpeed `optimizer` block
    with pytest.raises(ReplacedOptimizerError, match="has an `optimizer` block"):
        resolve_optimizer(own, RefinedScheduleFreeAdamW)
    assert resolve_optimizer(own, torch.optim.AdamW) is own.optimizer  # a baseline without modes is left alone
    nvme = SimpleNamespace(swap_optimizer=True, optimizer=RefinedScheduleFreeAdamW(model.parameters()))
    with pytest.raises(ValueError, match="NVMe"):
        resolve_optimizer(nvme, RefinedScheduleFreeAdamW)


@pytest.mark.parametrize(
    "distributed_type, asked, world, warned",
    [
        (DistributedType.MULTI_CPU, "ACCELERATE_USE_FSDP", "2", "asked for FSDP but accelerate runs MULTI_CPU"),
        (DistributedType.MULTI_CPU, "ACCELERATE_USE_DEEPSPEED", "2", "asked for DEEPSPEED"),
        (DistributedType.NO, None, "2", "2 processes were launched but accelerate runs NO"),
        (DistributedType.FSDP, "ACCELERATE_USE_FSDP", "2", None),
        (DistributedType.NO, None, "1", None),
    ],
)
def test_silent_fallbacks_are_warned_about(monkeypatch, caplog, distributed_type, asked, world, warned):
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    if asked:
        monkeypatch.setenv(asked, "true")
    monkeypatch.setenv("WORLD_SIZE", world)
    accelerator = SimpleNamespace(
        distributed_type=distributed_type, num_processes=1 if distributed_type == DistributedType.NO else int(world)
    )
    with caplog.at_level(logging.WARNING, logger="sf_hf.distributed.guards"):
        warn_on_silent_fallback(accelerator)
    if warned:
        assert warned in caplog.text
    else:
        assert not caplog.records


def test_zero3_sub_group_calls_advance_the_schedule_once_per_step():
    """ZeRO-3 hands the optimizer one sub-group per step() call (other groups empty): same result as one call."""
    torch.manual_seed(0)
    weights = [torch.randn(6), torch.randn(3), torch.randn(5)]  # sub-groups: 0 and 1 of group 0, 2 of group 1
    grads = [[torch.randn_like(w) for w in weights] for _ in range(4)]
    hyper = dict(lr=0.1, warmup_steps=2, decoupling_c=5.0, betas=(0.9, 0.99), weight_decay=0.1)

    plain = [w.clone() for w in weights]
    reference = RefinedScheduleFreeAdamW([dict(params=plain[:2]), dict(params=plain[2:])], **hyper)
    reference.train()
    flat = [w.clone() for w in weights]
    zero3 = SimpleNamespace(fp32_partitioned_groups_flat=flat)
    sharded = RefinedScheduleFreeAdamW([dict(params=flat[:2]), dict(params=flat[2:])], **hyper)
    OneScheduleAdvancePerStep(zero3, sharded)
    sharded.train()
    owner = [0, 0, 1]
    for step_grads in grads:
        for p, g in zip(plain, step_grads):
            p.grad = g
        reference.step()
        for sub_group, (p, g) in enumerate(zip(flat, step_grads)):  # what DeepSpeed's stage-3 step does
            for group in sharded.param_groups:
                group["params"] = []
            sharded.param_groups[owner[sub_group]]["params"] = [p]
            p.grad = g
            sharded.step()
        for group, params in zip(sharded.param_groups, (flat[:2], flat[2:])):
            group["params"] = list(params)
    assert [g["k"] for g in sharded.param_groups] == [4, 4]
    for key in ("weight_sum", "lr_max", "scheduled_lr", "averaging_weight"):
        assert [g[key] for g in sharded.param_groups] == [g[key] for g in reference.param_groups]
    for a, b in zip(plain, flat):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
