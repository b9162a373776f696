"""Focal loss: cross-entropy times (1 - p_t)^gamma, so easy examples stop dominating the sum.

With heavy class imbalance most examples are easy (the model already gives the true class a
high probability p_t), yet their many small losses add up and swamp the few hard ones. Focal
loss (Lin et al. 2017) multiplies each example's cross-entropy by (1 - p_t)^gamma: near zero for
easy examples, near one for hard ones.

    FL = -alpha_t (1 - p_t)^gamma log p_t            (Lin et al. 2017, eq. 5)

Claims proven:
  1. Multi-class ``focal_loss`` with gamma=0 and alpha=None equals ``F.cross_entropy``; with a
     per-class alpha it equals the class-weighted cross-entropy averaged over the batch.
  2. ``binary_focal_loss`` (sigmoid form) equals ``torchvision.ops.sigmoid_focal_loss`` with
     ``reduction="mean"``, for several gamma and alpha.
  3. Per example, focal / CE == (1 - p_t)^gamma: an easy example (p_t = 0.9) keeps 1% of its loss
     at gamma=2, a hard one (p_t = 0.1) keeps 81%.
  4. On a 99:1 imbalanced batch, easy examples carry most of the cross-entropy but only a small
     share of the focal loss.
  5. A small classifier trained with multi-class focal loss on imbalanced synthetic data (one
     rare class): the loss falls by a stated factor and the rare class is recalled.

Run:  python advanced/loss_functions/03_focal_loss.py        (about 4 s on a laptop CPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from torchnotes import check, make_parser, start

FULL = dict(batch=64, classes=5, counts=(2000, 400, 40), steps=400)
SMOKE = dict(batch=16, classes=5, counts=(1000, 200, 20), steps=150)

# float32 log-softmax / log-sigmoid of logits of order 1-10: a few ulps; a mean over B terms.
ATOL = 1e-5


def focal_loss(logits, targets, gamma=2.0, alpha=None):
    """Multi-class focal loss, mean over the batch. logits (B, C), targets (B,) class indices.

    alpha: None, or a (C,) tensor of per-class weights (alpha_t = alpha[target]).
    """
    log_p = F.log_softmax(logits, dim=-1)                                # (B, C)
    log_pt = log_p.gather(1, targets[:, None]).squeeze(1)                # (B,) log p_t
    pt = log_pt.exp()
    loss = -((1 - pt) ** gamma) * log_pt                                 # (B,)
    if alpha is not None:
        loss = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)[targets] * loss
    return loss.mean()


def binary_focal_loss(logits, targets, gamma=2.0, alpha=0.25):
    """Sigmoid focal loss (RetinaNet's), mean over all elements; targets are 0/1 floats.

    alpha weighs positives, 1 - alpha negatives; alpha=None (or < 0) turns the weighting off.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")   # -log p_t
    pt = p * targets + (1 - p) * (1 - targets)                                   # p of truth
    loss = ce * (1 - pt) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def step_1_gamma_zero_is_cross_entropy(device, batch: int, classes: int) -> float:
    logits = 3 * torch.randn(batch, classes, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    alpha = torch.rand(classes, device=device) + 0.1
    check("focal_loss(gamma=0, alpha=None) == F.cross_entropy",
          focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y), atol=ATOL, rtol=ATOL)
    weighted = F.cross_entropy(logits, y, weight=alpha, reduction="none").mean()
    print(f"CE = {F.cross_entropy(logits, y).item():.4f}; focal(gamma=2) = "
          f"{focal_loss(logits, y).item():.4f} (smaller: every factor (1 - p_t)^2 is < 1)")
    return check("focal_loss(gamma=0, alpha) == F.cross_entropy(weight=alpha, 'none').mean()",
                 focal_loss(logits, y, gamma=0.0, alpha=alpha), weighted, atol=ATOL, rtol=ATOL)


def step_2_binary_matches_torchvision(device, batch: int, classes: int) -> float:
    logits = 3 * torch.randn(batch, classes, device=device)              # e.g. B anchors x C
    targets = (torch.rand(batch, classes, device=device) < 0.2).float()
    worst = 0.0
    for gamma, alpha in ((2.0, 0.25), (0.0, 0.25), (1.0, 0.5), (2.0, -1.0)):
        ours = binary_focal_loss(logits, targets, gamma=gamma, alpha=alpha)
        ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="mean")
        print(f"gamma={gamma}, alpha={alpha:+.2f}: ours {ours.item():.5f}, torchvision "
              f"{ref.item():.5f}")
        worst = max(worst, check(f"binary_focal_loss == torchvision sigmoid_focal_loss "
                                 f"(gamma={gamma}, alpha={alpha})", ours, ref,
                                 atol=ATOL, rtol=ATOL))
    return worst


def step_3_modulating_factor(device, gamma: float = 2.0) -> torch.Tensor:
    pt = torch.tensor([0.9, 0.5, 0.1], device=device)             # easy, medium, hard
    logits = torch.stack([pt.log(), (1 - pt).log()], dim=1)        # (3, 2): softmax gives pt
    y = torch.zeros(3, dtype=torch.long, device=device)
    ratio = torch.stack([focal_loss(logits[i:i + 1], y[i:i + 1], gamma=gamma) /
                         F.cross_entropy(logits[i:i + 1], y[i:i + 1]) for i in range(3)])
    for p, r in zip(pt.tolist(), ratio.tolist(), strict=True):
        print(f"p_t = {p:.1f}: focal / CE = {r:.4f}")
    check("focal / CE == (1 - p_t)^gamma (0.01 easy, 0.25, 0.81 hard at gamma=2)", ratio,
          (1 - pt) ** gamma, atol=1e-6)
    return ratio


def step_4_easy_examples_down_weighted(device) -> dict:
    # 990 easy negatives (p_t about 0.95) and 10 hard positives (p_t about 0.3): RetinaNet's regime.
    logits = torch.cat([torch.full((990,), -3.0), torch.full((10,), -0.85)]).to(device)
    targets = torch.cat([torch.zeros(990), torch.ones(10)]).to(device)
    easy = targets == 0
    shares = {}
    for name, gamma in (("cross-entropy", 0.0), ("focal gamma=2", 2.0)):
        # the mean over a group times its size is the group's sum
        easy_sum = binary_focal_loss(logits[easy], targets[easy], gamma, None) * easy.sum()
        hard_sum = binary_focal_loss(logits[~easy], targets[~easy], gamma, None) * (~easy).sum()
        shares[name] = (easy_sum / (easy_sum + hard_sum)).item()
        print(f"{name:14s}: easy examples carry {shares[name]:.1%} of the total loss")
    check("easy examples dominate cross-entropy (> 50% of the loss)",
          shares["cross-entropy"] > 0.5, detail=f"{shares['cross-entropy']:.1%}")
    check("focal loss down-weights them (< 10% of the loss)", shares["focal gamma=2"] < 0.1,
          detail=f"{shares['focal gamma=2']:.1%}")
    return shares


def step_5_train_imbalanced(device, counts: tuple, steps: int) -> dict:
    centers = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 4.0]], device=device)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]).to(device)   # (N,)
    x = centers[y] + torch.randn(len(y), 2, device=device)                          # (N, 2)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = focal_loss(model(x), y, gamma=2.0)                  # full batch, gamma=2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        pred = model(x).argmax(-1)
    recall = [(pred[y == c] == c).float().mean().item() for c in range(3)]
    print(f"class counts {counts}; focal loss {losses[0]:.3f} -> {losses[-1]:.3f} "
          f"({losses[0] / losses[-1]:.1f}x)")
    print("recall per class: " + ", ".join(f"{r:.1%}" for r in recall))
    check("focal-loss training: the loss falls at least 5x", losses[-1] < losses[0] / 5,
          detail=f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    check(f"the rare class ({counts[-1]} of {sum(counts)} examples) is recalled >= 60%",
          recall[-1] >= 0.6, detail=f"{recall[-1]:.1%}")
    return {"first": losses[0], "last": losses[-1], "recall": recall}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    b, c = cfg["batch"], cfg["classes"]
    results = {
        "ce_error": step_1_gamma_zero_is_cross_entropy(device, b, c),
        "torchvision_error": step_2_binary_matches_torchvision(device, b, c),
        "modulating_factor": step_3_modulating_factor(device),
        "easy_share": step_4_easy_examples_down_weighted(device),
        "train": step_5_train_imbalanced(device, cfg["counts"], cfg["steps"]),
    }
    t = results["train"]
    print(f"summary: easy examples' share of the loss {results['easy_share']['cross-entropy']:.0%}"
          f" (CE) vs {results['easy_share']['focal gamma=2']:.0%} (focal); rare-class recall "
          f"{t['recall'][-1]:.0%}")
    return results


if __name__ == "__main__":
    main()
