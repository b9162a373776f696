"""Unit tests for advanced/generative_models: the exposed pieces pinned against references, and
proof that each claim family can fail (a wrong piece patched into the note raises ClaimError)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from torchnotes import ClaimError

CPU = torch.device("cpu")
VAE = "advanced/generative_models/01_vae_basics.py"
DDPM = "advanced/generative_models/02_diffusion_basics.py"
GAN = "advanced/generative_models/03_gan_training.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------ 01 VAE

def test_gaussian_kl_equals_torch_distributions(note):
    mod = note(VAE)
    mu, logvar = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    out = mod.gaussian_kl(mu, logvar)
    assert out.shape == (5,)
    torch.testing.assert_close(out, ref)
    assert torch.all(mod.gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


def test_reparameterize_moments_and_gradient(note):
    mod = note(VAE)
    mu = torch.tensor([2.0, -1.0], requires_grad=True)
    logvar = torch.tensor([math.log(9.0), 0.0], requires_grad=True)
    z = mod.reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([3.0, 1.0]), atol=0.05, rtol=0)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.full((2,), 100_000.0))
    torch.testing.assert_close(logvar.grad, ((z - mu) / 2).detach().sum(0), atol=1e-3, rtol=1e-5)


def test_linear_gaussian_elbo_equals_monte_carlo(note):
    mod = note(VAE)
    w, s, x = -1.5, 0.8, 0.4
    m = torch.tensor([0.3, -1.0], dtype=torch.float64)
    logv = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    q = Normal(m, (0.5 * logv).exp())
    z = q.sample((400_000,))                                                    # (N, 2)
    loglik = Normal(w * z, torch.tensor(s, dtype=torch.float64)).log_prob(
        torch.tensor(x, dtype=torch.float64))
    kl = kl_divergence(q, Normal(torch.zeros_like(m), torch.ones_like(m)))
    torch.testing.assert_close(mod.linear_gaussian_elbo(x, m, logv, w, s),
                               loglik.mean(0) - kl, atol=0.02, rtol=0)


def test_vae_forward_shapes(note):
    mod = note(VAE)
    model = mod.VAE(hidden=32, latent=3)
    logits, mu, logvar = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 1, 28, 28) and mu.shape == logvar.shape == (4, 3)


def test_vae_wrong_sigma_is_caught(note, monkeypatch):
    mod = note(VAE)
    monkeypatch.setattr(mod, "reparameterize",       # exp(logvar) used as sigma: a classic slip
                        lambda mu, logvar: mu + logvar.exp() * torch.randn_like(mu))
    with pytest.raises(ClaimError, match="variance"):
        mod.step_1_reparameterize(CPU, 20_000)


@pytest.mark.parametrize("cut", ["noise_term", "std"])
def test_vae_detached_noise_is_caught(note, monkeypatch, cut):
    mod = note(VAE)

    def detached(mu, logvar):                # right mean and variance, no gradient to logvar
        std = torch.exp(0.5 * logvar)
        if cut == "std":
            return mu + std.detach() * torch.randn_like(std)
        return mu + (std * torch.randn_like(std)).detach()

    monkeypatch.setattr(mod, "reparameterize", detached)
    with pytest.raises(ClaimError, match="reach logvar"):
        mod.step_1_reparameterize(CPU, 20_000)


@pytest.mark.parametrize("slip", ["kl_sign", "no_var_term"])
def test_vae_wrong_elbo_is_caught(note, monkeypatch, slip):
    mod = note(VAE)

    def wrong_elbo(x, m, logv, w, s):
        var_term = 0 if slip == "no_var_term" else w**2 * logv.exp()    # forgot Var_q[w z]
        loglik = -0.5 * math.log(2 * math.pi * s**2) - ((x - w * m)**2 + var_term) / (2 * s**2)
        kl = mod.gaussian_kl(m[:, None], logv[:, None])
        return loglik + kl if slip == "kl_sign" else loglik - kl

    monkeypatch.setattr(mod, "linear_gaussian_elbo", wrong_elbo)
    with pytest.raises(ClaimError, match="ELBO <= log p"):
        mod.step_2_elbo_gap()


def test_vae_wrong_kl_is_caught(note, monkeypatch):
    mod = note(VAE)
    monkeypatch.setattr(mod, "gaussian_kl",                            # forgot the 1/2
                        lambda mu, logvar: -(1 + logvar - mu**2 - logvar.exp()).sum(-1))
    with pytest.raises(ClaimError, match="kl_divergence"):
        mod.step_3_kl_closed_form(CPU, 10_000)


def test_vae_untrained_model_is_caught(note, monkeypatch, tmp_path):
    mod = note(VAE)
    monkeypatch.setattr(mod, "train", lambda *a, **k: None)           # no training at all
    with pytest.raises(ClaimError, match="ELBO fell"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])


def test_vae_beta_tradeoff_is_checked(note, monkeypatch, tmp_path):
    mod = note(VAE)
    monkeypatch.setattr(mod, "BETAS", (4.0, 1.0))                       # the claim reversed
    with pytest.raises(ClaimError, match="smaller KL"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])


# ----------------------------------------------------------------------------------- 02 DDPM

def test_linear_beta_schedule(note):
    betas = note(DDPM).linear_beta_schedule(1000)
    assert betas.shape == (1000,)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02]))


def test_q_sample_distribution(note):
    mod = note(DDPM)
    abar = torch.cumprod(1 - mod.linear_beta_schedule(1000), 0)
    n, t = 200_000, 300
    x0 = torch.full((n,), 0.7)
    xt = mod.q_sample(x0, torch.full((n,), t), torch.randn(n), abar)
    torch.testing.assert_close(xt.mean(), abar[t].sqrt() * 0.7, atol=0.01, rtol=0)
    torch.testing.assert_close(xt.var(), 1 - abar[t], atol=0.01, rtol=0)
    # exact with a given noise, broadcast over image dims
    x0, noise = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    tt = torch.tensor([0, 10, 999])
    ref = abar[tt].sqrt().view(3, 1, 1, 1) * x0 + (1 - abar[tt]).sqrt().view(3, 1, 1, 1) * noise
    torch.testing.assert_close(mod.q_sample(x0, tt, noise, abar), ref)


def test_timestep_embedding(note):
    mod = note(DDPM)
    emb = mod.timestep_embedding(torch.tensor([0, 5, 999]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    torch.testing.assert_close(emb[1, 0], torch.tensor(math.sin(5.0)))      # w_0 = 1


def test_p_sample_loop_shape_and_generator(note):
    mod = note(DDPM)
    betas = mod.linear_beta_schedule(50, 1e-3, 0.2)

    def zero(x, t):
        return torch.zeros_like(x)

    a = mod.p_sample_loop(zero, (3, 1, 5, 5), betas, torch.Generator().manual_seed(1))
    b = mod.p_sample_loop(zero, (3, 1, 5, 5), betas, torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 5, 5) and torch.isfinite(a).all() and torch.equal(a, b)


def test_ddpm_wrong_q_sample_is_caught(note, monkeypatch):
    mod = note(DDPM)
    monkeypatch.setattr(mod, "q_sample",                     # abar instead of sqrt(abar)
                        lambda x0, t, noise, abar: abar[t].view(-1, *([1] * (x0.dim() - 1)))
                        * x0 + (1 - abar[t]).sqrt().view(-1, *([1] * (x0.dim() - 1))) * noise)
    with pytest.raises(ClaimError, match="q_sample"):
        mod.step_1_closed_form_forward(mod.linear_beta_schedule(mod.T), 4000)


def test_ddpm_wrong_embedding_is_caught(note, monkeypatch):
    mod = note(DDPM)
    right = mod.timestep_embedding
    monkeypatch.setattr(mod, "timestep_embedding", lambda t, dim: right(t.float() ** 1.5, dim))
    with pytest.raises(ClaimError, match="depends on k only"):
        mod.step_2_sinusoidal_embedding()


def test_ddpm_wrong_sampler_noise_is_caught(note, monkeypatch, tmp_path):
    mod = note(DDPM)

    def sigma_is_beta(model, shape, betas, generator=None):   # sigma_t = beta_t, not sqrt(beta_t)
        alphas, abar = 1 - betas, torch.cumprod(1 - betas, 0)
        x = torch.randn(shape, generator=generator)
        for t in reversed(range(len(betas))):
            eps = model(x, torch.full((shape[0],), t, dtype=torch.long))
            x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
            if t > 0:
                x = x + betas[t] * torch.randn(shape, generator=generator)
        return x

    monkeypatch.setattr(mod, "p_sample_loop", sigma_is_beta)
    with pytest.raises(ClaimError, match="std"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])


def test_ddpm_unlearnable_target_is_caught(note, monkeypatch):
    mod = note(DDPM)
    abar = torch.cumprod(1 - mod.linear_beta_schedule(mod.T), 0)
    monkeypatch.setattr(mod, "q_sample", lambda x0, t, noise, abar: x0)   # noise never added
    x = torch.rand(160, 1, 28, 28) * 2 - 1
    with pytest.raises(ClaimError, match="held-out loss fell"):
        mod.step_3_training(x[:128], x[128:], abar, CPU, mod.SMOKE)


# ------------------------------------------------------------------------------------ 03 GAN

def test_gradient_penalty_zero_for_unit_norm_linear_critic(note):
    mod = note(GAN)
    critic = nn.Linear(3, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[2.0, -1.0, 2.0]]) / 3)          # |w| = 1
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    assert mod.gradient_penalty(critic, real, fake).abs().item() < 1e-6
    with torch.no_grad():
        critic.weight.mul_(0.5)                                             # |w| = 0.5
    torch.testing.assert_close(mod.gradient_penalty(critic, real, fake), torch.tensor(0.25))


def test_gradient_penalty_is_differentiable_for_images(note):
    mod = note(GAN)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    gp = mod.gradient_penalty(critic, torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2))
    gp.backward()                                                      # create_graph=True
    assert critic[1].weight.grad is not None and gp.item() > 0


def test_gan_wrong_penalty_is_caught(note, monkeypatch):
    mod = note(GAN)

    def squared_norm(critic, real, fake):                      # ||g||^2 instead of ||g||
        x = real.clone().requires_grad_(True)
        g, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        return (g.pow(2).sum(1) - 1).pow(2).mean()

    monkeypatch.setattr(mod, "gradient_penalty", squared_norm)
    with pytest.raises(ClaimError, match="= 4"):
        mod.step_2_gradient_penalty(CPU)


def test_gradient_penalty_reproducible_with_generator(note):
    mod = note(GAN)
    critic = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    a = mod.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
    b = mod.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
    c = mod.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _penalty(real_only: bool, create_graph: bool):
    """gradient_penalty with one of two slips: x_hat = real, or no create_graph."""
    def gp(critic, real, fake, generator=None):
        e = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator)
        x_hat = real if real_only else e * real + (1 - e) * fake
        x_hat = x_hat.clone().requires_grad_(True)
        g, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=create_graph)
        return (g.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return gp


def test_gan_penalty_checks_accept_a_correct_copy(note, monkeypatch):
    mod = note(GAN)
    monkeypatch.setattr(mod, "gradient_penalty", _penalty(real_only=False, create_graph=True))
    mod.step_2_gradient_penalty(CPU)                  # the test's own copy passes: no false alarm


def test_gan_penalty_without_create_graph_is_caught(note, monkeypatch):
    mod = note(GAN)
    monkeypatch.setattr(mod, "gradient_penalty", _penalty(real_only=False, create_graph=False))
    with pytest.raises(ClaimError, match="reaches the critic's weight"):
        mod.step_2_gradient_penalty(CPU)


def test_gan_penalty_at_real_points_is_caught(note, monkeypatch):
    mod = note(GAN)
    monkeypatch.setattr(mod, "gradient_penalty", _penalty(real_only=True, create_graph=True))
    with pytest.raises(ClaimError, match="x_hat = e real"):
        mod.step_2_gradient_penalty(CPU)


def test_gan_mode_count_is_checked(note, monkeypatch):
    mod = note(GAN)
    monkeypatch.setattr(mod, "modes_covered", lambda x: 8)            # a count that sees nothing
    with pytest.raises(ClaimError, match="mode count"):
        mod.step_3_mode_count_sees_collapse(CPU, 1000)


def test_gan_untrained_generator_is_caught(note, monkeypatch, tmp_path):
    mod = note(GAN)
    monkeypatch.setattr(mod, "train_gan", lambda *a, **k: None)
    with pytest.raises(ClaimError, match="spreads G over the modes"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])
