"""ScheduleFree+'s EMA of ||g||_1 (`polyak_beta` > 0): the paper's form, which sf_hf follows, against the authors'
code, which feeds the bias-corrected EMA back into the EMA.

    python benchmarks/sf_plus_polyak_ema.py                       # polyak_beta 0.9 and 0.99, 200 steps, 3 seeds
    python benchmarks/sf_plus_polyak_ema.py --steps 500 --polyak-beta 0.9

Paper (Algorithm 3):  e_t = pb e_{t-1} + (1 - pb) ||g_t||_1 sqrt(pi/2),   e_hat_t = e_t / (1 - pb^t)
Authors' code:        the same, then e_t <- e_hat_t (`group['grad_l1_ema'] = grad_l1_ema_corr`)

The Polyak step is a_t = lr max(0, F + I_t) / e_hat_t, so the two differ in a_t only. The authors' form is run
with the same `ScheduleFreePlusAdamW`, its stored EMA replaced by the corrected one after each step. The problem:
a 2-layer MLP (64 -> 64 -> 10, tanh) on a fixed synthetic 10-class task, mini-batches of 64, seeded.
Printed: a_t at a few steps, the final training loss at x (the full data set), and the ratio of the two e_hat.
"""

import argparse
import math

import torch

from sf_hf import ScheduleFreePlusAdamW


def problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2048, 64, generator=g)
    teacher = torch.randn(64, 10, generator=g)
    labels = (inputs @ teacher + 0.5 * torch.randn(2048, 10, generator=g)).argmax(-1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    return model, inputs, labels


def run(polyak_beta: float, authors: bool, steps: int = 200, seed: int = 0) -> dict:
    """Trains the problem's MLP; returns `a` (a_t per step), `e_hat` per step and `final_loss` (at x, all data)."""
    model, inputs, labels = problem(seed)
    optimizer = ScheduleFreePlusAdamW(model.parameters(), polyak_beta=polyak_beta, weight_decay=0.0)
    optimizer.train()
    order = torch.Generator().manual_seed(seed + 1)
    a, e_hat = [], []
    for _ in range(steps):
        batch = torch.randint(0, len(inputs), (64,), generator=order)
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        loss.backward()
        optimizer.set_loss(loss)
        optimizer.step()
        optimizer.zero_grad()
        group = optimizer.param_groups[0]
        corrected = group["grad_l1_ema"] / (1 - polyak_beta ** group["k"]) if polyak_beta else group["grad_l1_ema"]
        if authors:
            for g in optimizer.param_groups:
                g["grad_l1_ema"] = corrected
        a.append(group["scheduled_lr"])
        e_hat.append(corrected)
    optimizer.eval()
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(model(inputs), labels).item()
    return dict(a=a, e_hat=e_hat, final_loss=final)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--polyak-beta", type=float, action="append", help="default: 0.9 and 0.99")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    shown = [s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if s <= args.steps]
    print(f"{'pb':>5} {'form':>8} {'seed':>4} " + " ".join(f"{'a_' + str(s):>9}" for s in shown) + "  final loss")
    for pb in args.polyak_beta or [0.9, 0.99]:
        for seed in range(args.seeds):
            paper, authors = run(pb, False, args.steps, seed), run(pb, True, args.steps, seed)
            for name, result in (("paper", paper), ("authors", authors)):
                steps = " ".join(f"{result['a'][s - 1]:9.3g}" for s in shown)
                print(f"{pb:5} {name:>8} {seed:4} {steps}  {result['final_loss']:.4f}")
            ratio = [x / y for x, y in zip(authors["e_hat"], paper["e_hat"])]
            peak = max(range(len(ratio)), key=ratio.__getitem__)
            print(
                f"{'':19}e_hat authors/paper: max {ratio[peak]:.3g} at step {peak + 1}, last {ratio[-1]:.3g}; "
                f"sum of a_t authors/paper {sum(authors['a']) / sum(paper['a']):.3g}"
            )
    print(f"(loss at chance: ln 10 = {math.log(10):.4f})")


if __name__ == "__main__":
    main()
