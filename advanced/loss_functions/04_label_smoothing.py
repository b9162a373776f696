"""Label smoothing: train against (1 - eps) one-hot + eps / C instead of the hard label.

A one-hot target can only be reached with infinite logits, so plain cross-entropy keeps pushing
the model towards certainty. Label smoothing (Szegedy et al. 2016) spreads eps of the target
mass evenly over all C classes; the loss then also penalises a prediction p that strays far
from uniform, which curbs over-confidence (Pereyra et al. 2017; Muller et al. 2019).

    q = (1 - eps) onehot(y) + eps / C            loss = -sum_c q_c log p_c
      = (1 - eps) CE(p, y) + eps KL(u || p) + eps log C              (u: uniform over C)

Claims proven:
  1. ``label_smoothing_cross_entropy`` (written out below) equals
     ``F.cross_entropy(logits, y, label_smoothing=eps)`` for several eps, eps = 0 included.
  2. It equals cross-entropy against the smoothed target distribution q (probability targets).
  3. It equals (1 - eps) CE + eps KL(uniform || p) up to the constant eps log C, the same on
     every batch: the "KL penalty" reading.
  4. On a tiny MLP trained on synthetic data, smoothing lowers the mean confidence and the
     expected calibration error (ECE, Guo et al. 2017) on held-out data, by a stated factor.
  5. The mechanism behind "a smoothed teacher distils worse" (Muller et al. 2019, who measured
     the students; we measure only the cause): smoothing erases how similar the wrong classes
     are. Here each class has a "sibling" class nearby; the share of the wrong-class
     probability that goes to the sibling falls towards uniform under smoothing.

Run:  python advanced/loss_functions/04_label_smoothing.py        (about 5 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=64, classes=6, n_train=400, n_test=4000, steps=600, hidden=128)
SMOKE = dict(batch=16, classes=6, n_train=200, n_test=1000, steps=200, hidden=128)

EPSILON = 0.1
# float32 log-softmax of logits of order 1-10: a few ulps; a mean over B terms: 1e-5.
ATOL = 1e-5


def label_smoothing_cross_entropy(logits, targets, epsilon=0.1):
    """Cross-entropy against (1 - eps) onehot + eps / C; logits (B, C), targets (B,); mean."""
    log_p = F.log_softmax(logits, dim=-1)                                 # (B, C)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)                   # (B,) -log p_y
    uniform = -log_p.mean(dim=-1)                                         # (B,) -1/C sum log p_c
    return ((1 - epsilon) * nll + epsilon * uniform).mean()


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = 10):
    """ECE: bin predictions by confidence; average |confidence - accuracy| weighted by bin size."""
    conf, pred = probs.max(dim=-1)                                        # (N,), (N,)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    ece = torch.zeros((), device=probs.device)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            gap = (conf[in_bin].mean() - correct[in_bin].mean()).abs()
            ece = ece + in_bin.float().mean() * gap
    return ece.item()


def step_1_matches_pytorch(device, batch: int, classes: int) -> float:
    logits = 3 * torch.randn(batch, classes, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    worst = 0.0
    for eps in (0.0, 0.1, 0.3):
        ours = label_smoothing_cross_entropy(logits, y, eps)
        ref = F.cross_entropy(logits, y, label_smoothing=eps)
        print(f"eps = {eps}: ours {ours.item():.5f}, F.cross_entropy {ref.item():.5f}")
        worst = max(worst, check(f"ours == F.cross_entropy(label_smoothing={eps})", ours, ref,
                                 atol=ATOL, rtol=ATOL))
    return worst


def step_2_smoothed_target(device, batch: int, classes: int) -> float:
    logits = 3 * torch.randn(batch, classes, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    q = (1 - EPSILON) * F.one_hot(y, classes).float() + EPSILON / classes    # (B, C)
    print(f"smoothed target for class {y[0].item()}: "
          + ", ".join(f"{v:.4f}" for v in q[0].tolist()))
    return check("ours == cross-entropy against the smoothed target (1 - eps) onehot + eps / C",
                 label_smoothing_cross_entropy(logits, y, EPSILON), F.cross_entropy(logits, q),
                 atol=ATOL, rtol=ATOL)


def step_3_kl_penalty(device, batch: int, classes: int) -> list:
    u = torch.full((batch, classes), 1.0 / classes, device=device)
    constants = []
    for scale in (1.0, 5.0):                                  # a soft and a confident batch
        logits = scale * torch.randn(batch, classes, device=device)
        y = torch.randint(0, classes, (batch,), device=device)
        ce = F.cross_entropy(logits, y)
        kl_u_p = F.kl_div(F.log_softmax(logits, -1), u, reduction="batchmean")   # KL(u || p)
        ls = label_smoothing_cross_entropy(logits, y, EPSILON)
        constants.append((ls - (1 - EPSILON) * ce - EPSILON * kl_u_p).item())
        print(f"logit scale {scale}: LS {ls.item():.4f} = (1-eps) CE {ce.item():.4f} + eps KL(u||p)"
              f" {kl_u_p.item():.4f} + {constants[-1]:.5f}")
    check("LS - (1 - eps) CE - eps KL(u || p) == eps log C on every batch",
          torch.tensor(constants), torch.full((2,), EPSILON * math.log(classes)), atol=1e-5)
    return constants


def train(x, y, hidden: int, steps: int, epsilon: float, seed: int) -> tuple:
    torch.manual_seed(seed)                                  # both runs start from one init
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.ReLU(), nn.Linear(hidden, int(y.max()) + 1)).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):                                   # full batch: the set is tiny
        loss = label_smoothing_cross_entropy(model(x), y, epsilon)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses[0], losses[-1]


def step_4_and_5_calibration(device, classes, n_train, n_test, steps, hidden, seed) -> dict:
    # Class c sits at 3 e_c, its "sibling" c + half at 3 e_c + 1.5 e_(c + half) (8-D, unit
    # noise): siblings are often confused (~25%), other pairs almost never. Fixed geometry, so
    # every seed sees the same difficulty.
    half = classes // 2
    eye = torch.eye(8, device=device)
    centers = torch.cat([3 * eye[:half], 3 * eye[:half] + 1.5 * eye[half:2 * half]])   # (C, 8)

    def sample(n):
        y = torch.randint(0, classes, (n,), device=device)
        return centers[y] + torch.randn(n, 8, device=device), y

    (x_tr, y_tr), (x_te, y_te) = sample(n_train), sample(n_test)
    rows = {}
    for eps in (0.0, EPSILON):
        model, first, last = train(x_tr, y_tr, hidden, steps, eps, seed)
        with torch.no_grad():
            p = F.softmax(model(x_te), dim=-1)                               # (N, C)
        wrong = p.scatter(1, y_te[:, None], 0.0)                             # drop the truth
        wrong = wrong / wrong.sum(-1, keepdim=True)                          # over C - 1
        sibling = wrong.gather(1, ((y_te + half) % classes)[:, None]).mean().item()
        rows[eps] = dict(acc=(p.argmax(-1) == y_te).float().mean().item(),
                         conf=p.max(-1).values.mean().item(),
                         ece=expected_calibration_error(p, y_te), sibling=sibling,
                         first=first, last=last)
        r = rows[eps]
        print(f"eps = {eps}: training loss {first:.3f} -> {last:.2g}")
        print(f"eps = {eps}: test accuracy {r['acc']:.1%}, mean confidence {r['conf']:.1%}, "
              f"ECE {r['ece']:.3f}, sibling's share of wrong-class mass {r['sibling']:.1%}")
    plain, smooth = rows[0.0], rows[EPSILON]
    print(f"(uniform would give the sibling {1 / (classes - 1):.1%} of the wrong-class mass)")
    check("the plain model trains for real: its loss falls at least 5x",
          plain["last"] < plain["first"] / 5, detail=f"{plain['first']:.3f} -> {plain['last']:.2g}")
    check("smoothing lowers over-confidence: mean confidence drops",
          smooth["conf"] < plain["conf"], detail=f"{plain['conf']:.1%} -> {smooth['conf']:.1%}")
    check("smoothing lowers ECE at least 1.5x", smooth["ece"] < plain["ece"] / 1.5,
          detail=f"{plain['ece']:.3f} -> {smooth['ece']:.3f}")
    # Muller et al. 2019: smoothing pulls each class's representations into a tight cluster
    # equidistant from the others, so the "dark knowledge" of which wrong class is similar
    # (what a student learns from a teacher's soft outputs) is erased: in their experiments a
    # teacher trained with label smoothing was as accurate or better, yet its students were
    # worse than those of a teacher trained with hard targets.
    check("smoothing erases class similarity: the sibling's share falls at least 1.3x",
          smooth["sibling"] < plain["sibling"] / 1.3,
          detail=f"{plain['sibling']:.1%} -> {smooth['sibling']:.1%}")
    return rows


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    b, c = cfg["batch"], cfg["classes"]
    results = {
        "pytorch_error": step_1_matches_pytorch(device, b, c),
        "soft_target_error": step_2_smoothed_target(device, b, c),
        "kl_constants": step_3_kl_penalty(device, b, c),
        "calibration": step_4_and_5_calibration(device, c, cfg["n_train"], cfg["n_test"],
                                                cfg["steps"], cfg["hidden"], args.seed),
    }
    cal = results["calibration"]
    print(f"summary: ECE {cal[0.0]['ece']:.3f} without smoothing, {cal[EPSILON]['ece']:.3f} "
          f"with eps={EPSILON}")
    return results


if __name__ == "__main__":
    main()
