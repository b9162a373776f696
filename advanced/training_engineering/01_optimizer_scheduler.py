"""Optimizers and learning-rate schedules: AdamW vs Adam + L2, parameter groups, schedulers.

Adam + L2 adds ``wd * p`` to the gradient, so the decay is then divided by Adam's per-weight
scale sqrt(v); AdamW decouples it and shrinks the weight directly (Loshchilov & Hutter 2019).
A scheduler multiplies the learning rate step by step; warmup then cosine decay is the usual
recipe for transformers, built here with ``LambdaLR``.

Claims proven:
  1. One AdamW step by hand (Kingma & Ba 2015 moments + decoupled decay) equals
     ``torch.optim.AdamW`` for 3 steps; Adam + L2 by hand equals ``torch.optim.Adam(weight_decay)``;
     the two differ.
  2. ``param_groups``: biases and norm weights get no weight decay (a zero-gradient AdamW step
     shrinks only the others, by exactly 1 - lr * wd); per-group learning rates take effect.
  3. ``StepLR``, ``CosineAnnealingLR`` and ``OneCycleLR`` follow their closed forms at every step.
  4. ``LambdaLR(warmup_cosine_lambda)`` is linear warmup then cosine decay: it equals
     ``SequentialLR(LinearLR, CosineAnnealingLR)`` at every step.
  5. The recipe (AdamW + param groups + warmup-cosine) trains a small MLP: the loss falls 10x.
  The schedules are printed as a table and written to TensorBoard under --out-dir.

Run:  python advanced/training_engineering/01_optimizer_scheduler.py   (about 4 s, laptop CPU)
      tensorboard --logdir runs/advanced/training_engineering
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.tensorboard import SummaryWriter

from torchnotes import check, make_parser, output_folder, start

FULL = dict(total_steps=100, warmup_steps=10, train_steps=300)
SMOKE = dict(total_steps=40, warmup_steps=5, train_steps=100)

LR = 0.1
# Schedules in float64 Python arithmetic vs PyTorch's (recursive) float64 updates: ~1e-15 drift
# per step; 1e-9 is far below any off-by-one (which changes a value by a percent or more).
LR_ATOL = 1e-9


def warmup_cosine_lambda(warmup_steps, total_steps, min_ratio=0.0):
    """LambdaLR factor: (step + 1) / warmup for the first ``warmup_steps`` steps, then a cosine
    from 1 down to ``min_ratio`` reached at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps                       # linear, never exactly 0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def param_groups(model: nn.Module, weight_decay: float) -> list:
    """Two AdamW groups: matrices/kernels decay; biases and norm weights (1-D) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def adam_by_hand(p, grad_fn, steps, lr, wd, decoupled, betas=(0.9, 0.999), eps=1e-8):
    """Adam's moments (Kingma & Ba 2015); decay decoupled (AdamW) or added to the gradient."""
    b1, b2 = betas
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, steps + 1):
        g = grad_fn(p)
        if not decoupled:
            g = g + wd * p                                  # Adam + L2: decay is a gradient term
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)    # bias correction
        if decoupled:
            p = p - lr * wd * p                              # AdamW: shrink the weight itself
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def step_1_adamw_vs_adam_l2(device, lr=0.01, wd=0.1, steps=3) -> dict:
    X, y = torch.randn(32, 8, device=device), torch.randn(32, device=device)
    p0 = 3 * torch.randn(8, device=device)

    def grad_fn(p):                                          # d/dp of mean (X p - y)^2 / 2
        return X.T @ (X @ p - y) / len(y)

    results = {}
    for name, cls, decoupled in (("AdamW", torch.optim.AdamW, True),
                                 ("Adam+L2", torch.optim.Adam, False)):
        p = p0.clone().requires_grad_(True)
        opt = cls([p], lr=lr, weight_decay=wd)
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * ((X @ p - y) ** 2).mean()).backward()
            opt.step()
        hand = adam_by_hand(p0.clone(), grad_fn, steps, lr, wd, decoupled)
        check(f"{name}: {steps} steps by hand == torch.optim.{cls.__name__}(weight_decay={wd})",
              p.detach(), hand, atol=1e-6, rtol=1e-6)     # float32 ulps of |p| <= ~10
        results[name] = p.detach()
    gap = (results["AdamW"] - results["Adam+L2"]).abs().max().item()
    print(f"AdamW vs Adam+L2 after {steps} steps: max |difference| = {gap:.4f}")
    check("decoupled decay differs from L2 inside Adam", gap > 1e-3, detail=f"{gap:.4f}")
    return {"gap": gap}


def step_2_param_groups(device, lr=0.1, wd=0.5) -> dict:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 8), nn.LayerNorm(8), nn.Linear(8, 2)).to(device)
    norm_types = (nn.BatchNorm2d, nn.LayerNorm)
    expected_no_decay = {f"{i}.{n}" for i, mod in enumerate(model) for n, _ in
                         mod.named_parameters() if n == "bias" or isinstance(mod, norm_types)}
    groups = param_groups(model, wd)
    names = {id(p): n for n, p in model.named_parameters()}
    got_no_decay = {names[id(p)] for p in groups[1]["params"]}
    print(f"no decay: {sorted(got_no_decay)}")
    check("param_groups: exactly the biases and norm weights get weight_decay=0",
          got_no_decay == expected_no_decay, detail=f"{len(got_no_decay)} tensors")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(groups, lr=lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)                       # Adam's update is 0: only decay acts
    opt.step()
    want = [b * (1.0 if names[id(p)] in expected_no_decay else 1 - lr * wd)
            for p, b in zip(model.parameters(), before, strict=True)]
    check("zero-gradient AdamW step: decayed tensors shrink by 1 - lr*wd, the rest stay",
          torch.cat([p.detach().flatten() for p in model.parameters()]),
          torch.cat([w.flatten() for w in want]), atol=1e-7)
    backbone, head = model[:5], model[5]
    sgd = torch.optim.SGD([{"params": backbone.parameters(), "lr": 0.01},
                           {"params": head.parameters()}], lr=0.1)     # head uses the default
    x = torch.randn(4, 3, 8, 8, device=device)
    sgd.zero_grad()
    model(x).square().mean().backward()
    old = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
    sgd.step()
    want = [o - (0.1 if i >= len(old) - 2 else 0.01) * g for i, (o, g) in enumerate(old)]
    check("per-group learning rates: backbone moves by 0.01 * grad, head by 0.1 * grad",
          torch.cat([p.detach().flatten() for p in model.parameters()]),
          torch.cat([w.flatten() for w in want]), atol=1e-7)
    return {"no_decay": sorted(got_no_decay)}


def lr_trace(make_sched, steps: int) -> list:
    """The learning rate each step really applied, measured from the update it made."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=LR, momentum=0.9)          # OneCycleLR cycles the momentum
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        p.grad = torch.ones_like(p)                          # a constant gradient of 1
        before = p.detach().clone()
        opt.step()                                           # optimizer first, then scheduler
        sched.step()           # (the other way round, step t would use step t + 1's rate)
        buf = opt.state[p]["momentum_buffer"]                # SGD moved p by lr * buf
        lrs.append(((before - p.detach()) / buf).item())
    return lrs


def one_cycle_closed_form(t, total, max_lr, pct_start=0.3, div=25.0, final_div=1e4):
    """OneCycleLR (Smith & Topin 2019), cosine annealing: up to max_lr, then down to the floor."""
    start_lr, end_lr, peak = max_lr / div, max_lr / div / final_div, pct_start * total - 1
    if t <= peak:
        a, b, pct = start_lr, max_lr, t / peak
    else:
        a, b, pct = max_lr, end_lr, (t - peak) / (total - 1 - peak)
    return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))


def step_3_and_4_schedules(total: int, warmup: int, writer: SummaryWriter) -> dict:
    step_size, eta_min, min_ratio = total // 4, 1e-3, 0.1
    traces = {
        "StepLR": lr_trace(lambda o: lr_scheduler.StepLR(o, step_size, gamma=0.5), total),
        "Cosine": lr_trace(lambda o: lr_scheduler.CosineAnnealingLR(o, total, eta_min), total),
        "OneCycle": lr_trace(lambda o: lr_scheduler.OneCycleLR(o, LR, total_steps=total), total),
        "WarmupCos": lr_trace(lambda o: lr_scheduler.LambdaLR(
            o, warmup_cosine_lambda(warmup, total, min_ratio)), total),
    }
    closed = {
        "StepLR": [LR * 0.5 ** (t // step_size) for t in range(total)],
        "Cosine": [eta_min + (LR - eta_min) * (1 + math.cos(math.pi * t / total)) / 2
                   for t in range(total)],                    # Loshchilov & Hutter 2017
        "OneCycle": [one_cycle_closed_form(t, total, LR) for t in range(total)],
    }
    for name, want in closed.items():
        check(f"{name} follows its closed form at all {total} steps",
              torch.tensor(traces[name], dtype=torch.float64),
              torch.tensor(want, dtype=torch.float64), atol=LR_ATOL)
    reference = lr_trace(lambda o: lr_scheduler.SequentialLR(o, [
        lr_scheduler.LinearLR(o, start_factor=1 / warmup, total_iters=warmup - 1),
        lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=min_ratio * LR)],
        milestones=[warmup]), total)
    check("LambdaLR(warmup_cosine_lambda) == SequentialLR(LinearLR, CosineAnnealingLR)",
          torch.tensor(traces["WarmupCos"], dtype=torch.float64),
          torch.tensor(reference, dtype=torch.float64), atol=LR_ATOL)
    print("step  " + "".join(f"{n:>11s}" for n in traces))
    for t in range(0, total, max(1, total // 10)):
        print(f"{t:4d}  " + "".join(f"{traces[n][t]:11.5f}" for n in traces))
    for t in range(total):
        for name, lrs in traces.items():
            writer.add_scalar(f"lr/{name}", lrs[t], t)
    return traces


def step_5_train_with_recipe(device, steps: int, warmup: int) -> dict:
    x = torch.rand(512, 1, device=device) * 6 - 3
    y = torch.sin(2 * x) + 0.3 * x                                  # a wiggly 1-D target
    model = nn.Sequential(nn.Linear(1, 64), nn.LayerNorm(64), nn.Tanh(), nn.Linear(64, 64),
                          nn.Tanh(), nn.Linear(64, 1)).to(device)
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.01), lr=3e-2)
    sched = lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(warmup, steps, min_ratio=0.05))
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    print(f"AdamW + param groups + warmup-cosine: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    check("the recipe trains: the loss falls at least 10x", losses[-1] < losses[0] / 10,
          detail=f"{losses[0] / losses[-1]:.0f}x")
    return {"first": losses[0], "last": losses[-1]}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {"adam": step_1_adamw_vs_adam_l2(device), "groups": step_2_param_groups(device)}
    log_dir = output_folder(args.out_dir, "tb")          # replaced each run: no mixed curves
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        results["schedules"] = step_3_and_4_schedules(cfg["total_steps"], cfg["warmup_steps"],
                                                      writer)
    results["train"] = step_5_train_with_recipe(device, cfg["train_steps"], cfg["warmup_steps"])
    print(f"summary: schedules written to {log_dir} (tensorboard --logdir {log_dir}); "
          f"recipe loss {results['train']['first']:.3f} -> {results['train']['last']:.4f}")
    return results


if __name__ == "__main__":
    main()
