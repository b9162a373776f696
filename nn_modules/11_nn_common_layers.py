"""Common layers: BatchNorm2d, Dropout(2d), AvgPool2d, AdaptiveAvgPool2d, Flatten, Embedding.

Two of these layers behave differently in ``model.train()`` and ``model.eval()``: BatchNorm
normalises with the batch's statistics while training (and updates running averages), with
the running averages in eval; Dropout zeroes random units while training and does nothing in
eval. The others are fixed functions we can write in one line. At the end they come together
in a small Conv-BN-ReLU network, an ``nn.Sequential`` whose layers have names.

Claims proven:
  1. BatchNorm2d (train): output = (x - batch mean) / sqrt(biased var + eps) * gamma + beta per
     channel; running_mean <- (1-m) running_mean + m mean, running_var <- (1-m) running_var
     + m *unbiased* var, checked over two batches.
  2. BatchNorm2d (eval): uses the running statistics, so each sample's output no longer depends
     on the rest of the batch (in train mode it does).
  3. Dropout(p) (train): zeroes a fraction p of the units (within 6 standard errors) and scales
     the rest by 1/(1-p); in eval it is the identity.
  4. AvgPool2d equals the mean of each window (unfold by hand).
  5. AdaptiveAvgPool2d(out) gives ``out`` whatever the input size; with out = 1 it is the mean.
  6. Flatten gives (N, C*H*W) = reshape; Embedding(idx) = one_hot(idx) @ weight = weight[idx].
  7. ``Embedding(padding_idx=0)``: row 0 starts at zero and gets no gradient; used rows do.
  8. ``Dropout2d(p)`` zeroes whole channels: every (sample, channel) plane is all 0 or all
     1/(1-p), a fraction p of them zeroed (within 6 standard errors).
  9. ``nn.Sequential(OrderedDict(...))`` names its layers (``cnn.bn1``, keys ``bn1.weight``);
     in the Conv-BN-ReLU network a conv bias would be wasted (train-mode BN subtracts it
     again), so the conv has ``bias=False``; AdaptiveAvgPool2d lets it take any image size.

Run:  python nn_modules/11_nn_common_layers.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=32, channels=8, size=16, dropout_units=1_000_000)
SMOKE = dict(batch=4, channels=3, size=8, dropout_units=20_000)
DROPOUT_P = 0.3

# float32 means/variances over a few thousand values of order 1 (summed in another order by
# torch's kernels, or by Welford's method on GPUs): errors ~1e-6, so 1e-5.
ATOL = 1e-5


def batchnorm_by_hand(x: torch.Tensor, mean, var, gamma, beta, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * gamma + beta, with (C,) statistics broadcast over N, H, W."""
    def c(t):
        return t.view(1, -1, 1, 1)                                   # (C,) -> (1, C, 1, 1)
    return (x - c(mean)) / torch.sqrt(c(var) + eps) * c(gamma) + c(beta)


def avgpool_by_hand(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    return x.unfold(2, k, s).unfold(3, k, s).mean(dim=(-2, -1))     # (N, C, oh, ow)


def step_1_batchnorm_train(device, batch: int, channels: int, size: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=0.1).to(device)
    with torch.no_grad():                                            # non-trivial gamma, beta
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    m, eps = bn.momentum, bn.eps
    running_mean = torch.zeros(channels, device=device)              # BatchNorm's start values
    running_var = torch.ones(channels, device=device)
    bn.train()
    for i in range(2):
        x = 2 * torch.randn(batch, channels, size, size, device=device) + 1
        out = bn(x)
        mean = x.mean(dim=(0, 2, 3))                                 # (C,) over N, H, W
        var = x.var(dim=(0, 2, 3), correction=0)                     # biased: normalises
        unbiased = x.var(dim=(0, 2, 3), correction=1)                # unbiased: running_var
        check(f"batch {i + 1}: train-mode output == (x - mean) / sqrt(var + eps) * g + b",
              out, batchnorm_by_hand(x, mean, var, bn.weight, bn.bias, eps), atol=ATOL)
        running_mean = (1 - m) * running_mean + m * mean
        running_var = (1 - m) * running_var + m * unbiased
    print(f"running_mean[:3] = {bn.running_mean[:3].tolist()}")
    check("running_mean == (1-m) * old + m * batch mean (two updates)", bn.running_mean,
          running_mean, atol=ATOL)
    check("running_var == (1-m) * old + m * UNBIASED batch var (two updates)", bn.running_var,
          running_var, atol=ATOL)
    return bn


def step_2_batchnorm_eval(bn: nn.BatchNorm2d, device, batch: int, channels: int,
                          size: int) -> float:
    x = torch.randn(batch, channels, size, size, device=device)
    bn.eval()
    out = bn(x)
    check("eval-mode output uses running_mean / running_var", out,
          batchnorm_by_hand(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps),
          atol=ATOL)
    check("eval mode: sample 0 alone gives the same output as inside the batch",
          bn(x[:1])[0], out[0], atol=ATOL)
    trainer = copy.deepcopy(bn).train()        # a copy: train-mode calls update running stats
    gap = (trainer(x[:2])[0] - trainer(x)[0]).abs().max().item()
    print(f"train mode: sample 0 alone vs in the batch differ by up to {gap:.3f}")
    check("train mode: sample 0's output depends on the rest of the batch", gap > 1e-3,
          detail=f"max difference {gap:.3f}")
    return gap


def step_3_dropout(device, dropout_units: int, p: float = 0.3) -> float:
    drop = nn.Dropout(p)
    x = torch.ones(dropout_units, device=device)
    out = drop.train()(x)
    zeroed = (out == 0).float().mean().item()
    se = math.sqrt(p * (1 - p) / dropout_units)        # standard error of a Binomial fraction
    print(f"train: zeroed {zeroed:.4f} of {dropout_units} units (p = {p}, 1 s.e. = {se:.4f})")
    # 6 standard errors: a correct Dropout fails this about once in 500 million runs.
    check(f"train: fraction zeroed == p within 6 s.e. ({6 * se:.4f})", abs(zeroed - p) < 6 * se,
          detail=f"|{zeroed:.4f} - {p}|")
    kept = out[out != 0]
    check("train: the kept units are scaled by 1/(1-p)", kept, torch.full_like(kept, 1 / (1 - p)),
          atol=1e-6)
    check("eval: Dropout is the identity", drop.eval()(x), x)
    return zeroed


def step_4_pooling(device, batch: int, channels: int, size: int) -> None:
    x = torch.randn(batch, channels, size, size, device=device)
    for k, s in ((2, 2), (3, 2)):
        check(f"AvgPool2d({k}, stride={s}) == mean of each window", nn.AvgPool2d(k, s)(x),
              avgpool_by_hand(x, k, s), atol=1e-6)
    shapes = {}
    for n in (size, size + 1, 2 * size + 3):             # three different input sizes
        xi = torch.randn(batch, channels, n, n, device=device)
        one, four = nn.AdaptiveAvgPool2d(1)(xi), nn.AdaptiveAvgPool2d((4, 4))(xi)
        shapes[n] = (tuple(one.shape[-2:]), tuple(four.shape[-2:]))
        check(f"input {n}x{n}: AdaptiveAvgPool2d(1) == mean over H, W", one,
              xi.mean(dim=(2, 3), keepdim=True), atol=1e-6)
    print(f"AdaptiveAvgPool2d output sizes by input size: {shapes}")
    check("AdaptiveAvgPool2d output size does not depend on the input size",
          set(shapes.values()) == {((1, 1), (4, 4))}, detail=str(set(shapes.values())))


def step_5_flatten_and_embedding(device, batch: int, channels: int, size: int) -> None:
    x = torch.randn(batch, channels, size, size, device=device)
    flat = nn.Flatten()(x)
    check(f"Flatten: {tuple(x.shape)} -> (N, C*H*W) == reshape", flat, x.reshape(batch, -1))
    emb = nn.Embedding(num_embeddings=20, embedding_dim=5).to(device)
    idx = torch.randint(0, 20, (batch, 7), device=device)            # (N, T) token ids
    out = emb(idx)                                                   # (N, T, 5)
    one_hot = F.one_hot(idx, 20).float()                             # (N, T, 20)
    print(f"Embedding(20, 5): ids {tuple(idx.shape)} -> vectors {tuple(out.shape)}")
    # 1*w plus zeros is exact; float32 matmul TF32 is off by default.
    check("Embedding(idx) == one_hot(idx) @ weight", out, one_hot @ emb.weight, atol=0.0)
    check("Embedding(idx) == weight[idx] (a row lookup)", out, emb.weight[idx])


def step_6_embedding_padding_idx(device, batch: int) -> None:
    emb = nn.Embedding(20, 5, padding_idx=0).to(device)             # id 0 = "no token"
    idx = torch.tensor([[3, 7, 0, 0]] * batch, device=device)        # (N, T): padded sentences
    emb(idx).sum().backward()
    print(f"padding row: {emb.weight[0].tolist()}; its grad: {emb.weight.grad[0].tolist()}")
    check("padding_idx row starts as zeros", emb.weight[0], torch.zeros(5))
    check("padding_idx row gets no gradient; the used rows 3 and 7 do",
          bool((emb.weight.grad[0] == 0).all()) and bool((emb.weight.grad[[3, 7]] != 0).all()))


def step_7_dropout2d(device, dropout_units: int, p: float = DROPOUT_P) -> float:
    drop = nn.Dropout2d(p).train()
    x = torch.ones(dropout_units // 16, 16, 2, 2, device=device)     # (N, C, H, W), planes 2x2
    out = drop(x)
    planes = out.flatten(2)                                          # (N, C, H*W)
    zero = (planes == 0).all(-1)                                     # a whole plane dropped
    whole = zero | (planes == 1 / (1 - p)).all(-1)                   # or a whole plane kept
    frac, se = zero.float().mean().item(), math.sqrt(p * (1 - p) / zero.numel())
    print(f"Dropout2d({p}): {frac:.4f} of {zero.numel()} channels zeroed (1 s.e. = {se:.4f})")
    check("Dropout2d: every channel plane is all 0 or all 1/(1-p)", bool(whole.all()))
    check(f"Dropout2d: fraction of channels zeroed == p within 6 s.e. ({6 * se:.4f})",
          abs(frac - p) < 6 * se, detail=f"|{frac:.4f} - {p}|")
    return frac


def small_cnn(classes: int = 10) -> nn.Sequential:
    """Conv-BN-ReLU twice, global average pooling, a linear head; every layer named."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, padding=1, bias=False)),      # BN's beta is the bias
        ("bn1", nn.BatchNorm2d(16)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1, bias=False)),
        ("bn2", nn.BatchNorm2d(32)),
        ("relu2", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)),                            # (N, 32, 1, 1), any H, W
        ("flatten", nn.Flatten()),                                   # (N, 32)
        ("drop", nn.Dropout(0.2)),
        ("fc", nn.Linear(32, classes)),                              # (N, classes)
    ]))


def step_8_named_conv_bn_relu(device, batch: int, size: int) -> dict:
    cnn = small_cnn().to(device)
    keys = list(cnn.state_dict())
    print(f"cnn[1] = {cnn[1]!r}; state_dict keys {keys[:3]} ... {keys[-2:]}")
    check("OrderedDict names: cnn.bn1 is layer 1 and the keys read 'bn1.running_mean'",
          getattr(cnn, "bn1", None) is cnn[1] and "bn1.running_mean" in keys)
    x = torch.randn(batch, 3, size, size, device=device)
    conv = cnn.conv1
    with torch.no_grad():
        biased = nn.Conv2d(3, 16, 3, padding=1).to(device)          # same weight, plus a bias
        biased.weight.copy_(conv.weight)
        biased.bias.uniform_(-1, 1)
        gap = (cnn.bn1(biased(x)) - cnn.bn1(conv(x))).abs().max().item()
    # Exact in real numbers; float32 rounds the shifted values (|.| ~ 1-3) at ~1e-7 and the
    # normalisation scales that by 1/std ~ 1, so anything past 1e-4 means the bias survived.
    check("train-mode BN removes a conv bias: BN(conv(x) + b) == BN(conv(x))", gap < 1e-4,
          detail=f"max difference {gap:.1e}")
    cnn.eval()
    features = cnn[:-1]                                             # everything before fc
    shapes = {n: tuple(features(torch.randn(2, 3, n, n, device=device)).shape)
              for n in (size, 32)}
    print(f"features before fc, by input size: {shapes}")
    check("any image size gives (2, 32) features, so fc always fits",
          set(shapes.values()) == {(2, 32)}, detail=str(shapes))
    print(f"cnn(2 images of 32x32) -> {tuple(cnn(torch.randn(2, 3, 32, 32, device=device)).shape)}")
    return {"keys": keys, "shapes": shapes}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    shape = {k: cfg[k] for k in ("batch", "channels", "size")}
    bn = step_1_batchnorm_train(device, **shape)
    results = {
        "running_mean": bn.running_mean.cpu(),
        "train_mode_gap": step_2_batchnorm_eval(bn, device, **shape),
        "dropout_zeroed": step_3_dropout(device, cfg["dropout_units"]),
    }
    step_4_pooling(device, **shape)
    step_5_flatten_and_embedding(device, **shape)
    step_6_embedding_padding_idx(device, cfg["batch"])
    results["dropout2d_zeroed"] = step_7_dropout2d(device, cfg["dropout_units"])
    results["cnn"] = step_8_named_conv_bn_relu(device, cfg["batch"], cfg["size"])
    print(f"summary: Dropout zeroed {results['dropout_zeroed']:.3f} (p = 0.3); BatchNorm "
          f"train-mode output moved by up to {results['train_mode_gap']:.3f} with the batch")
    return results


if __name__ == "__main__":
    main()
