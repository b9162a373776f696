"""MaxPool2d: ceil_mode, the output-size formula, unfold by hand, and CIFAR-10 into TensorBoard.

Max pooling slides a ``k x k`` window with stride ``s`` (default ``s = k``) and keeps each
window's largest value. ``ceil_mode=False`` drops a last window that would hang over the edge;
``ceil_mode=True`` keeps it (it sees fewer values), so the output can be one larger.

    out = floor((n + 2p - k) / s) + 1          ceil_mode=False
    out = ceil((n + 2p - k) / s) + 1           ceil_mode=True, minus 1 if the last window
                                               would start past the input plus left padding

Claims proven:
  1. A 5x5 example pools (k=3) to [[2]] with floor and [[2, 3], [5, 1]] with ceil_mode=True:
     the maxima of its windows, worked out by hand; the unfold version agrees.
  2. The formula gives torch's output size for every size 5..13, kernel 2-3, stride 1-3,
     padding 0-1, both ceil modes.
  3. ``F.max_pool2d`` equals an ``unfold``-based hand implementation (windows padded with
     -inf so a partial ceil-mode window only sees real values), for several settings.
  4. Over every batch of the loader, a Module holding ``MaxPool2d(3, ceil_mode=True)`` turns
     32x32 images into 11x11 (the formula; floor mode would give 10x10), and every pooled
     value is one of its window's pixels (pooling picks, it never blends).
  Each batch and its pooled version go to TensorBoard at that batch's step (``--out-dir``/tb).

Run:  python nn_modules/03_nn_maxpool.py        (about 3 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/03_nn_maxpool/tb
"""

from __future__ import annotations

import itertools
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

FULL = dict(n_images=640, batch_size=64, max_steps=10, random_batch=16)
SMOKE = dict(n_images=64, batch_size=16, max_steps=4, random_batch=2)

EXAMPLE = [[1, 2, 0, 3, 1], [0, 1, 2, 3, 1], [1, 2, 1, 0, 0], [5, 2, 3, 1, 1], [2, 1, 0, 1, 1]]
# Worked by hand, k=3, stride 3: floor keeps only the top-left window (max 2); ceil_mode also
# keeps the partial windows on the right (max 3), bottom (max 5) and corner (max 1).
POOLED_BY_HAND = {False: [[2]], True: [[2, 3], [5, 1]]}


class Moli(nn.Module):
    """One pooling layer; ``ceil_mode=True`` keeps the partial windows at the edges."""

    def __init__(self):
        super().__init__()
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:     # (N, C, 32, 32) -> (N, C, 11, 11)
        return self.maxpool1(x)


def load_test_set(args, n_images: int):
    """CIFAR-10's test split as tensors: the real files when present, else the stand-in."""
    transform = torchvision.transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            return torchvision.datasets.CIFAR10(root, train=False, transform=transform,
                                                download=args.download)
    return SyntheticCIFAR10(train=False, transform=transform, size=n_images, seed=args.seed)


def pool_out_size(n: int, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> int:
    """Output length of max pooling along one axis of length ``n`` (PyTorch's rule)."""
    if ceil_mode:
        out = math.ceil((n + 2 * p - k) / s) + 1
        if (out - 1) * s >= n + p:             # the last window would start in the padding
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


def maxpool2d_by_hand(x: torch.Tensor, k: int, s: int | None = None, p: int = 0,
                      ceil_mode: bool = False) -> torch.Tensor:
    """Max pooling of a float (N, C, H, W) tensor via ``Tensor.unfold`` windows."""
    s = s or k
    _, _, h, w = x.shape
    oh, ow = pool_out_size(h, k, s, p, ceil_mode), pool_out_size(w, k, s, p, ceil_mode)
    # Pad with -inf, so padding never wins a max; pad far enough for the last ceil window.
    bottom, right = max(p, (oh - 1) * s + k - h - p), max(p, (ow - 1) * s + k - w - p)
    xp = F.pad(x, (p, right, p, bottom), value=-math.inf)
    windows = xp.unfold(2, k, s).unfold(3, k, s)          # (N, C, oh', ow', k, k)
    return windows[:, :, :oh, :ow].amax(dim=(-2, -1))     # (N, C, oh, ow)


def step_1_worked_example(device: torch.device) -> dict:
    x = torch.tensor(EXAMPLE, dtype=torch.float32, device=device).reshape(1, 1, 5, 5)
    out = {}
    for ceil in (False, True):
        got = nn.MaxPool2d(kernel_size=3, ceil_mode=ceil)(x)
        print(f"ceil_mode={ceil!s:<5}: MaxPool2d(3) of the 5x5 -> {got[0, 0].int().tolist()}")
        check(f"ceil_mode={ceil}: the result is {POOLED_BY_HAND[ceil]} (worked by hand)",
              got[0, 0], torch.tensor(POOLED_BY_HAND[ceil]))
        check(f"ceil_mode={ceil}: torch == unfold max pooling on the 5x5", got,
              maxpool2d_by_hand(x, 3, ceil_mode=ceil))
        out[f"ceil={ceil}"] = got[0, 0].tolist()
    return out


def step_2_output_size_formula(device: torch.device) -> int:
    mismatches, tried = [], 0
    for n, k, s, p, ceil in itertools.product(range(5, 14), (2, 3), (1, 2, 3), (0, 1),
                                              (False, True)):
        x = torch.zeros(1, 1, n, n, device=device)
        got = F.max_pool2d(x, k, s, p, ceil_mode=ceil).shape[-1]
        tried += 1
        if got != pool_out_size(n, k, s, p, ceil):
            mismatches.append((n, k, s, p, ceil, got))
    print(f"output-size formula tried on {tried} settings; e.g. n=7, k=2: floor "
          f"{pool_out_size(7, 2, 2)}, ceil {pool_out_size(7, 2, 2, ceil_mode=True)}")
    check(f"the formula gives torch's output size in all {tried} settings", not mismatches,
          detail=f"mismatches: {mismatches[:3]}" if mismatches else "0 mismatches")
    return tried


def step_3_hand_equals_torch(device: torch.device, random_batch: int) -> int:
    x = torch.randn(random_batch, 3, 13, 11, device=device)              # odd sizes on purpose
    settings = list(itertools.product([(2, 2, 0), (3, 2, 1), (3, 3, 0), (3, 1, 1), (2, 3, 0)],
                                      (False, True)))                    # ((k, s, p), ceil)
    got = torch.cat([F.max_pool2d(x, k, s, p, ceil_mode=c).flatten() for (k, s, p), c in settings])
    hand = torch.cat([maxpool2d_by_hand(x, k, s, p, c).flatten() for (k, s, p), c in settings])
    check(f"F.max_pool2d == unfold hand version in {len(settings)} (k, s, p, ceil) settings",
          got, hand)
    return len(settings)


def step_4_over_the_loader(moli: Moli, loader, device, max_steps: int, out_dir) -> tuple:
    shapes, picked = set(), True
    with SummaryWriter(str(output_folder(out_dir, "tb"))) as writer:
        for step, (imgs, _) in enumerate(loader):           # imgs: (B, 3, 32, 32)
            if step == max_steps:
                break
            imgs = imgs.to(device)
            pooled = moli(imgs)                             # (B, 3, 11, 11)
            writer.add_images("input", imgs, step)
            writer.add_images("maxpool_ceil", pooled, step)    # blockier: each pixel = a max
            shapes.add(tuple(pooled.shape[-2:]))
            # Each output must equal some pixel of the image it came from (per image, channel).
            pixels = imgs.flatten(2)                        # (B, 3, 1024)
            picked &= bool((pooled.flatten(2)[..., :, None] == pixels[..., None, :])
                           .any(-1).all())
    steps = min(step + 1, max_steps)
    side = pool_out_size(32, 3, 3, ceil_mode=True)
    print(f"{steps} batches logged to {out_dir / 'tb'}; pooled sizes {shapes}; "
          f"floor mode would give {pool_out_size(32, 3, 3)}x{pool_out_size(32, 3, 3)}")
    check(f"all {steps} batches: 32x32 -> {side}x{side} with ceil_mode (the formula)",
          shapes == {(side, side)}, detail=str(shapes))
    check(f"all {steps} batches: every pooled value is a pixel of its own image and channel",
          picked)
    return steps, side


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "worked_example": step_1_worked_example(device),
        "sizes_tried": step_2_output_size_formula(device),
        "hand_settings": step_3_hand_equals_torch(device, cfg["random_batch"]),
    }
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])
    results["steps"], results["pooled_side"] = step_4_over_the_loader(
        Moli().to(device), loader, device, cfg["max_steps"], args.out_dir)
    print(f"summary: {results['sizes_tried']} output sizes and {results['hand_settings']} "
          f"pooling settings agree with the hand versions")
    return results


if __name__ == "__main__":
    main()
