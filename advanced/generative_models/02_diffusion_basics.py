"""Diffusion basics (DDPM): forward process q(x_t|x_0), noise-prediction loss, ancestral sampling.

DDPM (Ho et al. 2020) destroys an image with t small Gaussian steps and trains a network to
predict the added noise; sampling runs the learned reverse steps from pure noise back to an image.

Claims proven:
  1. ``q_sample`` (the closed form x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps) has the same
     mean and variance as running the one-step forward process t times.
  2. ``timestep_embedding`` is the sinusoidal one: emb(0) = [0..0, 1..1] and the distance
     between emb(t) and emb(t + k) depends on k only.
  3. Training a tiny noise predictor on MNIST-shaped digits with L_simple = |eps - eps_theta|^2
     lowers the held-out loss by the stated factor.
  4. ``p_sample_loop`` with the exact noise predictor of a known Gaussian recovers that
     Gaussian (mean, std), and with the trained model returns finite samples of the right shape
     (saved as a PNG grid).

Run:  python advanced/generative_models/02_diffusion_basics.py        (about 30 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn
from torchvision.utils import save_image

from torchnotes import check, make_parser, output_file, progress, start
from torchnotes.datasets import (
    SyntheticMNIST,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

T = 1000                                   # Ho et al. 2020: T = 1000, beta 1e-4 -> 0.02
FULL = dict(n_train=6000, n_eval=256, hidden=512, emb=64, steps=1500, batch=128, lr=1e-3,
            n_chains=20_000, n_gauss=20_000, n_samples=32, factor=5.0)
SMOKE = dict(n_train=256, n_eval=64, hidden=64, emb=16, steps=60, batch=64, lr=5e-3,
             n_chains=4_000, n_gauss=4_000, n_samples=8, factor=3.0)


def linear_beta_schedule(timesteps: int, beta_start: float = 1e-4,
                         beta_end: float = 0.02) -> torch.Tensor:
    """beta_t rising linearly (Ho et al. 2020, sec. 4): (timesteps,)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64).float()


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4).

    ``t`` (B,) is a 0-based index: index t means t + 1 noising steps, abar_t = prod_{s<=t} alpha_s.
    """
    abar = alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))          # (B, 1, ...)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, used by Ho et al. 2020): (B,) -> (B, dim).

    emb = [sin(t * w_i), cos(t * w_i)], w_i = 10000^(-i / half), i = 0 .. half - 1.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]                                            # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=1)


@torch.no_grad()
def p_sample_loop(model, shape, betas: torch.Tensor, generator=None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), x_T ~ N(0, I) down to x_0.

    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) + sigma_t z,
    with sigma_t^2 = beta_t and no noise on the last step.
    """
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    x = torch.randn(shape, generator=generator, device=betas.device)
    for t in reversed(range(len(betas))):
        eps = model(x, torch.full((shape[0],), t, device=betas.device, dtype=torch.long))
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            x = x + betas[t].sqrt() * torch.randn(shape, generator=generator, device=x.device)
    return x


class TinyDenoiser(nn.Module):
    """eps_theta(x_t, t): a per-t skip a(t) * x_t + b(t) plus an MLP over (x_t, emb(t)).

    The skip lets the net start from the right answer for blank background pixels (their eps is
    (x_t + sqrt(abar_t)) / sqrt(1 - abar_t), linear in x_t); the MLP learns the strokes.
    """

    def __init__(self, hidden: int, emb: int, in_dim: int = 784):
        super().__init__()
        self.emb = emb
        self.inp, self.temb = nn.Linear(in_dim, hidden), nn.Linear(emb, hidden)
        self.skip = nn.Linear(emb, 2)                            # a(t), b(t)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, in_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = timestep_embedding(t, self.emb)                                   # (B, E)
        h = self.inp(x.flatten(1)) + self.temb(e)                              # (B, H)
        a, b = self.skip(e).view(-1, 2, *([1] * (x.dim() - 1))).unbind(1)     # (B, 1, ...)
        return a * x + b + self.body(h).view_as(x)


def load_digits(args, n: int) -> torch.Tensor:
    """(n, 1, 28, 28) in [-1, 1]: real MNIST if asked for, else the stand-in."""
    root = args.data_root or data_root()
    tf = torchvision.transforms.ToTensor()
    if use_real(args, "MNIST"):
        with torchvision_errors("MNIST", root, args.download):
            ds = torchvision.datasets.MNIST(root, train=True, transform=tf,
                                            download=args.download)
    else:
        ds = SyntheticMNIST(train=True, transform=tf, size=n, seed=args.seed)
    return ds.data[:n].float().div(127.5).sub(1).unsqueeze(1)   # uint8 (N,28,28) -> [-1, 1]


def step_1_closed_form_forward(betas, n_chains: int) -> float:
    abar = torch.cumprod(1 - betas, 0)
    x0 = torch.tensor([-1.0, -0.4, 0.0, 0.5, 1.0])                         # five "pixels"
    worst = 0.0
    for t in (0, 9, 199, T - 1):
        chain = x0.expand(n_chains, 5).clone()
        for s in range(t + 1):                              # index t = t + 1 one-step moves
            chain = (1 - betas[s]).sqrt() * chain + betas[s].sqrt() * torch.randn_like(chain)
        tt = torch.full((n_chains,), t, dtype=torch.long)
        closed = q_sample(x0.expand(n_chains, 5), tt, torch.randn(n_chains, 5), abar)
        var = chain.var(0)
        # 5 standard errors of a difference of two independent means / variances.
        se_mean = (2 * var / n_chains).sqrt()
        se_var = var * math.sqrt(4 / (n_chains - 1)) + 1e-12
        worst = max(worst, ((closed.mean(0) - chain.mean(0)).abs() / se_mean).max().item(),
                    ((closed.var(0) - var).abs() / se_var).max().item())
        print(f"t={t + 1:4d}: mean {chain.mean(0)[0]:+.4f} vs {closed.mean(0)[0]:+.4f}, "
              f"var {var[0]:.5f} vs {closed.var(0)[0]:.5f}  (pixel x0 = -1)")
    return check("q_sample has the mean and variance of t one-step forward moves "
                 "(t = 1, 10, 200, 1000; within 5 standard errors)", worst < 5.0,
                 detail=f"worst {worst:.2f} standard errors")


def step_2_sinusoidal_embedding(dim: int = 32) -> float:
    t = torch.arange(T)
    emb = timestep_embedding(t, dim)                                            # (T, dim)
    check("emb(0) == [0]*half + [1]*half", emb[0],
          torch.cat([torch.zeros(dim // 2), torch.ones(dim // 2)]), atol=1e-7)
    dist = [(emb[k:] - emb[:-k]).norm(dim=1) for k in (1, 7, 50)]   # ||emb(t+k) - emb(t)|| over t
    spread = max((d.max() - d.min()).item() for d in dist)
    print(f"||emb(t+k) - emb(t)|| for k = 1, 7, 50: {[round(d.mean().item(), 3) for d in dist]}")
    # sin/cos of t*w: a shift by k is a rotation by k*w, so the distance ignores t (float32:
    # arguments up to 1000 rad lose ~6e-5 each).
    return check("||emb(t + k) - emb(t)|| is the same for every t (depends on k only)",
                 spread < 1e-3, detail=f"largest spread over t: {spread:.1e}")


def noise_loss(model, x0, abar, g) -> torch.Tensor:
    """L_simple (Ho et al. 2020, eq. 14): E_{t, eps} |eps - eps_theta(x_t, t)|^2."""
    t = torch.randint(0, T, (len(x0),), generator=g).to(x0.device)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    return (noise - model(q_sample(x0, t, noise, abar), t)).pow(2).mean()


def step_3_training(x_train, x_eval, abar, device, cfg) -> tuple[nn.Module, dict]:
    model = TinyDenoiser(cfg["hidden"], cfg["emb"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])

    def held_out() -> float:
        with torch.no_grad():                     # the same (t, eps) draws every time
            return noise_loss(model, x_eval, abar, torch.Generator().manual_seed(7)).item()

    before, g = held_out(), torch.Generator().manual_seed(0)
    for _ in progress(range(cfg["steps"]), desc="DDPM"):
        idx = torch.randint(0, len(x_train), (cfg["batch"],), generator=g)
        loss = noise_loss(model, x_train[idx], abar, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    print(f"held-out noise-prediction loss: {before:.4f} -> {after:.4f}")
    check(f"the held-out loss fell by a factor >= {cfg['factor']}",
          after * cfg["factor"] <= before, detail=f"x{before / after:.2f}")
    return model, {"loss_before": before, "loss_after": after}


def step_4_ancestral_sampling(model, betas, device, cfg, path) -> dict:
    abar = torch.cumprod(1 - betas, 0).to(device)
    m = torch.tensor([1.5, -0.5], device=device)
    s = torch.tensor([0.3, 1.2], device=device)

    def exact_eps(x, t):              # E[eps | x_t] when x_0 ~ N(m, s^2), per dimension
        a = abar[t][:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s**2 + 1 - a)

    g = torch.Generator(device=device).manual_seed(0)
    x = p_sample_loop(exact_eps, (cfg["n_gauss"], 2), betas.to(device), generator=g)
    n = cfg["n_gauss"]
    print(f"sampled mean {x.mean(0).tolist()} std {x.std(0).tolist()} (target m={m.tolist()}, "
          f"s={s.tolist()})")
    # 5 standard errors plus 1% for the discrete-time reverse process (sigma_t^2 = beta_t).
    check("ancestral sampling with the exact eps recovers the mean of N(m, s^2)",
          x.mean(0), m, atol=5 * 1.2 / math.sqrt(n) + 0.01)
    check("... and its std", x.std(0) / s, torch.ones(2, device=device),
          atol=5 * math.sqrt(0.5 / n) + 0.01)
    model.eval()
    samples = p_sample_loop(model, (cfg["n_samples"], 1, 28, 28), betas.to(device),
                            generator=torch.Generator(device=device).manual_seed(1))
    check("samples from the trained model: shape (N, 1, 28, 28), all finite",
          samples.shape == (cfg["n_samples"], 1, 28, 28) and bool(samples.isfinite().all()),
          detail=f"shape {tuple(samples.shape)}, range [{samples.min():.2f}, {samples.max():.2f}]")
    save_image(samples.clamp(-1, 1).add(1).div(2).cpu(), path, nrow=8, pad_value=1.0)
    print(f"saved {path}")
    return {"sampled_mean": x.mean(0).tolist(), "sampled_std": x.std(0).tolist(),
            "png": str(path)}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    png = output_file(args.out_dir, "ddpm_samples.png")     # checked before the training
    cfg = SMOKE if args.smoke else FULL
    betas = linear_beta_schedule(T)
    abar = torch.cumprod(1 - betas, 0)
    print(f"linear schedule: beta_1 = {betas[0]:.4f}, beta_T = {betas[-1]:.4f}, "
          f"abar_T = {abar[-1]:.2e} (x_T is almost pure noise)")
    x = load_digits(args, cfg["n_train"] + cfg["n_eval"]).to(device)
    results = {"forward_worst_se": step_1_closed_form_forward(betas, cfg["n_chains"]),
               "embedding_spread": step_2_sinusoidal_embedding()}
    model, trained = step_3_training(x[:cfg["n_train"]], x[cfg["n_train"]:], abar.to(device),
                                     device, cfg)
    results.update(trained)
    results.update(step_4_ancestral_sampling(model, betas, device, cfg, png))
    print(f"summary: noise loss {results['loss_before']:.3f} -> {results['loss_after']:.3f}")
    return results


if __name__ == "__main__":
    main()
