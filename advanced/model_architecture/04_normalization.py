"""Normalization layers by hand: BatchNorm, LayerNorm, GroupNorm, InstanceNorm, and which to use.

All four compute (x - mean) / sqrt(var + eps); they differ only in the axes the mean and the
variance are taken over. That choice decides whether a sample's output depends on the rest of
the batch, and so how each behaves with a batch of one.

Claims proven:
  1. The hand versions (no affine, training-mode statistics, biased variance) equal
     ``F.batch_norm`` / ``F.layer_norm`` / ``F.group_norm`` / ``F.instance_norm`` on
     several shapes, in float64.
  2. GroupNorm spans the family (Wu & He 2018): one group is LayerNorm over (C, H, W); one
     channel per group is InstanceNorm. The axes each normalises are printed as a table.
  3. Batch size 1: BatchNorm in training refuses a single (N=1, C) sample; with spatial dims it
     degenerates to InstanceNorm; its output for a sample depends on the other samples, while
     LayerNorm's and GroupNorm's do not.
  4. BatchNorm's running statistics are exponential moving averages (momentum 0.1) of the batch
     means and of the unbiased batch variances, starting from 0 and 1, so after n steps the
     start values still weigh 0.9^n (smoke, n = 5: the mean is 0.41 of the way to the data's).
     Eval mode normalises with them.

Run:  python advanced/model_architecture/04_normalization.py      (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, check_raises, float64_device, make_parser, start

FULL = dict(batch=16, channels=32, size=16, groups=8, bn_steps=50)
SMOKE = dict(batch=4, channels=8, size=4, groups=4, bn_steps=5)


def _normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=0)      # biased: what training mode uses
    return (x - mean) / torch.sqrt(var + eps)


def batch_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Ioffe & Szegedy 2015: per channel, over the batch and every spatial position."""
    return _normalize(x, (0, *range(2, x.dim())), eps)                  # x: (N, C, *)


def layer_norm(x: torch.Tensor, normalized_ndim: int, eps: float = 1e-5) -> torch.Tensor:
    """Ba 2016: per sample (per token), over the last ``normalized_ndim`` dims."""
    return _normalize(x, tuple(range(x.dim() - normalized_ndim, x.dim())), eps)


def group_norm(x: torch.Tensor, num_groups: int, eps: float = 1e-5) -> torch.Tensor:
    """Wu & He 2018: per sample, over each group of C/G consecutive channels and space."""
    N = x.shape[0]
    grouped = x.reshape(N, num_groups, -1)            # (N, G, C/G * spatial), channels in order
    return _normalize(grouped, (2,), eps).reshape(x.shape)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Ulyanov 2016: per sample and per channel, over space only."""
    return _normalize(x, tuple(range(2, x.dim())), eps)                 # x: (N, C, *)


def step_1_equal_pytorch(device, batch, channels, size, groups, **_) -> float:
    dev, f64 = float64_device(device), torch.float64
    worst = 0.0
    for shape in ((batch, channels), (batch, channels, size * 3), (batch, channels, size, size)):
        x = 3 * torch.randn(shape, device=dev, dtype=f64) + 2           # not already normalised
        # float64 on both sides: only the summation order differs (~1e-15); 1e-10 is ample.
        results = [("batch_norm", batch_norm(x),
                    F.batch_norm(x, None, None, training=True, eps=1e-5)),
                   ("layer_norm", layer_norm(x, x.dim() - 1), F.layer_norm(x, x.shape[1:])),
                   ("layer_norm, last dim only", layer_norm(x, 1), F.layer_norm(x, x.shape[-1:])),
                   ("group_norm", group_norm(x, groups), F.group_norm(x, groups, eps=1e-5))]
        if x.dim() > 2:                                      # instance norm needs spatial dims
            results.append(("instance_norm", instance_norm(x), F.instance_norm(x, eps=1e-5)))
        for name, ours, ref in results:
            worst = max(worst, check(f"{name} == F.{name.split(',')[0]} on {tuple(shape)}",
                                     ours, ref, atol=1e-10))
    return worst


def step_2_axes_table(device, batch, channels, size, groups, **_) -> dict:
    dev = float64_device(device)
    x = torch.randn(batch, channels, size, size, device=dev, dtype=torch.float64)
    check("group_norm with G = 1 == layer_norm over (C, H, W)", group_norm(x, 1), layer_norm(x, 3),
          atol=1e-10)
    check("group_norm with G = C == instance_norm", group_norm(x, channels), instance_norm(x),
          atol=1e-10)
    N, C, G = batch, channels, groups
    table = {  # name: (axes of one statistic, how many statistics, typical use)
        "BatchNorm": ("N, H, W", C, "CNNs with large batches (ResNet)"),
        "LayerNorm": ("C, H, W (a token's E)", N, "transformers, RNNs; any batch size"),
        "GroupNorm": (f"C/G={C // G} channels, H, W", N * G, "detection/segmentation, small batch"),
        "InstanceNorm": ("H, W", N * C, "style transfer (per-image contrast)"),
    }
    print(f"x: (N, C, H, W) = {tuple(x.shape)}, G = {G}")
    print(f"{'layer':<13}{'mean/var over':<27}{'# statistics':>13}  use")
    for name, (axes, count, use) in table.items():
        print(f"{name:<13}{axes:<27}{count:>13}  {use}")
    return {name: row[1] for name, row in table.items()}


def step_3_batch_of_one(device, batch, channels, size, groups, **_) -> dict:
    check_raises("BatchNorm in training refuses one (N=1, C) sample: no batch to average",
                 ValueError, F.batch_norm, torch.randn(1, channels, device=device), None, None,
                 training=True, match="more than 1 value per channel")
    one = torch.randn(1, channels, size, size, device=device)
    check("with N=1 and spatial dims, BatchNorm's statistics are one image's: == InstanceNorm",
          batch_norm(one), F.instance_norm(one), atol=1e-5)      # float32, ~1e-6 apart
    x = torch.randn(batch, channels, size, size, device=device)
    x_other = torch.cat([x[:1], torch.randn_like(x[1:])])        # same sample 0, new companions
    moved = {name: (fn(x)[0] - fn(x_other)[0]).abs().max().item() for name, fn in
             {"batch_norm": batch_norm, "layer_norm": lambda t: layer_norm(t, 3),
              "group_norm": lambda t: group_norm(t, groups),
              "instance_norm": instance_norm}.items()}
    print("change in sample 0's output when the other samples change: "
          + ", ".join(f"{k} {v:.2g}" for k, v in moved.items()))
    check("BatchNorm's output for a sample depends on the rest of the batch",
          moved["batch_norm"] > 1e-3, detail=f"{moved['batch_norm']:.3f}")
    check("LayerNorm, GroupNorm, InstanceNorm outputs do not (per-sample statistics)",
          max(moved["layer_norm"], moved["group_norm"], moved["instance_norm"]) <= 1e-6)
    return {"batch_dependence": moved}


def step_4_running_statistics(device, batch, channels, size, bn_steps, **_) -> dict:
    dev = float64_device(device)
    momentum = 0.1                                               # PyTorch's default
    bn = nn.BatchNorm2d(channels, affine=False, momentum=momentum, device=device)
    means, variances = [], []
    for _ in range(bn_steps):                                    # training fills running stats
        xb = 2 * torch.randn(batch, channels, size, size, device=device) + 1   # mean 1, var 4
        bn(xb)
        xb = xb.to(dev, torch.float64)
        means.append(xb.mean((0, 2, 3)))                         # (C,) this batch's statistics
        variances.append(xb.var((0, 2, 3)))                      # unbiased (n - 1): not 1/n
    # An exponential moving average, new = (1 - m) old + m batch, from mean 0 and var 1:
    # after n steps batch k weighs m (1 - m)^(n-1-k), and the start value (1 - m)^n.
    w = momentum * (1 - momentum) ** torch.arange(bn_steps - 1, -1, -1, device=dev,
                                                  dtype=torch.float64)
    ema_mean = (w[:, None] * torch.stack(means)).sum(0)                       # (C,)
    ema_var = (1 - momentum) ** bn_steps + (w[:, None] * torch.stack(variances)).sum(0)
    print(f"after {bn_steps} steps on data of mean 1, var 4: running mean ~ "
          f"{bn.running_mean.mean().item():.2f} (EMA: {ema_mean.mean().item():.2f}), running "
          f"var ~ {bn.running_var.mean().item():.2f} (EMA: {ema_var.mean().item():.2f})")
    print(f"the start values (mean 0, var 1) still weigh (1 - {momentum})^{bn_steps} = "
          f"{(1 - momentum) ** bn_steps:.2f}")
    # float32 statistics of <= 4096 values vs float64: ~1e-6 apart.
    check(f"running_mean == EMA of the batch means (momentum {momentum}, from 0)",
          bn.running_mean, ema_mean, atol=1e-5)
    check("running_var == EMA of the unbiased batch variances (from 1)", bn.running_var,
          ema_var, atol=1e-5)
    bn.eval()
    one = torch.randn(1, channels, size, size, device=device)
    expected = (one - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps)
    check("eval mode: a batch of one uses the running statistics", bn(one), expected, atol=1e-5)
    return {"running_mean": bn.running_mean.mean().item(),
            "running_var": bn.running_var.mean().item()}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "max_error": step_1_equal_pytorch(device, **cfg),
        "statistics_count": step_2_axes_table(device, **cfg),
        **step_3_batch_of_one(device, **cfg),
        **step_4_running_statistics(device, **cfg),
    }
    print(f"summary: four norms match PyTorch to {results['max_error']:.1g}; only BatchNorm "
          f"mixes samples")
    return results


if __name__ == "__main__":
    main()
