"""GAN training: the minimax game, the non-saturating loss, mode coverage, the WGAN-GP penalty.

A generator G maps noise to samples; a discriminator D tells real from fake. Goodfellow et al.
(2014) write the game as min_G max_D E[log D(x)] + E[log(1 - D(G(z)))].

Claims proven:
  1. Where D wins (D(G(z)) ~ 0), the saturating generator loss log(1 - D(G(z))) has an almost
     zero gradient; the non-saturating -log D(G(z)) (Goodfellow 2014, sec. 3) does not.
  2. ``gradient_penalty`` (WGAN-GP, Gulrajani 2017) is zero for a critic whose gradient has
     unit norm everywhere (a linear critic with a unit weight vector) and (|w| - 1)^2 otherwise;
     its backward reaches the critic's weights (create_graph=True), and on a nonlinear critic
     it is taken at the interpolated points x_hat = e * real + (1 - e) * fake.
  3. The mode count sees collapse: samples from 3 of the 8 modes count 3, real data counts 8.
  4. A short training run on a ring of 8 Gaussians spreads G's samples from one blob over the
     modes (modes covered counted before vs after; a PNG of real / before / after).

Mode collapse is G putting all its mass on a few modes that fool the current D; counting the
modes that receive samples is the simplest way to see it.

Run:  python advanced/generative_models/03_gan_training.py        (about 10 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import save_image

from torchnotes import check, make_parser, output_file, progress, start

K, RADIUS, STD = 8, 2.0, 0.05            # 8 Gaussians on a ring (the usual toy for collapse)
FULL = dict(hidden=128, steps=1000, batch=256, lr=1e-3, n_eval=2000, min_modes=7)
SMOKE = dict(hidden=64, steps=550, batch=64, lr=5e-3, n_eval=1000, min_modes=5)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): E[(||grad_x critic(x_hat)|| - 1)^2] on random
    points x_hat = e * real + (1 - e) * fake between real and fake samples, e ~ U(0, 1).
    Unweighted: the critic loss adds lambda * this (lambda = 10 in the paper)."""
    e = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator)  # (B, 1, ...)
    e = e.to(real.device)                          # drawn on the CPU: one seed, any device
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)                  # (B, ...)
    # create_graph=True keeps grad as a function of the critic's weights, so the penalty
    # can be backpropagated in the critic step; without it the penalty is a constant.
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)    # (B, ...)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


def ring_centers(device) -> torch.Tensor:
    angle = 2 * math.pi * torch.arange(K, device=device) / K
    return RADIUS * torch.stack([angle.cos(), angle.sin()], 1)                          # (K, 2)


def real_batch(n: int, device, g=None, modes: int = K) -> torch.Tensor:
    idx = torch.randint(0, modes, (n,), generator=g).to(device)
    return ring_centers(device)[idx] + STD * torch.randn(n, 2, generator=g).to(device)


def modes_covered(x: torch.Tensor) -> int:
    """A mode is covered when >= 2% of the samples lie within 0.3 (6 std) of its centre."""
    dist = torch.cdist(x, ring_centers(x.device))                                    # (N, K)
    near, which = dist.min(1)
    counts = torch.bincount(which[near < 0.3], minlength=K)
    return int((counts >= 0.02 * len(x)).sum())


def step_1_non_saturating_gradient(device) -> float:
    logit = torch.tensor([-6.0, -3.0, 0.0], device=device, requires_grad=True)  # D(G(z)) logits
    d = torch.sigmoid(logit)
    saturating = torch.log(1 - d).sum()                  # the generator minimises this
    non_saturating = -torch.log(d).sum()                 # ... or this (same fixed point)
    g_sat, = torch.autograd.grad(saturating, logit, retain_graph=True)   # d is shared
    g_ns, = torch.autograd.grad(non_saturating, logit)
    # The same losses in the library's form: BCE(l, 0) = -log(1 - D), BCE(l, 1) = -log D.
    check("saturating loss == -BCEWithLogits(l, 0)", saturating,
          -F.binary_cross_entropy_with_logits(logit, torch.zeros(3, device=device),
                                              reduction="sum"), atol=1e-5)
    check("closed forms: d sat / dl = -D, d non-sat / dl = -(1 - D)",
          torch.stack([g_sat, g_ns]), torch.stack([-d, -(1 - d)]).detach(), atol=1e-6)
    print(f"D(G(z)) = {d.detach().tolist()}\n|grad| saturating     {g_sat.abs().tolist()}\n"
          f"|grad| non-saturating {g_ns.abs().tolist()}")
    ratio = (g_ns[0] / g_sat[0]).item()
    check("where D wins (D = 0.0025) the non-saturating gradient is > 100x larger",
          ratio > 100, detail=f"ratio {ratio:.0f}")
    return ratio


def step_2_gradient_penalty(device) -> dict:
    w = torch.tensor([0.6, 0.8], device=device)                       # |w| = 1
    unit = nn.Linear(2, 1).to(device)
    big = nn.Linear(2, 1).to(device)
    with torch.no_grad():
        unit.weight.copy_(w[None])
        big.weight.copy_(3 * w[None])                                 # |w| = 3
    real, fake = real_batch(64, device), torch.randn(64, 2, device=device)     # (64, 2) each
    gp_unit, gp_big = gradient_penalty(unit, real, fake), gradient_penalty(big, real, fake)
    check("gradient penalty is 0 for a critic with unit-norm gradient (linear, |w| = 1)",
          gp_unit, torch.tensor(0.0), atol=1e-6)
    check("... and (|w| - 1)^2 = 4 for |w| = 3", gp_big, torch.tensor(4.0), atol=1e-5)
    if gp_big.requires_grad:              # False if grad was taken without create_graph=True
        gp_big.backward()
    got = big.weight.grad if big.weight.grad is not None else torch.zeros_like(big.weight)
    # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w| = 2 * 2 * [0.6, 0.8]
    check("gp.backward() reaches the critic's weight: d gp / dw == 2(|w| - 1) w/|w|",
          got, (4 * w)[None], atol=1e-5)
    # A nonlinear critic f(x) = |x|^2 / 2 has input gradient x itself, so the penalty is
    # mean((|x_hat| - 1)^2) at the interpolated points, rebuilt here from the same e.
    gp_quad = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake,
                               torch.Generator().manual_seed(5))
    e = torch.rand(64, 1, generator=torch.Generator().manual_seed(5)).to(device)     # (64, 1)
    x_hat = e * real + (1 - e) * fake                                                 # (64, 2)
    print(f"d gp / dw = {got.flatten().tolist()}; f = |x|^2/2: penalty {gp_quad.item():.4f} "
          f"(at the real points alone it would be {(real.norm(dim=1) - 1).pow(2).mean():.4f})")
    check("f(x) = |x|^2/2: penalty == mean((|x_hat| - 1)^2), x_hat = e real + (1 - e) fake",
          gp_quad, (x_hat.norm(dim=1) - 1).pow(2).mean(), atol=1e-6)
    return {"gp_unit": gp_unit.item(), "gp_big": gp_big.item(), "gp_quad": gp_quad.item()}


def step_3_mode_count_sees_collapse(device, n: int) -> int:
    g = torch.Generator().manual_seed(3)
    full, collapsed = real_batch(n, device, g), real_batch(n, device, g, modes=3)
    counts = modes_covered(full), modes_covered(collapsed)
    return check("mode count: real data covers 8, a collapsed sampler (3 modes) covers 3",
                 counts == (8, 3), detail=f"{counts}")


def train_gan(G, D, cfg, device) -> None:
    """The GAN loop: one D step (real -> 1, fake -> 0), then one non-saturating G step."""
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=(0.5, 0.9))
    b = cfg["batch"]
    ones, zeros = torch.ones(b, 1, device=device), torch.zeros(b, 1, device=device)
    for _ in progress(range(cfg["steps"]), desc="GAN"):
        real = real_batch(b, device)
        fake = G(torch.randn(b, 2, device=device))
        d_loss = (F.binary_cross_entropy_with_logits(D(real), ones)             # max log D(x)
                  + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros))  # + log(1-D)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(D(fake), ones)    # -log D(G(z)): non-sat.
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()


def to_image(x: torch.Tensor, size: int = 96) -> torch.Tensor:
    """A 2-D scatter as a (1, size, size) image: a histogram over [-3, 3]^2, brighter = more."""
    ij = ((x.clamp(-2.99, 2.99) + 3) / 6 * size).long()                       # (N, 2)
    img = torch.zeros(size * size, device=x.device)
    img.index_add_(0, (size - 1 - ij[:, 1]) * size + ij[:, 0], torch.ones(len(x), device=x.device))
    return (img / img.max().clamp(min=1)).sqrt().view(1, size, size)


def step_4_training_spreads_samples(device, cfg, path) -> dict:
    G, D = mlp(2, 2, cfg["hidden"]).to(device), mlp(2, 1, cfg["hidden"]).to(device)
    z = torch.randn(cfg["n_eval"], 2, device=device)                       # fixed noise
    with torch.no_grad():
        before = G(z)
    train_gan(G, D, cfg, device)
    with torch.no_grad():
        after = G(z)
    m0, m1 = modes_covered(before), modes_covered(after)
    print(f"modes covered: before {m0}/8 (spread {before.std(0).mean():.3f}), "
          f"after {m1}/8 (spread {after.std(0).mean():.3f})")
    check(f"training spreads G over the modes: >= {cfg['min_modes']} covered and more than "
          f"before", m1 >= cfg["min_modes"] and m1 > m0, detail=f"{m0} -> {m1} of 8")
    panels = [to_image(real_batch(cfg["n_eval"], device)), to_image(before), to_image(after)]
    save_image(torch.stack(panels).cpu(), path, nrow=3, pad_value=1.0)
    print(f"saved {path} (real | G before training | G after)")
    return {"modes_before": m0, "modes_after": m1, "png": str(path)}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    png = output_file(args.out_dir, "gan_modes.png")     # checked before the training
    cfg = SMOKE if args.smoke else FULL
    results = {"grad_ratio": step_1_non_saturating_gradient(device),
               "gp": step_2_gradient_penalty(device),
               "mode_count_ok": step_3_mode_count_sees_collapse(device, cfg["n_eval"])}
    results.update(step_4_training_spreads_samples(device, cfg, png))
    print(f"summary: modes covered {results['modes_before']} -> {results['modes_after']} of 8")
    return results


if __name__ == "__main__":
    main()
