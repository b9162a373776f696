"""L1Loss, MSELoss and CrossEntropyLoss, each rebuilt from its formula.

A loss turns (prediction, target) into one number to minimise. ``reduction`` says how the
per-element losses are combined: ``mean`` (default), ``sum`` or ``none`` (keep them all).

    L1    = |x - y|                 MSE = (x - y)^2
    CE    = -log softmax(z)[y] = -z_y + log(sum_c exp(z_c))      (z: raw scores, "logits")
    CE with a probability target p:   -sum_c p_c * log softmax(z)_c

Claims proven:
  1. ``L1Loss`` and ``MSELoss`` equal their formulas for ``reduction`` mean, sum and none
     (the spec's [1, 2, 3] vs [1, 2, 5]: L1 0.667 / 2, MSE 1.333).
  2. ``CrossEntropyLoss`` with class indices equals ``-z_y + log sum exp z`` (the spec's
     [0.1, 0.2, 0.3], class 1: 1.1019) for every reduction, and equals
     ``NLLLoss(log_softmax(z))``: CrossEntropyLoss expects raw scores, not probabilities.
  3. With probability targets it equals ``-sum p log softmax(z)``; one-hot probabilities give
     the same loss as class indices.
  4. ``label_smoothing=eps`` equals the probability-target loss on ``(1-eps)*onehot + eps/C``.
  5. With class ``weight`` and mean reduction, the sum is divided by the sum of the targets'
     weights, not by N.

Run:  python nn_modules/08_nn_loss.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

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
    x = torch.tensor([1.0, 2.0, 3.0], device=device)               # the spec's example
    y = torch.tensor([1.0, 2.0, 5.0], device=device)
    spec = torch.stack([nn.L1Loss()(x, y), nn.L1Loss(reduction="sum")(x, y), nn.MSELoss()(x, y)])
    print(f"spec: L1 mean {spec[0].item():.4f}, L1 sum {spec[1].item():.4f}, "
          f"MSE {spec[2].item():.4f}")
    # The docstring's rounded values: 3 decimals, so they hold within half a unit, 5e-4.
    check("spec: L1 mean, L1 sum, MSE == 0.667, 2, 1.333 (as rounded in the docstring)", spec,
          torch.tensor([0.667, 2.0, 1.333]), atol=5e-4)
    xr, yr = torch.randn(batch, 5, device=device), torch.randn(batch, 5, device=device)
    pairs = ((x, y), (xr, yr))
    for name, module, hand in (("L1Loss", nn.L1Loss, l1_by_hand),
                               ("MSELoss", nn.MSELoss, mse_by_hand)):
        for r in REDUCTIONS:
            got = torch.cat([module(reduction=r)(a, b).flatten() for a, b in pairs])
            want = torch.cat([hand(a, b, r).flatten() for a, b in pairs])
            check(f"{name}(reduction={r!r}) == its formula, reduced (spec + random)", got, want,
                  atol=ATOL, rtol=RTOL)
    return {"spec_l1": nn.L1Loss()(x, y).item(), "spec_mse": nn.MSELoss()(x, y).item()}


def step_2_cross_entropy_indices(device: torch.device, batch: int, classes: int) -> float:
    z = torch.tensor([[0.1, 0.2, 0.3]], device=device)             # the spec's example
    y = torch.tensor([1], device=device)
    spec = nn.CrossEntropyLoss()(z, y)
    print(f"spec: CE([0.1, 0.2, 0.3], class 1) = {spec.item():.4f}")
    # The docstring's 1.1019 has 4 decimals: within half a unit, 5e-5.
    check("spec: CE == 1.1019 (as rounded in the docstring)", spec, 1.1019, atol=5e-5)
    check("spec: CE == -z_y + log(sum exp z)", spec, -0.2 + torch.log(torch.exp(z).sum()),
          atol=ATOL, rtol=RTOL)
    zr = 3 * torch.randn(batch, classes, device=device)            # (N, C) raw scores
    yr = torch.randint(0, classes, (batch,), device=device)        # (N,) class ids
    for r in REDUCTIONS:
        check(f"CrossEntropyLoss(reduction={r!r}) == hand formula",
              nn.CrossEntropyLoss(reduction=r)(zr, yr), cross_entropy_by_hand(zr, yr, r),
              atol=ATOL, rtol=RTOL)
    check("CrossEntropyLoss(z) == NLLLoss(log_softmax(z))", nn.CrossEntropyLoss()(zr, yr),
          nn.NLLLoss()(F.log_softmax(zr, dim=1), yr), atol=ATOL, rtol=RTOL)
    return spec.item()


def step_3_probability_targets(device: torch.device, batch: int, classes: int) -> None:
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


def step_4_class_weights(device: torch.device, batch: int, classes: int) -> float:
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
    results["spec_ce"] = step_2_cross_entropy_indices(device, **cfg)
    step_3_probability_targets(device, **cfg)
    results["weighted_error"] = step_4_class_weights(device, **cfg)
    print(f"summary: spec losses L1 {results['spec_l1']:.4f}, MSE {results['spec_mse']:.4f}, "
          f"CE {results['spec_ce']:.4f}")
    return results


if __name__ == "__main__":
    main()
