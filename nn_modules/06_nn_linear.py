"""nn.Linear on flattened images: y = x @ W.T + b, one row per image.

A fully connected layer needs each image as one vector: ``(N, 3, 32, 32)`` is flattened to
``(N, 3072)`` (``nn.Flatten`` or ``torch.flatten(x, 1)``). Flattening *everything*
(``torch.flatten(x)``, as the spec does) also merges the batch into one long vector, which
ties the layer's size to the batch size; we keep the batch dimension.

Claims proven:
  1. ``nn.Flatten()(x)`` equals ``x.reshape(N, -1)``; ``torch.flatten(x)`` merges the batch.
  2. ``nn.Linear(x)`` equals ``x @ W.T + b`` with W of shape (out, in).
  3. Parameter count = in * out + out.
  4. Leading dimensions are batch dimensions: Linear on (2, N/2, 3072) is Linear on (N, 3072)
     reshaped, and each image's output depends on that image only.

Run:  python nn_modules/06_nn_linear.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

import torch
from torch import nn

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_images=64, out_features=10)
SMOKE = dict(n_images=8, out_features=10)

# float32 dot products of length 3072: nn.Linear (one fused addmm) and `@` then `+` may sum
# in a different order, a few ulps; 1e-4 relative to the largest output covers that.
RTOL = 1e-4


def step_1_flatten(images: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    flat = nn.Flatten()(images)                                    # (N, 3072)
    everything = torch.flatten(images)                             # (N * 3072,)
    print(f"nn.Flatten(): {tuple(images.shape)} -> {tuple(flat.shape)}; "
          f"torch.flatten(x): -> {tuple(everything.shape)}")
    check("nn.Flatten()(x) == x.reshape(N, -1)", flat, images.reshape(n, -1))
    check("torch.flatten(x) merges the batch too: one vector of N*3*32*32",
          everything.shape == (n * 3 * 32 * 32,), detail=f"{tuple(everything.shape)}")
    return flat


def step_2_linear_formula(linear: nn.Linear, flat: torch.Tensor) -> float:
    out = linear(flat)                                             # (N, out)
    hand = flat @ linear.weight.T + linear.bias                    # (N, in) @ (in, out) + (out,)
    print(f"W {tuple(linear.weight.shape)}, b {tuple(linear.bias.shape)}: "
          f"{tuple(flat.shape)} -> {tuple(out.shape)}")
    return check("nn.Linear(x) == x @ W.T + b", out, hand, atol=1e-6, rtol=RTOL)


def step_3_parameter_count(linear: nn.Linear) -> int:
    count = sum(p.numel() for p in linear.parameters())
    i, o = linear.in_features, linear.out_features
    check("parameter count == in*out + out", count == i * o + o,
          detail=f"{count} == {i}*{o} + {o}")
    return count


def step_4_batch_dims(linear: nn.Linear, flat: torch.Tensor) -> float:
    n = flat.shape[0]
    out = linear(flat)
    grouped = linear(flat.reshape(2, n // 2, -1))                  # (2, N/2, 3072) -> (2, N/2, out)
    check("Linear on (2, N/2, in) == Linear on (N, in), reshaped", grouped,
          out.reshape(2, n // 2, -1), atol=1e-6, rtol=RTOL)
    changed = flat.clone()
    changed[1:] = 0.0                                              # wipe every image but the first
    return check("image 0's output depends on image 0 only (others zeroed, same row)",
                 linear(changed)[0], out[0], atol=1e-6, rtol=RTOL)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    images = cifar10_batch(args, cfg["n_images"], device=device)[0]
    flat = step_1_flatten(images)
    linear = nn.Linear(flat.shape[1], cfg["out_features"]).to(device)  # 3072 -> 10
    results = {
        "linear_error": step_2_linear_formula(linear, flat),
        "n_params": step_3_parameter_count(linear),
        "batch_error": step_4_batch_dims(linear, flat),
    }
    print(f"summary: Linear({linear.in_features}, {linear.out_features}) has "
          f"{results['n_params']} parameters")
    return results


if __name__ == "__main__":
    main()
