"""nn.Conv2d on a batch of images: it is F.conv2d with a learnable weight and bias.

``nn.Conv2d(3, 6, kernel_size=3)`` owns a weight ``(6, 3, 3, 3)`` and a bias ``(6,)`` and calls
``F.conv2d`` with them. On a batch ``(N, 3, 32, 32)`` it gives ``(N, 6, 30, 30)``; six channels
cannot be shown as an image, so (as the spec does) we reshape to ``(2N, 3, 30, 30)`` to look.

Claims proven:
  1. ``conv(x)`` equals ``F.conv2d(x, conv.weight, conv.bias, stride, padding)``.
  2. Parameter count = out * in * k * k + out = 168, and the weight has shape (out, in, k, k).
  3. The default initialisation keeps every weight and bias within 1/sqrt(in * k * k).
  4. The output shape follows the size formula: (N, 6, 30, 30).
  5. ``reshape(-1, 3, 30, 30)`` only regroups channels: picture 0 is channels 0-2 of image 0.
  Input and output are written to TensorBoard (``--out-dir``/tb) and a PNG grid.

Run:  python nn_modules/05_nn_conv2d.py        (about 1 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/05_nn_conv2d/tb
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_images=64)
SMOKE = dict(n_images=8)


def step_1_module_is_functional(conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    out = conv(images)                                             # (N, 6, 30, 30)
    ref = F.conv2d(images, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    print(f"conv(images): {tuple(images.shape)} -> {tuple(out.shape)}")
    # The same kernel on the same numbers; a GPU may pick another algorithm for the second
    # call, so allow float32 summation-order differences over 27 products (values ~1).
    check("nn.Conv2d(x) == F.conv2d(x, its weight, its bias)", out, ref, atol=1e-5)
    return out.detach()


def step_2_parameter_count(conv: nn.Conv2d) -> int:
    o, i, (kh, kw) = conv.out_channels, conv.in_channels, conv.kernel_size
    count = sum(p.numel() for p in conv.parameters())
    print(f"weight {tuple(conv.weight.shape)}, bias {tuple(conv.bias.shape)}: {count} numbers")
    check("weight shape == (out, in, k, k)", tuple(conv.weight.shape) == (o, i, kh, kw),
          detail=str(tuple(conv.weight.shape)))
    check("parameter count == out*in*k*k + out", count == o * i * kh * kw + o,
          detail=f"{count} == {o}*{i}*{kh}*{kw} + {o}")
    check("parameter count == 168 (the docstring's 6*3*3*3 + 6)", count == 168,
          detail=f"{count}")
    bound = 1 / math.sqrt(i * kh * kw)                             # fan_in = in * k * k
    largest = max(conv.weight.abs().max().item(), conv.bias.abs().max().item())
    check("default init: every weight and bias within 1/sqrt(fan_in)", largest <= bound,
          detail=f"max |value| {largest:.4f} <= {bound:.4f}")
    return count


def step_3_shapes(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n, _, h, w = images.shape
    expected = (n, 6, (h - 3) // 1 + 1, (w - 3) // 1 + 1)          # floor((n + 2p - k)/s) + 1
    check("output shape == (N, 6, 30, 30) by the size formula", tuple(out.shape) == expected,
          detail=f"{tuple(out.shape)}")
    as_rgb = out.reshape(-1, 3, 30, 30)                            # (2N, 3, 30, 30)
    print(f"reshape for viewing: {tuple(out.shape)} -> {tuple(as_rgb.shape)}")
    check("reshape regroups channels: picture 0 == channels 0-2 of image 0, "
          "picture 1 == channels 3-5", torch.stack([as_rgb[0], as_rgb[1]]),
          torch.stack([out[0, :3], out[0, 3:]]))
    return as_rgb


def to_unit_range(t: torch.Tensor) -> torch.Tensor:
    """Min-max scale to [0, 1], so conv outputs (any sign) can be shown as images."""
    return (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)


def step_4_write_visuals(images: torch.Tensor, as_rgb: torch.Tensor, out_dir) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = to_unit_range(as_rgb)
    with SummaryWriter(str(out_dir / "tb")) as writer:
        writer.add_images("input", images, 0)                      # (N, 3, 32, 32)
        writer.add_images("output", shown, 0)                      # (2N, 3, 30, 30)
    k = min(8, images.shape[0])
    padded = F.pad(shown[:2 * k], (1, 1, 1, 1))                    # 30x30 -> 32x32 for the grid
    png = out_dir / "conv2d_grid.png"                              # regenerated on every run
    # Row 1: inputs, each twice (one per output picture); row 2: its two 3-channel pictures.
    save_image(torch.cat([images[:k].repeat_interleave(2, dim=0), padded]), png, nrow=2 * k)
    print(f"wrote TensorBoard images to {out_dir / 'tb'} and {png}")
    return str(png)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    conv = nn.Conv2d(in_channels=3, out_channels=6, kernel_size=3, stride=1,
                     padding=0).to(device)
    images = cifar10_batch(args, cfg["n_images"], device=device)[0]
    out = step_1_module_is_functional(conv, images)
    results = {"out_shape": tuple(out.shape), "n_params": step_2_parameter_count(conv)}
    as_rgb = step_3_shapes(images, out)
    results["png"] = step_4_write_visuals(images.cpu(), as_rgb.cpu(), args.out_dir)
    print(f"summary: Conv2d(3, 6, 3) has {results['n_params']} parameters; "
          f"{tuple(images.shape)} -> {results['out_shape']}")
    return results


if __name__ == "__main__":
    main()
