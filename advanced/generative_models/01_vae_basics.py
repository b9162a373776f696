"""VAE basics: the ELBO, reparameterisation z = mu + sigma * eps, the closed-form KL, beta-VAE.

A variational autoencoder (Kingma & Welling 2014) encodes x into a Gaussian q(z|x) =
N(mu, sigma^2), decodes a sample z back to x, and maximises the evidence lower bound
ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)) <= log p(x).

Claims proven:
  1. ``reparameterize`` draws z with mean mu and variance exp(logvar), and gradients reach
     mu and logvar through it (dz/dmu = 1, dz/dlogvar = sigma * eps / 2 = (z - mu) / 2).
  2. The ELBO derivation, exact in a linear-Gaussian model (z ~ N(0, 1), x|z ~ N(w z, s^2)):
     log p(x) - ELBO(q) = KL(q || p(z|x)) >= 0 for every q, so ELBO <= log p(x), with
     equality at q = p(z|x) (oracles: ``Normal.log_prob``, ``kl_divergence``).
  3. ``gaussian_kl`` (the closed form) equals ``torch.distributions.kl_divergence`` and a
     Monte-Carlo estimate E_q[log q(z) - log p(z)].
  4. Training the VAE on MNIST-shaped digits raises the held-out ELBO (-ELBO falls by the
     stated factor), and a reconstruction is closer to its own input than to another image.
  5. beta-VAE (Higgins 2017): a larger beta buys a smaller KL with a worse reconstruction
     (a table for two betas). Reconstructions and prior samples go to a PNG grid.

Run:  python advanced/generative_models/01_vae_basics.py        (about 20 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.distributions import Normal, kl_divergence
from torchvision.utils import save_image

from torchnotes import check, make_parser, output_file, progress, start
from torchnotes.datasets import (
    SyntheticMNIST,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_train=6000, n_eval=500, hidden=256, latent=8, steps=800, batch=128, lr=2e-3,
            beta_steps=400, factor=2.5, n_mc=200_000, closer=0.5)
SMOKE = dict(n_train=256, n_eval=64, hidden=64, latent=4, steps=60, batch=64, lr=3e-3,
             beta_steps=60, factor=1.5, n_mc=20_000, closer=0.95)
BETAS = (1.0, 4.0)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): the noise is an input, so d z / d(mu, sigma) exist
    (Kingma & Welling 2014, sec. 2.4)."""
    std = torch.exp(0.5 * logvar)            # sigma = exp(logvar / 2)
    return mu + std * torch.randn_like(std)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims: (B, D) -> (B,).

    Closed form (Kingma & Welling 2014, appendix B): -1/2 * sum(1 + log s^2 - mu^2 - s^2).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)


def linear_gaussian_elbo(x: float, m: torch.Tensor, logv: torch.Tensor, w: float,
                         s: float) -> torch.Tensor:
    """ELBO(q) = E_q[log p(x|z)] - KL(q || N(0, 1)) for z ~ N(0, 1), x|z ~ N(w z, s^2) and
    q = N(m, exp(logv)); m, logv: (B,) -> (B,). Closed form: z = m + sqrt(v) eps gives
    E_q[(x - w z)^2] = (x - w m)^2 + w^2 v."""
    expected_loglik = (-0.5 * math.log(2 * math.pi * s**2)
                       - ((x - w * m).pow(2) + w**2 * logv.exp()) / (2 * s**2))      # (B,)
    return expected_loglik - gaussian_kl(m[:, None], logv[:, None])                 # (B,)


class VAE(nn.Module):
    """MLP encoder x -> (mu, logvar), MLP decoder z -> Bernoulli logits of the pixels."""

    def __init__(self, in_dim: int = 784, hidden: int = 256, latent: int = 8):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, in_dim))

    def forward(self, x: torch.Tensor):
        h = self.encoder(x.flatten(1))                       # (B, 2D)
        mu, logvar = h.chunk(2, dim=1)                       # (B, D) each
        z = reparameterize(mu, logvar)                       # (B, D)
        recon_logits = self.decoder(z).view_as(x)            # same shape as x
        return recon_logits, mu, logvar


def loss_terms(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction term -log p(x|z) (Bernoulli pixels) and KL, each (B,)."""
    logits, mu, logvar = model(x)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    return recon, gaussian_kl(mu, logvar)


def load_digits(args, n: int) -> torch.Tensor:
    """(n, 1, 28, 28) floats in [0, 1]: real MNIST if asked for, else the stand-in."""
    root = args.data_root or data_root()
    tf = torchvision.transforms.ToTensor()
    if use_real(args, "MNIST"):
        with torchvision_errors("MNIST", root, args.download):
            ds = torchvision.datasets.MNIST(root, train=True, transform=tf,
                                            download=args.download)
    else:
        ds = SyntheticMNIST(train=True, transform=tf, size=n, seed=args.seed)
    # ds[i] would give ToTensor(image); for speed take the uint8 (N, 28, 28) tensor at once.
    return ds.data[:n].float().div(255).unsqueeze(1)


def step_1_reparameterize(device: torch.device, n: int) -> float:
    mu = torch.tensor([1.5, -2.0, 0.0], device=device, requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25), math.log(4.0)], device=device,
                          requires_grad=True)
    z = reparameterize(mu.expand(n, 3), logvar.expand(n, 3))            # (n, 3)
    print(f"sample mean {z.mean(0).tolist()}  var {z.var(0).tolist()}")
    # Standard error of a mean is sigma/sqrt(n) <= 2/447 = 0.0045; of a variance ~ s^2*sqrt(2/n).
    check("reparameterised samples: mean == mu (5 standard errors)", z.mean(0), mu.detach(),
          atol=5 * 2 / math.sqrt(n))
    check("reparameterised samples: variance == exp(logvar) (5 standard errors, relative)",
          (z.var(0) / logvar.detach().exp()), torch.ones(3), atol=5 * math.sqrt(2 / n))
    z.mean(0).sum().backward()
    check("gradients flow through the sample: d mean(z) / d mu == 1", mu.grad,
          torch.ones(3), atol=1e-6)
    # dz/dlogvar = d(sigma)/dlogvar * eps = sigma * eps / 2 = (z - mu) / 2, exactly, per draw.
    # A sampler that cuts the noise term from the graph leaves logvar.grad None (read as 0).
    hand = ((z.detach() - mu.detach()) / 2).mean(0)                                   # (3,)
    got = logvar.grad if logvar.grad is not None else torch.zeros(3, device=device)    # (3,)
    print(f"d mean(z) / d logvar: autograd {[f'{g:.3e}' for g in got.tolist()]}, "
          f"mean((z - mu) / 2) {[f'{h:.3e}' for h in hand.tolist()]}")
    # float32 sums of n terms of size ~sigma/n: measured errors ~1e-9.
    return check("... and reach logvar: d mean(z) / d logvar == mean((z - mu) / 2)", got, hand,
                 atol=1e-7)


def step_2_elbo_gap() -> float:
    """log p(x) = E_q[log p(x, z) - log q(z)] + E_q[log q(z) - log p(z|x)] for any q, since
    p(x) = p(x, z) / p(z|x): the first term is the ELBO, the second KL(q || p(z|x)) >= 0."""
    w, s, x = 2.0, 0.5, 1.3
    f64 = dict(dtype=torch.float64)                # python-number parameters would be float32
    log_px = Normal(torch.tensor(0.0, **f64), torch.tensor(w**2 + s**2, **f64).sqrt()).log_prob(
        torch.tensor(x, **f64))                                          # p(x) = N(0, w^2 + s^2)
    post = Normal(torch.tensor([w * x / (w**2 + s**2)], **f64),                # p(z|x): Bayes
                  torch.tensor([s**2 / (w**2 + s**2)], **f64).sqrt())
    m, v = torch.meshgrid(torch.tensor([-1.0, 0.0, 0.6, 1.5], **f64),
                          torch.tensor([0.05, 0.5, 2.0], **f64), indexing="ij")
    m, v = m.flatten(), v.flatten()                                   # 12 arbitrary q = N(m, v)
    elbo = linear_gaussian_elbo(x, m, v.log(), w, s)                                   # (12,)
    gap = kl_divergence(Normal(m, v.sqrt()), post)                                     # (12,)
    print(f"log p(x) = {log_px:.4f}; ELBO over 12 q's from {elbo.min():.2f} to "
          f"{elbo.max():.4f}; posterior N({post.mean.item():.4f}, {post.variance.item():.4f})")
    # float64: terms up to ~40, so rounding stays near 1e-14.
    check("log p(x) - ELBO(q) == KL(q || p(z|x)) for 12 q's, so ELBO <= log p(x) (float64)",
          log_px - elbo, gap, atol=1e-12)
    tight = linear_gaussian_elbo(x, post.mean, post.variance.log(), w, s)               # (1,)
    return check("ELBO(q = p(z|x)) == log p(x): the bound is tight at the posterior",
                 tight, log_px.view(1), atol=1e-12)


def step_3_kl_closed_form(device: torch.device, n: int) -> float:
    g = torch.Generator(device="cpu").manual_seed(1)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 6, generator=g, dtype=torch.float64)
    ours = gaussian_kl(mu, logvar)                                                     # (4,)
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    lib = kl_divergence(q, p).sum(-1)                                                  # (4,)
    check("gaussian_kl == torch.distributions.kl_divergence (float64)", ours, lib, atol=1e-12)
    z = q.sample((n,))                                                                 # (n,4,6)
    per = (q.log_prob(z) - p.log_prob(z)).sum(-1)                                      # (n, 4)
    se = per.std(0) / math.sqrt(n)
    print(f"closed form {ours.tolist()}\nMonte-Carlo {per.mean(0).tolist()}")
    return check("gaussian_kl == Monte-Carlo E_q[log q - log p] (5 standard errors)",
                 per.mean(0), ours, atol=5 * se.max().item())


def train(model: VAE, x: torch.Tensor, steps: int, batch: int, lr: float, beta: float,
          desc: str) -> None:
    """Minimise -ELBO_beta = recon + beta * KL, averaged over the batch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in progress(range(steps), desc=desc):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        recon, kl = loss_terms(model, x[idx])
        loss = (recon + beta * kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor) -> tuple[float, float]:
    torch.manual_seed(123)                   # the same eps for every evaluation
    recon, kl = loss_terms(model, x)
    return recon.mean().item(), kl.mean().item()


def step_4_training_raises_elbo(x_train, x_eval, device, cfg) -> tuple[VAE, dict]:
    model = VAE(hidden=cfg["hidden"], latent=cfg["latent"]).to(device)
    r0, k0 = evaluate(model, x_eval)
    train(model, x_train, cfg["steps"], cfg["batch"], cfg["lr"], 1.0, "VAE")
    r1, k1 = evaluate(model, x_eval)
    before, after = -(r0 + k0), -(r1 + k1)                 # ELBO in nats per image
    print(f"held-out ELBO: {before:.1f} -> {after:.1f} nats/image "
          f"(recon {r1:.1f}, KL {k1:.2f})")
    check(f"-ELBO fell by a factor >= {cfg['factor']}", -after * cfg["factor"] <= -before,
          detail=f"{-before:.1f} -> {-after:.1f}, x{before / after:.2f}")
    with torch.no_grad():
        logits, mu, _ = model(x_eval)
        mean_recon = torch.sigmoid(model.decoder(mu)).view_as(x_eval)      # decode z = mu
    own = (mean_recon - x_eval).pow(2).flatten(1).sum(1).mean().item()
    other = (mean_recon - x_eval.roll(1, 0)).pow(2).flatten(1).sum(1).mean().item()
    check(f"a reconstruction is closer to its own input than to its neighbour's "
          f"(< {cfg['closer']} x)", own < cfg["closer"] * other,
          detail=f"squared error {own:.1f} vs {other:.1f}")
    return model, {"elbo_before": before, "elbo_after": after, "recon": mean_recon}


def step_5_beta_tradeoff(x_train, x_eval, device, cfg) -> dict:
    table = {}
    for beta in BETAS:                                       # beta = 1 is the plain VAE
        torch.manual_seed(0)
        model = VAE(hidden=cfg["hidden"], latent=cfg["latent"]).to(device)
        train(model, x_train, cfg["beta_steps"], cfg["batch"], cfg["lr"], beta, f"beta={beta}")
        table[beta] = evaluate(model, x_eval)
    print("beta | recon -log p(x|z) | KL (nats)")
    for beta, (r, k) in table.items():
        print(f"{beta:4.1f} | {r:17.1f} | {k:.2f}")
    (r_lo, k_lo), (r_hi, k_hi) = table[BETAS[0]], table[BETAS[1]]
    check(f"beta={BETAS[1]} has a smaller KL than beta={BETAS[0]}", k_hi < k_lo,
          detail=f"{k_hi:.2f} < {k_lo:.2f}")
    check("... and pays with a worse reconstruction", r_hi > r_lo,
          detail=f"{r_hi:.1f} > {r_lo:.1f}")
    return table


def save_grid(model: VAE, x_eval, recon, path, device) -> str:
    with torch.no_grad():
        z = torch.randn(16, model.latent, device=device)                    # z ~ p(z) = N(0, I)
        samples = torch.sigmoid(model.decoder(z)).view(16, 1, 28, 28)
    rows = torch.cat([x_eval[:16], recon[:16], samples]).cpu()
    save_image(rows, path, nrow=16, pad_value=1.0)   # rows: inputs, reconstructions, samples
    print(f"saved {path} (row 1 inputs, row 2 reconstructions, row 3 samples from N(0, I))")
    return str(path)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    png = output_file(args.out_dir, "vae_grid.png")     # checked before the training
    cfg = SMOKE if args.smoke else FULL
    x = load_digits(args, cfg["n_train"] + cfg["n_eval"]).to(device)
    x_train, x_eval = x[:cfg["n_train"]], x[cfg["n_train"]:]        # held-out images for ELBO
    results = {"reparam_grad_error": step_1_reparameterize(device, cfg["n_mc"]),
               "elbo_gap_error": step_2_elbo_gap(),
               "kl_error": step_3_kl_closed_form(device, cfg["n_mc"])}
    model, trained = step_4_training_raises_elbo(x_train, x_eval, device, cfg)
    results.update(elbo_before=trained["elbo_before"], elbo_after=trained["elbo_after"])
    results["beta_table"] = step_5_beta_tradeoff(x_train, x_eval, device, cfg)
    results["png"] = save_grid(model, x_eval, trained["recon"], png, device)
    print(f"summary: ELBO {results['elbo_before']:.1f} -> {results['elbo_after']:.1f} nats")
    return results


if __name__ == "__main__":
    main()
