"""nn.Conv2d over CIFAR-10 batch by batch: F.conv2d with a learnable weight and bias.

``nn.Conv2d(3, 6, kernel_size=3)`` owns a weight ``(6, 3, 3, 3)`` and a bias ``(6,)`` and calls
``F.conv2d`` with them. On a batch ``(N, 3, 32, 32)`` it gives ``(N, 6, 30, 30)``; six channels
cannot be shown as an image, so we reshape to ``(2N, 3, 30, 30)`` to look at them.

Claims proven:
  1. ``print(model)`` shows the layer with its arguments: ``Conv2d(3, 6, kernel_size=(3, 3),
     stride=(1, 1))``.
  2. ``conv(x)[n, o, i, j]`` is the k x k window of the zero-padded input at ``(i*s, j*s)``,
     times weight ``o``, summed, plus bias ``o`` (worked by hand at the corners and the centre),
     for this layer and for a ``stride=2, padding=1`` one, whose output is
     ``floor((32 + 2*1 - 3) / 2) + 1 = 16`` pixels wide.
  3. The weight is (out, in, k, k) = (6, 3, 3, 3); parameters 6*3*3*3 + 6 = 168; the default
     initialisation keeps every weight and bias within 1/sqrt(in * k * k).
  4. Over every batch of the loader the output is (B, 6, 30, 30) (the size formula), and
     ``reshape(-1, 3, 30, 30)`` only regroups channels: picture 2i is channels 0-2 of image i.
  Each batch's input and output go to TensorBoard at that batch's step (``--out-dir``/tb).

Run:  python nn_modules/05_nn_conv2d.py        (about 3 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/05_nn_conv2d/tb
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from torchnotes import check, make_parser, output_folder, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_images=640, batch_size=64, max_steps=10)
SMOKE = dict(n_images=64, batch_size=16, max_steps=4)


class Moli(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=6, kernel_size=3, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (N, 3, 32, 32) -> (N, 6, 30, 30)
        return self.conv1(x)


def load_test_set(args, n_images: int):
    """CIFAR-10's test split as tensors: the real files when present, else the stand-in."""
    transform = torchvision.transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            return torchvision.datasets.CIFAR10(root, train=False, transform=transform,
                                                download=args.download)
    return SyntheticCIFAR10(train=False, transform=transform, size=n_images, seed=args.seed)


def step_1_print_model(moli: Moli) -> str:
    print(moli)                                 # the module tree with each layer's arguments
    shown = "Conv2d(3, 6, kernel_size=(3, 3), stride=(1, 1))"
    check(f"print(model) shows the layer as {shown}", shown in repr(moli))
    return repr(moli)


def pixels_by_hand(x: torch.Tensor, conv: nn.Conv2d, where) -> torch.Tensor:
    """out[:, :, i, j] for each (i, j) in ``where``: window of the zero-padded x times weight."""
    (s, _), (p, _), (k, _) = conv.stride, conv.padding, conv.kernel_size
    padded = F.pad(x, (p, p, p, p))                         # p zeros on every side of H and W
    return torch.stack([
        torch.einsum("nchw,ochw->no", padded[:, :, i * s:i * s + k, j * s:j * s + k],
                     conv.weight) + conv.bias               # (N, out): window (N, in, k, k)
        for i, j in where], dim=-1)                         # (N, out, len(where))


def step_2_window_by_hand(conv: nn.Conv2d, images: torch.Tensor) -> float:
    (s, _), (p, _), (k, _) = conv.stride, conv.padding, conv.kernel_size
    n, _, h, w = images.shape
    size = ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)      # the size formula
    out = conv(images)                                               # (N, out, H', W')
    setting = f"stride={s}, padding={p}"
    expected = (n, conv.out_channels, *size)
    check(f"{setting}: output (N, {conv.out_channels}, {size[0]}, {size[1]}), side "
          f"floor(({h} + 2p - {k}) / s) + 1", tuple(out.shape) == expected,
          detail=str(tuple(out.shape)))
    last_i, last_j = size[0] - 1, size[1] - 1
    where = [(0, 0), (0, last_j), (last_i, 0), (last_i, last_j), (last_i // 2, last_j // 2)]
    got = torch.stack([out[:, :, i, j] for i, j in where], dim=-1)   # (N, out, 5)
    same = F.conv2d(images, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    print(f"{setting}: F.conv2d(x, conv.weight, conv.bias, ...), which nn.Conv2d calls, "
          f"differs by {(out - same).abs().max().item():.1g}")
    # CPU: float32 sums of 27 products (|x| <= 1, |w| < 0.2) in another order, ~1e-7. CUDA
    # convolutions may round inputs to TF32 (10-bit mantissa): up to ~1e-3 on such a sum. A
    # wrong window (padding, stride, a flipped kernel) is off by ~0.1.
    atol = 1e-5 if images.device.type == "cpu" else 3e-3
    return check(f"{setting}: conv(x) at the 4 corners and the centre == window * weight + "
                 "bias, by hand", got, pixels_by_hand(images, conv, where), atol=atol)


def step_3_parameters(conv: nn.Conv2d) -> int:
    count = sum(p.numel() for p in conv.parameters())
    print(f"weight {tuple(conv.weight.shape)} and a bias of 6: {count} numbers")
    check("weight shape == (out, in, k, k) == (6, 3, 3, 3)",
          tuple(conv.weight.shape) == (6, 3, 3, 3), detail=str(tuple(conv.weight.shape)))
    check("parameter count == 6*3*3*3 weights + 6 biases = 168", count == 6 * 3 * 3 * 3 + 6,
          detail=f"{count}")
    bound = 1 / math.sqrt(3 * 3 * 3)                               # fan_in = in * k * k
    largest = max(conv.weight.abs().max().item(), conv.bias.abs().max().item())
    check("default init: every weight and bias within 1/sqrt(fan_in)", largest <= bound,
          detail=f"max |value| {largest:.4f} <= {bound:.4f}")
    return count


def to_unit_range(t: torch.Tensor) -> torch.Tensor:
    """Min-max scale to [0, 1], so conv outputs (any sign) can be shown as images."""
    return (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)


def to_pictures(output: torch.Tensor) -> torch.Tensor:
    """(B, 6, H, W) -> (2B, 3, H, W): each group of 3 channels becomes one RGB picture."""
    return output.reshape(-1, 3, *output.shape[-2:])


def step_4_over_the_loader(moli: Moli, loader, device, max_steps: int, out_dir) -> dict:
    shapes_ok = regrouped = True
    with SummaryWriter(str(output_folder(out_dir, "tb"))) as writer:
        for step, (imgs, _) in enumerate(loader):         # imgs: (B, 3, 32, 32)
            if step == max_steps:
                break
            imgs = imgs.to(device)
            with torch.no_grad():                         # only looking: no graph needed
                output = moli(imgs)                       # (B, 6, 30, 30)
            as_rgb = to_pictures(output)                  # (2B, 3, 30, 30)
            writer.add_images("input", imgs, step)
            writer.add_images("output", to_unit_range(as_rgb), step)
            b = imgs.shape[0]
            shapes_ok &= tuple(output.shape) == (b, 6, (32 - 3) // 1 + 1, (32 - 3) // 1 + 1)
            regrouped &= torch.equal(as_rgb[0::2], output[:, :3]) and torch.equal(
                as_rgb[1::2], output[:, 3:])
    steps = min(step + 1, max_steps)
    print(f"{steps} batches logged to {out_dir / 'tb'}: input {tuple(imgs.shape)} -> output "
          f"{tuple(output.shape)} -> as pictures {tuple(as_rgb.shape)}")
    check(f"all {steps} batches: output (B, 6, 30, 30) = floor((32 - 3) / 1) + 1", shapes_ok)
    check(f"all {steps} batches: picture 2i == channels 0-2 of image i, 2i+1 == channels 3-5",
          regrouped)
    return {"steps": steps, "out_shape": tuple(output.shape)}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    moli = Moli().to(device)
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])
    results = {"repr": step_1_print_model(moli)}
    first_batch = next(iter(loader))[0].to(device)
    results["window_error"] = step_2_window_by_hand(moli.conv1, first_batch)
    strided = nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1).to(device)   # 32 -> 16
    results["window_error_strided"] = step_2_window_by_hand(strided, first_batch)
    results["n_params"] = step_3_parameters(moli.conv1)
    results.update(step_4_over_the_loader(moli, loader, device, cfg["max_steps"], args.out_dir))
    print(f"summary: Conv2d(3, 6, 3) has {results['n_params']} parameters; "
          f"{results['steps']} batches -> {results['out_shape']}")
    return results


if __name__ == "__main__":
    main()
