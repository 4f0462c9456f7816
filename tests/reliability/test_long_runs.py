"""Long runs: thousands of eval()/train() switches leave y bitwise unchanged (and the lerp that rebuilds y where
the optimizer kept none within a fixed bound, with no accumulation), and a NaN/inf loss mid-run skips that step
without touching any state; the run then continues, or stops cleanly, with every checkpoint intact.

    pytest tests/reliability/test_long_runs.py -q -s     # -s prints the measured drift
"""

import math

import pytest
import torch
from transformers import TrainerCallback

from sf_hf import RefinedScheduleFreeAdamW, ScheduleFreeAdamW, ScheduleFreeTrainer
from sf_hf.checkpoints import checkpoint_folders, checkpoint_problems, safe_torch_load
from sf_hf.optim import schedule_free

from ..trainer_utils import TokenDataset, config, tiny_model, weights

ROUND_TRIPS = 5000
# Each switch is one lerp computed in a wider precision than the parameter's (float64 for float32, float32 for
# bfloat16), rounded once to the parameter's dtype: y comes back within half an ulp of max(|x|, |y|, |z|) and
# stays there (in float32 arithmetic, b1 = 0.1 / 0.5 moved y by a further 1 / 0.5 ulp every round trip:
# 5000 / 2500 ulp after 5000 trips).
DRIFT_BOUND_ULP = 0.5


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tiny = torch.finfo(dtype).tiny
    return torch.exp2(torch.floor(torch.log2(values.abs().clamp_min(tiny)))) * torch.finfo(dtype).eps


def trained_optimizer(cls, dtype, beta1, fused=False, **kwargs):
    torch.manual_seed(0)
    param = torch.nn.Parameter((torch.randn(4096) * torch.logspace(-4, 1, 4096)).to(dtype))
    optimizer = cls([param], lr=1e-2, betas=(beta1, 0.99), warmup_steps=0, fused=fused, **kwargs)
    optimizer.train()
    for _ in range(20):
        param.grad = torch.randn_like(param)
        optimizer.step()
    return param, optimizer


def drift_in_ulp(cls, dtype, beta1, trips=ROUND_TRIPS, fused=False, kept=False, **kwargs):
    """Max |y_after - y_before| / ulp(max(|x|, |y|, |z|)) after 100 and after `trips` eval()/train() round trips.
    `kept=False`: the y that eval() keeps is dropped before each train(), which then rebuilds y by the lerp (as
    after loading a checkpoint that carries none, e.g. FSDP2's)."""
    param, optimizer = trained_optimizer(cls, dtype, beta1, fused, **kwargs)
    y0 = param.detach().double().clone()
    z = optimizer.state[param]["z"].double()
    optimizer.eval()
    x = param.detach().double().clone()
    optimizer.train()
    scale = ulp(torch.maximum(torch.maximum(y0.abs(), x.abs()), z.abs()), dtype)
    drift = {}
    for trip in range(1, trips + 1):
        optimizer.eval()
        if not kept:
            optimizer._kept_y.clear()
        optimizer.train()
        if trip in (100, trips):
            drift[trip] = ((param.detach().double() - y0).abs() / scale).max().item()
    return drift[100], drift[trips]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("beta1", [0.1, 0.5, 0.9, 0.95, 0.98])
@pytest.mark.parametrize(
    "cls, fused",
    [(ScheduleFreeAdamW, False), (RefinedScheduleFreeAdamW, False), (ScheduleFreeAdamW, True)],
    ids=["plain", "refined-plain", "fused"],
)
def test_thousands_of_mode_switches_keep_y_within_a_fixed_bound(cls, fused, dtype, beta1, monkeypatch):
    """The plain and the compiled switch (the same for both optimizers; a compiled call costs ~0.3 ms on a tensor
    this small, so it makes fewer round trips, and the optimizer takes it for groups of any size here)."""
    monkeypatch.setattr(schedule_free, "FUSED_SWITCH_MIN_NUMEL", 0)
    kwargs = {"decoupling_c": 50.0} if cls is RefinedScheduleFreeAdamW else {}  # 200 would make x = z for 20 steps
    trips = ROUND_TRIPS // 5 if fused else ROUND_TRIPS
    after_100, after_all = drift_in_ulp(cls, dtype, beta1, trips=trips, fused=fused, **kwargs)
    print(
        f"\n{cls.__name__} {dtype} b1={beta1} {'fused' if fused else 'plain'}: y drift {after_100:.2f} ulp after "
        f"100 round trips, {after_all:.2f} after {trips}"
    )
    assert after_all <= DRIFT_BOUND_ULP
    assert after_all == after_100  # no accumulation
    assert drift_in_ulp(cls, dtype, beta1, trips=100, fused=fused, kept=True, **kwargs) == (0.0, 0.0)  # y kept: exact


# ------------------------------------------------------------------------------ a NaN/inf loss mid-run


class PoisonLoss(TrainerCallback):
    """Makes the loss of the chosen steps NaN (or inf) through the logits; records y and the state around them."""

    def __init__(self, model, steps, value=math.nan):
        self.steps, self.value, self.current = set(steps), value, 0
        self.y, self.z, self.skipped = {}, {}, {}
        model.lm_head.register_forward_hook(lambda m, i, out: out * self.value if self.current in self.steps else None)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = state.global_step + 1

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self.y[state.global_step] = weights(model)
        self.z[state.global_step] = {n: opt.state[p]["z"].clone() for n, p in model.named_parameters()}
        self.skipped[state.global_step] = (opt.param_groups[0]["skipped_steps"], opt.param_groups[0]["k"])


class StopOnSkippedStep(TrainerCallback):
    """The "stop" policy: end the run at the first skipped step (its last checkpoint is the last good state)."""

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        if opt.param_groups[0]["skipped_steps"]:
            control.should_training_stop = True


def all_finite(tensors: dict) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_loss_skips_the_step_and_the_run_continues(tmp_path, value):
    model = tiny_model()
    poison = PoisonLoss(model, steps=[5], value=value)
    # checkpoints at 3, 6, 9: none between steps 4 and 5, so no eval()/train() round trip touches y there
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=TokenDataset(64, seed=1),
        callbacks=[poison],
        args=config(tmp_path, max_steps=10, save_strategy="steps", save_steps=3, sf_fused=False),
    )
    trainer.train()
    assert poison.skipped[4] == (0, 4) and poison.skipped[5] == (1, 4) and poison.skipped[10] == (1, 9)
    for name in poison.y[4]:  # step 5 changed nothing: y and z bitwise as after step 4
        assert torch.equal(poison.y[4][name], poison.y[5][name]) and torch.equal(poison.z[4][name], poison.z[5][name])
    assert not torch.equal(poison.y[5]["lm_head.weight"], poison.y[6]["lm_head.weight"])  # and training went on
    assert all_finite(weights(trainer.model))
    for folder in checkpoint_folders(tmp_path):
        assert checkpoint_problems(folder, deep=True, manifest=True, training_state=True) == []
        state = safe_torch_load(folder / "optimizer.pt")["state"]
        assert all(torch.isfinite(t).all() for s in state.values() for t in s.values())


def test_a_non_finite_loss_can_stop_the_run_cleanly_at_the_last_good_checkpoint(tmp_path):
    model = tiny_model()
    poison = PoisonLoss(model, steps=range(5, 100))  # broken from step 5 on
    args = config(tmp_path, max_steps=10, save_strategy="steps", save_steps=2, sf_fused=False)
    trainer = ScheduleFreeTrainer(
        model=model, train_dataset=TokenDataset(64, seed=1), args=args, callbacks=[poison, StopOnSkippedStep()]
    )
    trainer.train()
    assert trainer.state.global_step == 5 and all_finite(weights(trainer.model))
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint_problems(tmp_path / "checkpoint-4", deep=True, manifest=True, training_state=True) == []
    # the last good checkpoint resumes: a healthy model picks up from step 4
    resumed = ScheduleFreeTrainer(model=tiny_model(), train_dataset=TokenDataset(64, seed=1), args=args)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 10 and all_finite(weights(resumed.model))


@pytest.mark.parametrize("max_grad_norm, accumulation", [(1.0, 1), (0.0, 2)], ids=["clipping", "no-clip-accumulating"])
def test_the_trainer_s_grad_norm_is_the_non_finite_check(tmp_path, monkeypatch, max_grad_norm, accumulation):
    """Clipping or not, the Trainer measures the gradient norm at every step and hands it to the optimizer, which
    then never reads the gradients itself, and a poisoned step is still skipped with nothing changed."""
    own_checks = []
    monkeypatch.setattr(ScheduleFreeAdamW, "_grads_finite", staticmethod(lambda grads: own_checks.append(len(grads))))
    model = tiny_model()
    poison = PoisonLoss(model, steps=[5])
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=TokenDataset(64, seed=1),
        callbacks=[poison],
        args=config(
            tmp_path, max_steps=8, max_grad_norm=max_grad_norm, sf_fused=False, gradient_accumulation_steps=accumulation
        ),
    )
    trainer.train()
    assert own_checks == []
    assert poison.skipped[5] == (1, 4) and poison.skipped[8] == (1, 7)
    for name in poison.y[4]:
        assert torch.equal(poison.y[4][name], poison.y[5][name]) and torch.equal(poison.z[4][name], poison.z[5][name])
    assert all_finite(weights(trainer.model))
