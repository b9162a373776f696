"""Unit tests for advanced/loss_functions: each exposed loss pinned against PyTorch's (or
torchvision's) own with random inputs, several shapes and edge cases, and proof that every
claim family can fail (a wrong version monkeypatched into the note raises ClaimError)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import ClaimError

CPU = torch.device("cpu")
KL = "advanced/loss_functions/01_kl_divergence.py"
CONTRASTIVE = "advanced/loss_functions/02_contrastive_loss.py"
FOCAL = "advanced/loss_functions/03_focal_loss.py"
SMOOTH = "advanced/loss_functions/04_label_smoothing.py"
SHAPES = [(1, 2), (7, 3), (32, 10)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def smoke(mod, tmp_path):
    return mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])


# ------------------------------------------------------------------------------- KL divergence

@pytest.mark.parametrize("shape", SHAPES)
def test_kl_divergence_matches_f_kl_div(note, shape):
    mod = note(KL)
    p, q = 4 * torch.randn(shape, dtype=torch.float64), 4 * torch.randn(shape, dtype=torch.float64)
    ref = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="batchmean",
                   log_target=True)
    torch.testing.assert_close(mod.kl_divergence(p, q), ref)
    torch.testing.assert_close(mod.kl_divergence(p, p + 3.0), torch.zeros((), dtype=p.dtype))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_distillation_loss_matches_reference(note, temperature, alpha):
    mod = note(KL)
    s, t = torch.randn(6, 5, dtype=torch.float64), 3 * torch.randn(6, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    T = temperature
    ref = (alpha * T**2 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
                                   reduction="batchmean")
           + (1 - alpha) * F.cross_entropy(s, y))
    torch.testing.assert_close(mod.distillation_loss(s, t, y, T, alpha), ref)


@pytest.mark.parametrize("T", [1.0, 3.0, 20.0])
def test_kl_student_gradient_matches_autograd(note, T):
    mod = note(KL)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = 3 * torch.randn(5, 7, dtype=torch.float64)
    g, = torch.autograd.grad(mod.kl_divergence(t / T, s / T), s)
    torch.testing.assert_close(mod.kl_student_gradient(s.detach(), t, T), g)


def test_kl_main_smoke_returns_the_fits(note, tmp_path):
    out = smoke(note(KL), tmp_path)
    assert abs(out["fits"]["reverse"][0] - 3.0) < 0.05 and out["fits"]["forward"][1] > 2.5


def test_kl_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(KL)
    right = mod.kl_divergence
    monkeypatch.setattr(mod, "kl_divergence", lambda p, q: right(q, p))       # swapped
    with pytest.raises(ClaimError, match="F.kl_div"):
        smoke(mod, tmp_path)
    with pytest.raises(ClaimError, match="mean-seeking"):
        mod.step_3_forward_vs_reverse(CPU, fit_steps=150)
    with pytest.raises(ClaimError, match="SEED"):
        mod.step_7_seed(CPU, batch=8)
    monkeypatch.setattr(mod, "kl_divergence",
                        lambda p, q: right(p, q) * p.shape[0])                 # sum, not mean
    with pytest.raises(ClaimError, match=r"\(T B\)"):
        mod.step_5_t_squared(CPU, batch=8, classes=10)
    monkeypatch.setattr(mod, "kl_divergence", right)
    right_grad = mod.kl_student_gradient
    monkeypatch.setattr(mod, "kl_student_gradient",                           # 1/T forgotten
                        lambda s, t, T: right_grad(s, t, T) * T)
    with pytest.raises(ClaimError, match=r"\(T B\) at every T"):
        mod.step_5_t_squared(CPU, batch=8, classes=10)
    monkeypatch.setattr(mod, "kl_student_gradient", right_grad)
    with pytest.raises(ClaimError, match="softer"):
        mod.step_4_temperature_softens(CPU, 8, 10, temps=(8.0, 4.0, 2.0))       # order reversed
    monkeypatch.setattr(mod, "distillation_loss",                              # T, not T^2
                        lambda s, t, y, T, a: a * T * right(t / T, s / T)
                        + (1 - a) * F.cross_entropy(s, y))
    with pytest.raises(ClaimError, match="distillation_loss =="):
        mod.step_6_distill(CPU, distill_steps=5, n_points=64, classes=10)


# --------------------------------------------------------------------------- contrastive losses

@pytest.mark.parametrize("batch,dim", [(2, 3), (8, 16), (33, 7)])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_info_nce_matches_cross_entropy(note, batch, dim, temperature):
    mod = note(CONTRASTIVE)
    q, k, neg = (torch.randn(n, dim, dtype=torch.float64) for n in (batch, batch, 5))
    qn, kn, nn_ = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(neg, dim=-1)
    torch.testing.assert_close(mod.info_nce(q, k, temperature=temperature),
                               F.cross_entropy(qn @ kn.T / temperature, torch.arange(batch)))
    logits = torch.cat([(qn * kn).sum(-1, keepdim=True), qn @ nn_.T], 1) / temperature
    torch.testing.assert_close(mod.info_nce(q, k, neg, temperature=temperature),
                               F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)))
    # scale-free: cosine similarity ignores the vectors' lengths
    torch.testing.assert_close(mod.info_nce(3 * q, k, temperature=temperature),
                               mod.info_nce(q, k, temperature=temperature))


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_info_nce_from_similarities_is_cross_entropy_at_any_positive(note, temperature):
    mod = note(CONTRASTIVE)
    sim, positive = torch.rand(6, 9, dtype=torch.float64) * 2 - 1, torch.randint(0, 9, (6,))
    torch.testing.assert_close(mod.info_nce_from_similarities(sim, positive, temperature),
                               F.cross_entropy(sim / temperature, positive))


@pytest.mark.parametrize("batch,temperature", [(1, 0.5), (4, 0.5), (16, 0.1)])
def test_nt_xent_matches_reference_and_is_symmetric(note, batch, temperature):
    mod = note(CONTRASTIVE)
    z1, z2 = torch.randn(batch, 8, dtype=torch.float64), torch.randn(batch, 8, dtype=torch.float64)
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    torch.testing.assert_close(mod.nt_xent(z1, z2, temperature), F.cross_entropy(sim, labels))
    torch.testing.assert_close(mod.nt_xent(z1, z2, temperature), mod.nt_xent(z2, z1, temperature))


@pytest.mark.parametrize("margin", [0.1, 1.0, 5.0])            # TripletMarginLoss needs > 0
def test_triplet_loss_matches_torch(note, margin):
    mod = note(CONTRASTIVE)
    a, p, n = (torch.randn(12, 6) for _ in range(3))
    torch.testing.assert_close(mod.triplet_loss(a, p, n, margin),
                               nn.TripletMarginLoss(margin=margin)(a, p, n), atol=1e-5, rtol=0)


def test_contrastive_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(CONTRASTIVE)
    right_info, right_nt = mod.info_nce, mod.nt_xent
    def unnormalised(q, k, n=None, temperature=0.1):             # dot products, no L2 norm
        return F.cross_entropy(q @ k.T / temperature, torch.arange(len(q)))

    monkeypatch.setattr(mod, "info_nce", unnormalised)
    with pytest.raises(ClaimError, match="in-batch"):
        smoke(mod, tmp_path)
    monkeypatch.setattr(mod, "info_nce",                                       # wrong positives
                        lambda q, k, n=None, temperature=0.1: right_info(q, k.roll(1, 0), n,
                                                                         temperature))
    with pytest.raises(ClaimError, match="InfoNCE training"):
        mod.step_5_train(CPU, steps=60, train_batch=32)
    monkeypatch.setattr(mod, "nt_xent",                                        # views swapped
                        lambda z1, z2, temperature=0.5: right_nt(z1, z2.roll(1, 0), temperature))
    with pytest.raises(ClaimError, match="nt_xent =="):
        mod.step_2_nt_xent(CPU, batch=6, dim=8)
    monkeypatch.setattr(mod, "triplet_loss",                                   # squared distance
                        lambda a, p, n, margin=1.0: ((a - p).pow(2).sum(-1) - (a - n).pow(2)
                                                     .sum(-1) + margin).clamp(min=0).mean())
    with pytest.raises(ClaimError, match="TripletMarginLoss"):
        mod.step_3_triplet(CPU, batch=8, dim=8)
    with pytest.raises(ClaimError, match="sharper"):
        mod.step_4_temperature_sharpens(CPU, 8, 12, temps=(0.05, 0.1, 1.0))
    right_sim = mod.info_nce_from_similarities
    monkeypatch.setattr(mod, "info_nce_from_similarities",                   # temperature lost
                        lambda sim, positive, temperature=0.1: right_sim(sim, positive, 1.0))
    with pytest.raises(ClaimError, match="autograd d info_nce / d s"):
        mod.step_4_temperature_sharpens(CPU, 8, 12)

    def negatives_only(sim, positive, temperature=0.1):          # positive left out of the sum
        logits = sim / temperature
        own = torch.zeros_like(logits, dtype=torch.bool).scatter(1, positive[:, None], True)
        pos = logits.gather(1, positive[:, None])[:, 0]
        return (-pos + torch.logsumexp(logits.masked_fill(own, float("-inf")), 1)).mean()

    monkeypatch.setattr(mod, "info_nce_from_similarities", negatives_only)
    with pytest.raises(ClaimError, match="autograd d info_nce / d s"):
        mod.step_4_temperature_sharpens(CPU, 8, 12)


# ---------------------------------------------------------------------------------- focal loss

def focal_reference(logits, y, gamma, alpha=None):
    ce = F.cross_entropy(logits, y, reduction="none")
    w = (1 - torch.exp(-ce)) ** gamma
    if alpha is not None:
        w = w * alpha[y]
    return (w * ce).mean()


@pytest.mark.parametrize("shape", [(1, 2), (9, 4), (50, 10)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_matches_reference(note, shape, gamma):
    mod = note(FOCAL)
    logits = 3 * torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0],))
    alpha = torch.rand(shape[1], dtype=torch.float64)
    torch.testing.assert_close(mod.focal_loss(logits, y, gamma), focal_reference(logits, y, gamma))
    torch.testing.assert_close(mod.focal_loss(logits, y, gamma, alpha),
                               focal_reference(logits, y, gamma, alpha))
    if gamma == 0.0:
        torch.testing.assert_close(mod.focal_loss(logits, y, 0.0), F.cross_entropy(logits, y))


@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 8)])
@pytest.mark.parametrize("gamma,alpha", [(0.0, 0.25), (2.0, 0.25), (1.5, 0.75), (2.0, -1.0)])
def test_binary_focal_loss_matches_torchvision(note, shape, gamma, alpha):
    from torchvision.ops import sigmoid_focal_loss

    mod = note(FOCAL)
    logits = 4 * torch.randn(shape, dtype=torch.float64)
    targets = (torch.rand(shape) < 0.3).to(torch.float64)
    torch.testing.assert_close(
        mod.binary_focal_loss(logits, targets, gamma, alpha),
        sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="mean"))


def test_focal_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(FOCAL)
    right, right_bin = mod.focal_loss, mod.binary_focal_loss

    def weighted_mean(logits, y, gamma=2.0, alpha=None):          # CE's weighted-mean reduction
        if alpha is None:
            return right(logits, y, gamma)
        return right(logits, y, gamma, alpha) * len(y) / alpha[y].sum()

    monkeypatch.setattr(mod, "focal_loss", weighted_mean)
    with pytest.raises(ClaimError, match="weight=alpha"):
        smoke(mod, tmp_path)
    monkeypatch.setattr(mod, "focal_loss", lambda lg, y, gamma=2.0, alpha=None:
                        right(lg, y, 2 * gamma, alpha))                        # wrong exponent
    with pytest.raises(ClaimError, match=r"\(1 - p_t\)\^gamma"):
        mod.step_3_modulating_factor(CPU)
    monkeypatch.setattr(mod, "focal_loss", lambda lg, y, gamma=2.0, alpha=None:
                        right(lg, (y + 1) % lg.shape[1], gamma, alpha))        # shifted labels
    with pytest.raises(ClaimError, match="rare class"):
        mod.step_5_train_imbalanced(CPU, counts=(300, 60, 10), steps=30)
    monkeypatch.setattr(mod, "binary_focal_loss", lambda lg, t, gamma=2.0, alpha=0.25:
                        right_bin(lg, t, gamma, None if alpha is None else 1 - alpha))
    with pytest.raises(ClaimError, match="torchvision"):
        mod.step_2_binary_matches_torchvision(CPU, 8, 5)
    monkeypatch.setattr(mod, "binary_focal_loss", lambda lg, t, gamma=2.0, alpha=0.25:
                        right_bin(lg, t, 0.0, alpha))                          # gamma ignored
    with pytest.raises(ClaimError, match="down-weights"):
        mod.step_4_easy_examples_down_weighted(CPU)


# ----------------------------------------------------------------------------- label smoothing

@pytest.mark.parametrize("shape", [(1, 2), (7, 3), (64, 100)])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_matches_torch(note, shape, epsilon):
    mod = note(SMOOTH)
    logits = 3 * torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0],))
    torch.testing.assert_close(mod.label_smoothing_cross_entropy(logits, y, epsilon),
                               F.cross_entropy(logits, y, label_smoothing=epsilon))


def test_ece_on_hand_built_predictions(note):
    mod = note(SMOOTH)
    # 10 predictions at confidence 0.9, 9 right: calibrated (ECE 0). At 0.95 with 5 right: 0.45.
    probs = torch.tensor([[0.9, 0.1]] * 10)
    y = torch.tensor([0] * 9 + [1])
    assert mod.expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-6)
    probs = torch.tensor([[0.95, 0.05]] * 10)
    y = torch.tensor([0] * 5 + [1] * 5)
    assert mod.expected_calibration_error(probs, y) == pytest.approx(0.45, abs=1e-6)
    # two bins: 0.6-confident all wrong (gap 0.6), 1.0-confident all right (gap 0): 0.3
    probs = torch.tensor([[0.6, 0.4]] * 5 + [[1.0, 0.0]] * 5)
    y = torch.tensor([1] * 5 + [0] * 5)
    assert mod.expected_calibration_error(probs, y) == pytest.approx(0.3, abs=1e-6)


def test_label_smoothing_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note(SMOOTH)
    right = mod.label_smoothing_cross_entropy

    def over_wrong_classes(logits, y, epsilon=0.1):              # eps / (C - 1) on the others
        C = logits.shape[-1]
        q = torch.full_like(logits, epsilon / (C - 1)).scatter(1, y[:, None], 1 - epsilon)
        return -(q * F.log_softmax(logits, -1)).sum(-1).mean()

    monkeypatch.setattr(mod, "label_smoothing_cross_entropy", over_wrong_classes)
    with pytest.raises(ClaimError, match="label_smoothing=0.1"):
        smoke(mod, tmp_path)
    with pytest.raises(ClaimError, match="smoothed target"):
        mod.step_2_smoothed_target(CPU, 8, 6)
    with pytest.raises(ClaimError, match="eps log C"):
        mod.step_3_kl_penalty(CPU, 8, 6)
    monkeypatch.setattr(mod, "label_smoothing_cross_entropy",              # smoothing ignored
                        lambda logits, y, epsilon=0.1: right(logits, y, 0.0))
    with pytest.raises(ClaimError, match="over-confidence"):
        mod.step_4_and_5_calibration(CPU, 6, 100, 300, 150, 64, seed=0)
