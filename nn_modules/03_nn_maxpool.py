"""MaxPool2d: the output-size formula, ceil_mode, and max pooling rebuilt from unfold.

Max pooling slides a ``k x k`` window with stride ``s`` (default ``s = k``) and keeps each
window's largest value. ``ceil_mode=False`` drops a last window that would hang over the edge;
``ceil_mode=True`` keeps it (it sees fewer values), so the output can be one larger.

    out = floor((n + 2p - k) / s) + 1          ceil_mode=False
    out = ceil((n + 2p - k) / s) + 1           ceil_mode=True, minus 1 if the last window
                                               would start past the input plus left padding

Claims proven:
  1. The spec's 5x5 example pools to [[2]] (floor) and [[2, 3], [5, 1]] (ceil), as the hand
     implementation says.
  2. The formula gives torch's output size for every size 5..13, kernel 2-3, stride 1-3,
     padding 0-1, both ceil modes.
  3. ``F.max_pool2d`` equals an ``unfold``-based hand implementation (windows padded with
     -inf so a partial ceil-mode window only sees real values), for several settings.
  4. On 32x32 images, ``MaxPool2d(3, ceil_mode=True)`` gives 11x11 and ``False`` gives 10x10.
  The batch and its pooled version are written to TensorBoard (``--out-dir``/tb) and a PNG grid.

Run:  python nn_modules/03_nn_maxpool.py        (about 1 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/03_nn_maxpool/tb
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_images=64, random_batch=16)
SMOKE = dict(n_images=8, random_batch=2)

SPEC_INPUT = [[1, 2, 0, 3, 1], [0, 1, 2, 3, 1], [1, 2, 1, 0, 0], [5, 2, 3, 1, 1], [2, 1, 0, 1, 1]]
SPEC_POOLED = {False: [[2]], True: [[2, 3], [5, 1]]}   # the spec's answers, by ceil_mode


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


def step_1_spec_example(device: torch.device) -> dict:
    x = torch.tensor(SPEC_INPUT, dtype=torch.float32, device=device).reshape(1, 1, 5, 5)
    out = {}
    for ceil in (False, True):
        got = nn.MaxPool2d(kernel_size=3, ceil_mode=ceil)(x)
        print(f"ceil_mode={ceil!s:<5}: MaxPool2d(3) of the 5x5 -> {got[0, 0].int().tolist()}")
        check(f"ceil_mode={ceil}: torch == hand max pooling on the spec's 5x5", got,
              maxpool2d_by_hand(x, 3, ceil_mode=ceil))
        check(f"ceil_mode={ceil}: the result is the spec's {SPEC_POOLED[ceil]}", got[0, 0],
              torch.tensor(SPEC_POOLED[ceil]))
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
    settings = [(2, 2, 0), (3, 2, 1), (3, 3, 0), (3, 1, 1), (2, 3, 0)]   # (k, s, p)
    for (k, s, p), ceil in itertools.product(settings, (False, True)):
        check(f"k={k} s={s} p={p} ceil={ceil!s:<5}: F.max_pool2d == unfold hand version",
              F.max_pool2d(x, k, s, p, ceil_mode=ceil), maxpool2d_by_hand(x, k, s, p, ceil))
    return len(settings) * 2


def step_4_pool_images(images: torch.Tensor) -> torch.Tensor:
    pooled = nn.MaxPool2d(kernel_size=3, ceil_mode=True)(images)         # (N, 3, 11, 11)
    floor = nn.MaxPool2d(kernel_size=3, ceil_mode=False)(images)         # (N, 3, 10, 10)
    print(f"images {tuple(images.shape)} -> ceil {tuple(pooled.shape)}, "
          f"floor {tuple(floor.shape)}")
    n = images.shape[0]
    check("32x32 images, k=3: ceil_mode=True -> 11x11, False -> 10x10 (the formula)",
          pooled.shape == (n, 3, pool_out_size(32, 3, 3, ceil_mode=True), 11)
          and floor.shape == (n, 3, pool_out_size(32, 3, 3), 10))
    return pooled


def step_5_write_visuals(images: torch.Tensor, pooled: torch.Tensor, out_dir) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(out_dir / "tb")) as writer:
        writer.add_images("input", images, 0)                # (N, 3, 32, 32)
        writer.add_images("maxpool_ceil", pooled, 0)         # (N, 3, 11, 11): blockier
    k = min(16, images.shape[0])
    big = F.interpolate(pooled[:k], size=images.shape[-2:], mode="nearest")  # for the grid
    png = out_dir / "maxpool_grid.png"                       # regenerated on every run
    save_image(torch.cat([images[:k], big]), png, nrow=k)    # rows: input, pooled
    print(f"wrote TensorBoard images to {out_dir / 'tb'} and {png}")
    return str(png)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "spec_example": step_1_spec_example(device),
        "sizes_tried": step_2_output_size_formula(device),
        "hand_settings": step_3_hand_equals_torch(device, cfg["random_batch"]),
    }
    images = cifar10_batch(args, cfg["n_images"], device=device)[0]
    pooled = step_4_pool_images(images)
    results["pooled_shape"] = tuple(pooled.shape)
    results["png"] = step_5_write_visuals(images.cpu(), pooled.cpu(), args.out_dir)
    print(f"summary: {results['sizes_tried']} output sizes and {results['hand_settings']} "
          f"pooling settings agree with the hand versions")
    return results


if __name__ == "__main__":
    main()
