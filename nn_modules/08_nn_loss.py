"""L1Loss, MSELoss and CrossEntropyLoss, each rebuilt from its formula.

A loss turns (prediction, target) into one number to minimise. ``reduction`` says how the
per-element losses are combined: ``mean`` (default), ``sum`` or ``none`` (keep them all).

    L1    = |x - y|                 MSE = (x - y)^2
    CE    = -log softmax(z)[y] = -z_y + log(sum_c exp(z_c))      (z: raw scores, "logits")
    CE with a probability target p:   -sum_c p_c * log softmax(z)_c

Claims proven:
  1. Worked by hand, prediction [1, 2, 3] vs target [1, 2, 5]: L1 mean 2/3, L1 sum 2, MSE
     4/3; ``L1Loss`` and ``MSELoss`` equal their formulas for ``reduction`` mean, sum and
     none on random batches.
  2. Worked by hand, scores [0.1, 0.2, 0.3] with class 1: CE = -0.2 + ln(e^0.1 + e^0.2 +
     e^0.3) = 1.1019; on random batches ``CrossEntropyLoss`` with class indices equals
     ``-z_y + log sum exp z`` for every reduction (it is ``log_softmax`` then ``NLLLoss``).
  3. It expects raw scores, not probabilities: a confident, correct prediction, scores
     ``20 * onehot``, costs ``ln(1 + (C-1) e^-20) ~ 0``; passed through softmax first it costs
     ``-1 + ln(e + C - 1) = 1.4612`` (C = 10), the least any probability row can cost.
  4. With probability targets it equals ``-sum p log softmax(z)``; one-hot probabilities give
     the same loss as class indices.
  5. ``label_smoothing=eps`` equals the probability-target loss on ``(1-eps)*onehot + eps/C``.
  6. With class ``weight`` and mean reduction, the sum is divided by the sum of the targets'
     weights, not by N.

Run:  python nn_modules/08_nn_loss.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=256, classes=10)
SMOKE = dict(batch=16, classes=10)

REDUCTIONS = ("mean", "sum", "none")
# float32 exp/log of values of order 1-10 err by a few ulps (<< 1e-5); a sum over up to
# 1280 terms, added in another order (GPU), errs by ~1e-6 of its size: allow 1e-5 relative.
ATOL, RTOL = 1e-5, 1e-5


def apply_reduction(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    if reduction == "none":
        return per_element
    raise ValueError(f"reduction={reduction!r}: expected mean, sum or none")


def l1_by_hand(x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return apply_reduction((x - y).abs(), reduction)


def mse_by_hand(x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return apply_reduction((x - y) ** 2, reduction)


def log_softmax_by_hand(z: torch.Tensor) -> torch.Tensor:
    """log softmax over dim 1; subtracting the max first keeps exp() from overflowing."""
    m = z.max(dim=1, keepdim=True).values                          # (N, 1)
    return z - m - torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))


def cross_entropy_by_hand(z: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                          weight: torch.Tensor | None = None,
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """CrossEntropyLoss from its formula. z: (N, C) logits; target: (N,) ids or (N, C) probs."""
    n, c = z.shape
    index_target = not target.is_floating_point()
    p = F.one_hot(target, c).to(z.dtype) if index_target else target       # (N, C)
    p = p * (1 - label_smoothing) + label_smoothing / c                      # smoothed target
    w = torch.ones(c, dtype=z.dtype, device=z.device) if weight is None else weight
    per_sample = -(p * w * log_softmax_by_hand(z)).sum(dim=1)                # (N,)
    if reduction == "mean":
        # Index targets: a weighted mean (divide by the targets' weights); probabilities: by N.
        return per_sample.sum() / (w[target].sum() if index_target else n)
    return apply_reduction(per_sample, reduction)


def step_1_l1_and_mse(device: torch.device, batch: int) -> dict:
    x = torch.tensor([1.0, 2.0, 3.0], device=device)               # a worked example
    y = torch.tensor([1.0, 2.0, 5.0], device=device)               # differences 0, 0, 2
    small = torch.stack([nn.L1Loss()(x, y), nn.L1Loss(reduction="sum")(x, y),
                         nn.MSELoss()(x, y)])
    print(f"example: L1 mean {small[0].item():.4f}, L1 sum {small[1].item():.4f}, "
          f"MSE {small[2].item():.4f}")
    # By hand: |2| / 3, |2|, 2^2 / 3. float32 of 2/3 and 4/3: within 1 ulp, < 1e-6.
    check("example: L1 mean, L1 sum, MSE == 2/3, 2, 4/3 (by hand)", small,
          torch.tensor([2 / 3, 2.0, 4 / 3]), atol=1e-6)
    xr, yr = torch.randn(batch, 5, device=device), torch.randn(batch, 5, device=device)
    for name, module, hand in (("L1Loss", nn.L1Loss, l1_by_hand),
                               ("MSELoss", nn.MSELoss, mse_by_hand)):
        for r in REDUCTIONS:
            check(f"{name}(reduction={r!r}) == its formula, on a random batch",
                  module(reduction=r)(xr, yr), hand(xr, yr, r), atol=ATOL, rtol=RTOL)
    return {"example_l1": small[0].item(), "example_mse": small[2].item()}


def step_2_cross_entropy_indices(device: torch.device, batch: int, classes: int) -> float:
    z = torch.tensor([[0.1, 0.2, 0.3]], device=device)             # a worked example
    y = torch.tensor([1], device=device)
    small = nn.CrossEntropyLoss()(z, y)
    print(f"example: CE([0.1, 0.2, 0.3], class 1) = {small.item():.4f}")
    # By hand: -0.2 + ln(e^0.1 + e^0.2 + e^0.3) = 1.101943 (6 decimals: within 5e-7; float32
    # exp/log of values ~1 add ~1e-7 more, so 1e-6).
    check("example: CE == -0.2 + ln(e^0.1 + e^0.2 + e^0.3) = 1.101943 (by hand)", small,
          1.101943, atol=1e-6)
    zr = 3 * torch.randn(batch, classes, device=device)            # (N, C) raw scores
    yr = torch.randint(0, classes, (batch,), device=device)        # (N,) class ids
    for r in REDUCTIONS:
        check(f"CrossEntropyLoss(reduction={r!r}) == hand formula",
              nn.CrossEntropyLoss(reduction=r)(zr, yr), cross_entropy_by_hand(zr, yr, r),
              atol=ATOL, rtol=RTOL)
    nll = nn.NLLLoss()(F.log_softmax(zr, dim=1), yr)      # how PyTorch defines CE: not a check
    print(f"NLLLoss(log_softmax(z)) = {nll.item():.4f}; CrossEntropyLoss(z) = "
          f"{nn.CrossEntropyLoss()(zr, yr).item():.4f}")
    return small.item()


def step_3_scores_not_probabilities(device: torch.device, batch: int, classes: int) -> float:
    y = torch.randint(0, classes, (batch,), device=device)
    z = 20 * F.one_hot(y, classes).float()                # (N, C) confident, correct scores
    ce = nn.CrossEntropyLoss(reduction="none")
    on_scores = ce(z, y)                                  # right: raw scores
    on_probs = ce(torch.softmax(z, dim=1), y)             # the mistake: softmax before the loss
    # Softmax rows are ~one-hot, read as scores: -1 + ln(e^1 + (C-1) e^0). It is the minimum:
    # moving probability to class y always lowers -p_y + ln sum exp p.
    floor = -1 + math.log(math.e + classes - 1)
    print(f"perfect prediction: CE {on_scores.abs().max().item():.1e} on scores, "
          f"{on_probs.min().item():.4f} on probabilities")
    # float32 log-sum-exp of values <= 20: within a few ulps of 1, so 1e-6.
    check("perfect prediction as raw scores: CE == ln(1 + (C-1) e^-20) ~ 0", on_scores,
          torch.full_like(on_scores, math.log1p((classes - 1) * math.exp(-20))), atol=1e-6)
    check(f"the same prediction as probabilities: CE == -1 + ln(e + C - 1) = {floor:.4f}",
          on_probs, torch.full_like(on_probs, floor), atol=1e-6)
    rows = torch.softmax(3 * torch.randn(batch, classes, device=device), dim=1)
    print(f"{batch} random probability rows as input: lowest CE "
          f"{ce(rows, y).min().item():.4f} (>= {floor:.4f}, the perfect row's)")
    return floor


def step_4_probability_targets(device: torch.device, batch: int, classes: int) -> None:
    z = 3 * torch.randn(batch, classes, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    probs = torch.softmax(torch.randn(batch, classes, device=device), dim=1)  # rows sum to 1
    ce = nn.CrossEntropyLoss()
    check("probability targets: CE == -sum p log softmax(z), mean over N", ce(z, probs),
          cross_entropy_by_hand(z, probs), atol=ATOL, rtol=RTOL)
    check("one-hot probability targets == class-index targets",
          ce(z, F.one_hot(y, classes).float()), ce(z, y), atol=ATOL, rtol=RTOL)
    eps = 0.1
    smoothed = F.one_hot(y, classes).float() * (1 - eps) + eps / classes
    check(f"label_smoothing={eps} == CE on (1-eps)*onehot + eps/C",
          nn.CrossEntropyLoss(label_smoothing=eps)(z, y), ce(z, smoothed), atol=ATOL, rtol=RTOL)


def step_5_class_weights(device: torch.device, batch: int, classes: int) -> float:
    z = 3 * torch.randn(batch, classes, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    w = torch.rand(classes, device=device) + 0.5                   # (C,) positive weights
    got = nn.CrossEntropyLoss(weight=w)(z, y)
    per = nn.CrossEntropyLoss(weight=w, reduction="none")(z, y)    # w[y_i] * loss_i
    print(f"weighted mean {got.item():.4f}; sum/N would be {(per.sum() / batch).item():.4f}")
    check("weight + mean: sum_i w[y_i] loss_i / sum_i w[y_i]", got, per.sum() / w[y].sum(),
          atol=ATOL, rtol=RTOL)
    return check("weight + mean == hand formula", got, cross_entropy_by_hand(z, y, weight=w),
                 atol=ATOL, rtol=RTOL)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = step_1_l1_and_mse(device, cfg["batch"])
    results["example_ce"] = step_2_cross_entropy_indices(device, **cfg)
    results["probs_floor"] = step_3_scores_not_probabilities(device, **cfg)
    step_4_probability_targets(device, **cfg)
    results["weighted_error"] = step_5_class_weights(device, **cfg)
    print(f"summary: worked examples L1 {results['example_l1']:.4f}, "
          f"MSE {results['example_mse']:.4f}, CE {results['example_ce']:.4f}")
    return results


if __name__ == "__main__":
    main()
