"""KL divergence: definition, forward vs reverse KL, temperature, and knowledge distillation.

KL(p || q) = sum_i p_i (log p_i - log q_i) measures how many extra nats a code built for q
spends on samples from p (Kullback & Leibler 1951). It is >= 0, zero only when p == q, and not
symmetric. Knowledge distillation (Hinton et al. 2015) trains a student to match a teacher's
temperature-softened distribution with it.

Claims proven:
  1. ``kl_divergence`` (written out below) equals ``F.kl_div`` on log-probabilities
     (``reduction="batchmean"``, ``log_target=True``).
  2. KL >= 0 on random pairs, == 0 for p == q, and KL(p||q) != KL(q||p).
  3. Fitting a Gaussian q to a two-peak p: forward KL(p||q) is mean-seeking (q moment-matches p,
     covering both peaks); reverse KL(q||p) is mode-seeking (q locks onto one peak).
  4. Temperature softens: the entropy of softmax(z / T) rises with T towards log C.
  5. The distillation gradient w.r.t. the student's logits is (q_T - p_T) / (T B) (closed form,
     checked at every T from 1 to 64), and for large T it shrinks like 1/T^2: multiplying the
     loss by T^2 keeps it constant.
  6. ``distillation_loss`` = alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE; a small
     student trained with it on synthetic data: the loss falls and it agrees with the teacher.
  7. SEED (Fang et al. 2021) trains with cross-entropy between similarity distributions; that
     is KL + the teacher's entropy, so its gradient equals KL's.

Run:  python advanced/loss_functions/01_kl_divergence.py        (about 4 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=64, classes=10, fit_steps=400, distill_steps=400, n_points=2048)
SMOKE = dict(batch=16, classes=10, fit_steps=150, distill_steps=120, n_points=512)

# float32 log-softmax of logits of order 1-10 errs by a few ulps; sums over C <= 401 terms: 1e-5.
ATOL = 1e-5


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, averaged over the batch; both given as logits of shape (B, C)."""
    log_p = F.log_softmax(p_logits, dim=-1)                      # (B, C)
    log_q = F.log_softmax(q_logits, dim=-1)                      # (B, C)
    per_row = (log_p.exp() * (log_p - log_q)).sum(dim=-1)        # (B,) sum_i p_i log(p_i / q_i)
    return per_row.mean()


def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    """Hinton et al. 2015: alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE(student, y).

    The T^2 keeps the soft term's gradient the same size whatever T is (step 5).
    """
    T = temperature
    soft = kl_divergence(teacher_logits / T, student_logits / T)          # matches soft targets
    hard = F.cross_entropy(student_logits, targets)                       # matches the labels
    return alpha * T * T * soft + (1 - alpha) * hard


def kl_student_gradient(student_logits, teacher_logits, temperature):
    """Closed form of d KL(teacher_T || student_T) / d student_logits, KL averaged over B rows.

    KL = sum p_T log p_T - sum p_T log_softmax(s / T): d / ds = (softmax(s / T) - p_T) / T, and
    the batch mean divides by B.
    """
    T, B = temperature, student_logits.shape[0]
    return (F.softmax(student_logits / T, -1) - F.softmax(teacher_logits / T, -1)) / (T * B)


def step_1_matches_f_kl_div(device, batch: int, classes: int) -> float:
    p_logits = 3 * torch.randn(batch, classes, device=device)
    q_logits = 3 * torch.randn(batch, classes, device=device)
    ours = kl_divergence(p_logits, q_logits)
    # F.kl_div(input, target) computes KL(target || input): input is log q, target log p.
    ref = F.kl_div(F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1),
                   reduction="batchmean", log_target=True)
    print(f"KL(p||q) ours = {ours.item():.5f}, F.kl_div = {ref.item():.5f}")
    return check("kl_divergence == F.kl_div(log q, log p, batchmean, log_target=True)",
                 ours, ref, atol=ATOL, rtol=ATOL)


def step_2_properties(device, batch: int, classes: int) -> dict:
    p = 3 * torch.randn(batch, classes, device=device)
    q = 3 * torch.randn(batch, classes, device=device)
    per_pair = torch.stack([kl_divergence(p[i:i + 1], q[i:i + 1]) for i in range(batch)])
    self_kl = kl_divergence(p, p + 5.0)          # adding a constant leaves softmax unchanged
    pq, qp = kl_divergence(p, q).item(), kl_divergence(q, p).item()
    print(f"min over {batch} random pairs: {per_pair.min().item():.4f}; KL(p||p) = "
          f"{self_kl.item():.2e}; KL(p||q) = {pq:.4f} vs KL(q||p) = {qp:.4f}")
    check("KL(p||q) > 0 for every random pair p != q", bool((per_pair > 0).all()),
          detail=f"min {per_pair.min().item():.4f}")
    check("KL(p||p) == 0", self_kl, torch.zeros((), device=device), atol=ATOL)
    check("KL is asymmetric: KL(p||q) != KL(q||p)", abs(pq - qp) > 1e-2,
          detail=f"{pq:.4f} vs {qp:.4f}")
    return {"min_kl": per_pair.min().item(), "kl_pq": pq, "kl_qp": qp}


def fit_gaussian(log_p: torch.Tensor, x: torch.Tensor, forward: bool, steps: int, mu0: float):
    """Fit q = N(mu, sigma) on the grid x by minimising forward or reverse KL with Adam."""
    mu = torch.tensor(mu0, device=x.device, requires_grad=True)
    log_sigma = torch.zeros((), device=x.device, requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=0.05)
    for _ in range(steps):
        q_logits = (-(x - mu) ** 2 / (2 * log_sigma.exp() ** 2))[None]      # (1, G)
        loss = (kl_divergence(log_p[None], q_logits) if forward
                else kl_divergence(q_logits, log_p[None]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu.item(), log_sigma.exp().item()


def step_3_forward_vs_reverse(device, fit_steps: int) -> dict:
    x = torch.linspace(-16, 16, 801, device=device)                         # (G,) a grid
    peak = 0.7                                                             # each mode's std
    # log p built with logsumexp: p itself underflows to 0 far from the peaks (log 0 = -inf).
    log_p = torch.logsumexp(torch.stack([-(x - 3) ** 2, -(x + 3) ** 2]) / (2 * peak**2), 0)
    log_p = F.log_softmax(log_p, dim=0)                                    # two peaks, +-3
    p = log_p.exp()
    fwd = fit_gaussian(log_p, x, forward=True, steps=fit_steps, mu0=1.0)
    rev = fit_gaussian(log_p, x, forward=False, steps=fit_steps, mu0=1.0)
    mean_p = (p * x).sum().item()
    std_p = (p * (x - mean_p) ** 2).sum().sqrt().item()
    print(f"target p: peaks at -3 and +3 (std {peak}); its mean {mean_p:.2f}, std {std_p:.2f}")
    print(f"forward KL(p||q) fit: mu = {fwd[0]:+.3f}, sigma = {fwd[1]:.3f}   (covers both)")
    print(f"reverse KL(q||p) fit: mu = {rev[0]:+.3f}, sigma = {rev[1]:.3f}   (one peak)")
    # Forward KL against a Gaussian family is minimised by matching the moments of p.
    check("forward KL is mean-seeking: q matches p's mean and std", torch.tensor(fwd),
          torch.tensor([mean_p, std_p]), atol=0.05)
    check("reverse KL is mode-seeking: q sits on the +3 peak with that peak's width",
          torch.tensor(rev), torch.tensor([3.0, peak]), atol=0.05)
    return {"forward": fwd, "reverse": rev}


def step_4_temperature_softens(device, batch: int, classes: int,
                               temps=(0.5, 1.0, 2.0, 4.0, 8.0)) -> list:
    z = 4 * torch.randn(batch, classes, device=device)
    ent = []
    for T in temps:
        prob = F.softmax(z / T, dim=-1)                                    # (B, C)
        ent.append(-(prob * prob.log()).sum(-1).mean().item())
    print("T       : " + "  ".join(f"{t:6.1f}" for t in temps))
    print("entropy : " + "  ".join(f"{e:6.3f}" for e in ent)
          + f"   (log C = {math.log(classes):.3f})")
    check("higher temperature -> softer distribution (entropy rises, stays below log C)",
          all(a < b for a, b in zip(ent, ent[1:], strict=False)) and ent[-1] < math.log(classes),
          detail=" < ".join(f"{e:.3f}" for e in ent))
    return ent


def step_5_t_squared(device, batch: int, classes: int) -> dict:
    t = 3 * torch.randn(batch, classes, device=device)
    t, s0 = t - t.mean(-1, keepdim=True), torch.randn(batch, classes, device=device)
    s0 = s0 - s0.mean(-1, keepdim=True)                                    # zero-mean logits
    norms, errors = {}, []
    for T in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        s = s0.clone().requires_grad_(True)
        kl_divergence(t / T, s / T).backward()
        closed = kl_student_gradient(s0, t, T)                             # (B, C)
        # relative error per T: the gradient spans 1e-1 (T = 1) to 1e-5 (T = 64)
        errors.append(((s.grad - closed).abs().max() / closed.abs().max()).item())
        norms[T] = s.grad.norm().item()
    # float32: q_T and p_T both near 1/C differ by ~1/T, so cancellation costs ~T ulps of
    # relative error: ~3e-6 at T = 64; 1e-5 leaves room. A closed form missing the 1/T errs
    # by 1 - 1/T (0.5 at T = 2), yet would pass at T = 1 alone: hence every T.
    check("d KL(p_T||q_T) / d student logits == (q_T - p_T) / (T B) at every T = 1..64",
          max(errors), 0.0, atol=1e-5, detail=f"worst relative error over {len(errors)} T's")
    limit = ((s0 - t) / (classes * batch)).norm().item()    # Hinton 2015 eq. 3: (s - t)/(C T^2)
    print("T              : " + "  ".join(f"{T:7.0f}" for T in norms))
    print("|grad|         : " + "  ".join(f"{g:7.5f}" for g in norms.values()))
    print("T^2 * |grad|   : " + "  ".join(f"{T * T * g:7.4f}" for T, g in norms.items()) +
          f"   (high-T limit |s - t| / (C B) = {limit:.5f})")
    check("for large T the gradient shrinks like 1/T^2: T^2 |grad| -> |s - t| / (C B)",
          torch.tensor([32**2 * norms[32.0], 64**2 * norms[64.0]]), torch.tensor([limit, limit]),
          rtol=0.03)
    return norms


def step_6_distill(device, distill_steps: int, n_points: int, classes: int) -> dict:
    s_logits = torch.randn(8, classes, device=device)
    t_logits = torch.randn(8, classes, device=device)
    y = torch.randint(0, classes, (8,), device=device)
    ref = 0.7 * 16 * F.kl_div(F.log_softmax(s_logits / 4, -1), F.log_softmax(t_logits / 4, -1),
                              reduction="batchmean", log_target=True) + 0.3 * F.cross_entropy(
                                  s_logits, y)
    check("distillation_loss == alpha T^2 F.kl_div + (1 - alpha) F.cross_entropy (T=4)",
          distillation_loss(s_logits, t_logits, y, 4.0, 0.7), ref, atol=ATOL, rtol=ATOL)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, classes)).to(device)
    student = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, classes)).to(device)
    x = torch.randn(n_points, 16, device=device)
    with torch.no_grad():                                         # the teacher is frozen
        t_all = 3 * teacher(x)
    labels = t_all.argmax(-1)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for step in range(distill_steps):
        idx = torch.arange(step * 64, step * 64 + 64, device=device) % n_points
        loss = distillation_loss(student(x[idx]), t_all[idx], labels[idx], 4.0, 0.9)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    agree = (student(x).argmax(-1) == labels).float().mean().item()
    print(f"distillation: loss {first:.3f} -> {last:.3f}; student agrees with teacher on "
          f"{agree:.1%} of inputs (chance {1 / classes:.0%})")
    check("distillation loss falls at least 2.5x", last < first / 2.5,
          detail=f"{first / last:.1f}x")
    check("the student agrees with the teacher's top class on >= 70% of inputs", agree >= 0.7,
          detail=f"{agree:.1%}")
    return {"first": first, "last": last, "agreement": agree}


def step_7_seed(device, batch: int) -> float:
    # SEED (Fang et al. 2021, "Self-supervised Distillation for Visual Representation"): teacher
    # and student embed the same image; each scores it against a queue of K teacher embeddings,
    # softmax(score / tau) gives a distribution over the queue, and the student minimises the
    # cross-entropy to the teacher's. CE(p_T, p_S) = KL(p_T || p_S) + H(p_T), and H(p_T) does
    # not depend on the student, so SEED *is* KL distillation over "which queue entries am I
    # similar to" instead of over class labels; tau plays the role of Hinton's T. (The spec's
    # multimodal notes also meet the SEED visual tokenizer of Ge et al. 2023, a different work.)
    queue = F.normalize(torch.randn(256, 32, device=device), dim=-1)          # (K, D)
    z_t = F.normalize(torch.randn(batch, 32, device=device), dim=-1)          # teacher (B, D)
    z_s = F.normalize(torch.randn(batch, 32, device=device), dim=-1).requires_grad_(True)
    t_scores, s_scores = z_t @ queue.T / 0.01, z_s @ queue.T / 0.2            # (B, K)
    ce = F.cross_entropy(s_scores, F.softmax(t_scores, -1))        # SEED's loss, soft targets
    g_ce, = torch.autograd.grad(ce, z_s, retain_graph=True)
    g_kl, = torch.autograd.grad(kl_divergence(t_scores, s_scores), z_s)
    return check("SEED's soft cross-entropy has the same student gradient as KL(p_T || p_S)",
                 g_ce, g_kl, atol=1e-6, rtol=1e-4)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    b, c = cfg["batch"], cfg["classes"]
    results = {
        "f_kl_div_error": step_1_matches_f_kl_div(device, b, c),
        "properties": step_2_properties(device, b, c),
        "fits": step_3_forward_vs_reverse(device, cfg["fit_steps"]),
        "entropies": step_4_temperature_softens(device, b, c),
        "grad_norms": step_5_t_squared(device, b, c),
        "distill": step_6_distill(device, cfg["distill_steps"], cfg["n_points"], c),
        "seed_grad_error": step_7_seed(device, b),
    }
    d = results["distill"]
    print(f"summary: forward fit sigma {results['fits']['forward'][1]:.2f}, reverse fit sigma "
          f"{results['fits']['reverse'][1]:.2f}; distillation loss {d['first']:.2f} -> "
          f"{d['last']:.2f}")
    return results


if __name__ == "__main__":
    main()
