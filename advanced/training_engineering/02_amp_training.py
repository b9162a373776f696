"""Mixed precision: fp16 / bf16 / fp32, autocast, and why GradScaler scales the loss.

``torch.autocast`` runs matmuls and convolutions in a 16-bit dtype (fast on tensor cores, half
the memory) and keeps precision-sensitive ops such as losses in fp32; the weights stay fp32.
fp16 has few exponent bits, so small gradients underflow to zero: multiplying the loss by a
scale S before ``backward()`` lifts them into range, and dividing the gradients by S before the
step undoes it (Micikevicius et al. 2018). bf16 keeps fp32's exponent range and needs no scaler.

Claims proven:
  1. ``torch.finfo`` max, eps and smallest normal of fp16, bf16 and fp32 equal the closed forms
     from their bit layouts (sign / exponent / mantissa: 1/5/10, 1/8/7, 1/8/23).
  2. An fp16 backward whose gradients (~1e-8) underflow to exactly zero is rescued by loss
     scaling: scaled, then unscaled in fp32, the gradients match the float64 truth.
  3. ``torch.amp.GradScaler`` skips the optimizer step when a gradient is inf/nan and halves its
     scale; after ``growth_interval`` good steps it doubles the scale.
  4. Under ``torch.autocast`` (fp16 and bf16) a matmul runs in the low-precision dtype (its
     result equals the matmul of inputs cast by hand) while ``cross_entropy`` returns fp32.
  5. ``train_step`` (fp16 autocast + an enabled GradScaler, the whole recipe) trains a small MLP:
     the loss falls at least 3x, within 5% of an fp32 run, and the weights stay fp32.
  Every device, CPU included, runs the fp16 + GradScaler recipe in step 5 (on a CPU fp16 brings
  no speed; it runs there to prove the recipe). bf16 needs no scaler; step 4 shows its autocast.

Run:  python advanced/training_engineering/02_amp_training.py        (about 5 s, laptop CPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(n_points=2048, batch=256, steps=300)
SMOKE = dict(n_points=512, batch=128, steps=100)

LAYOUTS = {torch.float16: (5, 10), torch.bfloat16: (8, 7), torch.float32: (8, 23)}


def train_step(model, inputs, targets, optimizer, scaler, device_type, dtype) -> float:
    """One mixed-precision step: forward under autocast, scaled backward, unscaled step."""
    optimizer.zero_grad(set_to_none=True)
    # dtype=float32 is the plain fp32 baseline: autocast off (and the scaler built disabled).
    with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(inputs)                             # matmuls in `dtype`
        loss = F.cross_entropy(logits, targets)            # autocast keeps the loss in fp32
    scaler.scale(loss).backward()                          # loss * S: small grads stay > 0
    scaler.unscale_(optimizer)                             # grads / S (clip here if you clip)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
    scaler.step(optimizer)                                 # skipped if any grad is inf/nan
    scaler.update()                                        # adjust S for the next step
    return loss.item()


def step_1_formats() -> dict:
    rows = {}
    print(f"{'dtype':>9} {'max':>11} {'eps':>10} {'smallest normal':>16}   bits (exp, mantissa)")
    for dtype, (e, m) in LAYOUTS.items():
        bias = 2 ** (e - 1) - 1
        closed = [(2 - 2.0**-m) * 2.0**bias, 2.0**-m, 2.0 ** (1 - bias)]
        info = torch.finfo(dtype)
        rows[str(dtype)] = [info.max, info.eps, info.tiny]
        print(f"{str(dtype)[6:]:>9} {info.max:11.4g} {info.eps:10.3g} {info.tiny:16.3g}   "
              f"({e}, {m})")
        check(f"{dtype}: finfo max/eps/tiny == closed form from ({e}, {m}) bits",
              torch.tensor(rows[str(dtype)], dtype=torch.float64),
              torch.tensor(closed, dtype=torch.float64))
    print("fp16 overflows past 65504; bf16 reaches fp32's ~3.4e38 with 3 fewer digits")
    return rows


def step_2_underflow_rescued(scale: float = 2.0**14) -> dict:
    # Explicit fp16 tensors (CPU is fine): the backward of 1e-4 * sum(w * x) is 1e-4 * x ~ 1e-8,
    # below fp16's smallest subnormal 6e-8. GradScaler starts at 2^16 and backs off when that
    # overflows; 2^14 lifts these gradients safely into fp16's normal range.
    x = (torch.rand(1000) * 1e-4 + 1e-4).half()                     # (1000,) fp16 inputs
    truth = x.double() * 1e-4                                       # float64 gradient
    w = torch.ones(1000, dtype=torch.float16, requires_grad=True)
    (1e-4 * (w * x).sum()).float().backward()                       # no scaling
    zeros = (w.grad == 0).float().mean().item()
    w.grad = None
    ((1e-4 * (w * x).sum()).float() * scale).backward()             # loss * S
    unscaled = w.grad.float() / scale                               # grads / S, in fp32
    print(f"true gradients: {truth.min().item():.2e} .. {truth.max().item():.2e}; fp16 "
          f"without scaling: {zeros:.0%} exactly zero")
    check("without loss scaling every fp16 gradient underflows to 0", zeros == 1.0,
          detail=f"{zeros:.0%} zeros")
    # three fp16 roundings (the constant, the product, the gradient) of 2^-11 each: 2e-3.
    check(f"with the loss scaled by {scale:.0f}, unscaled fp32 gradients == float64 truth",
          unscaled, truth, rtol=2e-3)
    return {"zeros_without_scaling": zeros}


def step_3_grad_scaler(device) -> list:
    p = torch.nn.Parameter(torch.ones(3, device=device))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16, growth_interval=2)
    scales, moved = [], []
    for bad in (False, False, True, False):
        opt.zero_grad()
        scaler.scale((p * p).sum()).backward()             # true grad 2p, stored as 2p * S
        if bad:
            p.grad[0] = float("inf")                        # an overflow somewhere in backward
        before = p.detach().clone()
        scaler.step(opt)
        scaler.update()
        moved.append(not torch.equal(before, p.detach()))
        scales.append(scaler.get_scale())
        print(f"step with {'an inf' if bad else 'finite'} gradient: params "
              f"{'updated' if moved[-1] else 'skipped'}, scale now {scales[-1]:.0f}")
    check("GradScaler steps on finite grads and skips the step on inf",
          moved == [True, True, False, True], detail=str(moved))
    check("scale: x2 after growth_interval=2 good steps, x0.5 on inf",
          torch.tensor(scales), torch.tensor([2.0**16, 2.0**17, 2.0**16, 2.0**16]))
    return scales


def step_4_autocast_dtypes(device, dtype) -> dict:
    a, b = torch.randn(64, 32, device=device), torch.randn(32, 10, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    with torch.autocast(device_type=device.type, dtype=dtype):
        c = a @ b                                            # autocast casts a, b to dtype
        loss = F.cross_entropy(c, y)
    by_hand = a.to(dtype) @ b.to(dtype)
    print(f"inside autocast({dtype}): matmul -> {c.dtype}, cross_entropy -> {loss.dtype}; "
          f"|matmul - fp32 matmul| max {(c.float() - a @ b).abs().max().item():.3g}")
    check(f"autocast matmul runs in {dtype}", c.dtype == dtype, detail=str(c.dtype))
    check(f"{dtype} autocast matmul == matmul of inputs cast by hand", c, by_hand)
    check(f"{dtype} autocast keeps cross_entropy in float32", loss.dtype == torch.float32,
          detail=str(loss.dtype))
    return {"matmul": str(c.dtype), "loss": str(loss.dtype)}


def step_5_train(device, n_points: int, batch: int, steps: int) -> dict:
    centers = 0.7 * torch.randn(8, 16, device=device)
    y = torch.randint(0, 8, (n_points,), device=device)
    x = centers[y] + torch.randn(n_points, 16, device=device)          # 8 noisy blobs
    runs = {}
    for name, amp_dtype in (("amp", torch.float16), ("fp32", torch.float32)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 8)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        # fp16 + an enabled scaler on every device, CPU included, so scale / unscale_ / clip /
        # step / update all run. (With bf16 you would pass enabled=False: nothing to rescue.)
        scaler = torch.amp.GradScaler(device.type, enabled=name == "amp")
        losses = []
        for step in range(steps):
            idx = torch.arange(step * batch, (step + 1) * batch, device=device) % n_points
            losses.append(train_step(model, x[idx], y[idx], opt, scaler, device.type,
                                     amp_dtype))
        runs[name] = (sum(losses[:5]) / 5, sum(losses[-5:]) / 5)
        if name == "amp":
            weight_dtypes = {p.dtype for p in model.parameters()}
            final_scale = scaler.get_scale()
    (a0, a1), (f0, f1) = runs["amp"], runs["fp32"]
    print(f"AMP (float16 + GradScaler, scale now {final_scale:.0f}): loss {a0:.4f} -> {a1:.5f};"
          f" fp32: {f0:.4f} -> {f1:.5f}")
    # A train_step that forgot scaler.unscale_ clips the S-times-too-large gradients to norm 5;
    # scaler.step then divides them by S, so the weights barely move and the loss stays put.
    check("AMP training: the loss falls at least 3x", a1 < a0 / 3, detail=f"{a0 / a1:.1f}x")
    # fp16 rounding (11 significant bits) perturbs every step a little; the runs stay together
    # (~0.02% here on CPU); 5% leaves room for other devices' kernels.
    check("AMP ends within 5% of the fp32 run's loss", abs(a1 - f1) < 0.05 * f1,
          detail=f"{a1:.5f} vs {f1:.5f}")
    check("master weights stay float32 under autocast", weight_dtypes == {torch.float32},
          detail=str(weight_dtypes))
    return {"amp": runs["amp"], "fp32": runs["fp32"], "scale": final_scale}


def supported(device, dtype) -> bool:
    """bf16 autocast needs bf16 math: on CUDA from Ampere on (older GPUs skip it, saying so)."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"autocast {dtype}: {torch.cuda.get_device_name(device)} has no bf16 math; skipped")
        return False
    return True


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "formats": step_1_formats(),
        "underflow": step_2_underflow_rescued(),
        "scales": step_3_grad_scaler(device),
        "autocast": {str(dtype): step_4_autocast_dtypes(device, dtype)
                     for dtype in (torch.float16, torch.bfloat16) if supported(device, dtype)},
        "train": step_5_train(device, **cfg),
    }
    (a0, a1) = results["train"]["amp"]
    print(f"summary: fp16 autocast + GradScaler training loss {a0:.3f} -> {a1:.4f}; unscaled, "
          f"fp16 zeroed {results['underflow']['zeros_without_scaling']:.0%} of the small "
          f"gradients, scaled none")
    return results


if __name__ == "__main__":
    main()
