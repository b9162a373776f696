"""nn.Linear on flattened CIFAR-10 images, and why the last batch breaks torch.flatten(x).

A fully connected layer needs each image as one vector: ``(B, 3, 32, 32)`` becomes
``(B, 3072)`` with ``nn.Flatten()`` (or ``torch.flatten(x, 1)``). ``torch.flatten(x)`` with no
start dimension merges the *batch* too: a batch of 64 becomes one vector of 64 * 3072 = 196608,
so the layer must be ``Linear(196608, 10)``, and it then fails on the loader's last batch,
which is shorter (10000 test images = 156 * 64 + 16). ``drop_last=True`` hides the short
batch; ``nn.Flatten`` fixes the cause: the layer's size no longer depends on the batch.

Claims proven:
  1. ``torch.flatten(x)`` + ``Linear(196608, 10)`` runs on every full batch and fails with a
     shape error on the last, partial batch.
  2. ``DataLoader(..., drop_last=True)`` skips that batch, so the same loop completes.
  3. ``nn.Flatten()`` keeps the batch dimension, ``(B, 3072)``, and ``Linear(3072, 10)``
     handles every batch, the short one included, with one (B, 10) row per image.
  4. ``nn.Linear(x)`` equals ``x @ W.T + b`` with W of shape (out, in) = (10, 3072);
     parameters 3072 * 10 + 10.

Run:  python nn_modules/06_nn_linear.py        (about 2 s after imports on a laptop CPU)
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from torchnotes import check, check_raises, make_parser, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

# Sizes leave a short last batch, like CIFAR-10's 10000 test images: 2000 = 31 * 64 + 16.
FULL = dict(n_images=2000, batch_size=64)
SMOKE = dict(n_images=80, batch_size=64)                    # one batch of 64, one of 16

# float32 dot products of length 3072: nn.Linear (one fused addmm) and `@` then `+` may sum
# in a different order, a few ulps; 1e-4 relative to the largest output covers that.
RTOL = 1e-4


def load_test_set(args, n_images: int):
    """CIFAR-10's test split as tensors: the real files when present, else the stand-in."""
    transform = torchvision.transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            return torchvision.datasets.CIFAR10(root, train=False, transform=transform,
                                                download=args.download)
    return SyntheticCIFAR10(train=False, transform=transform, size=n_images, seed=args.seed)


def flatten_everything_loop(loader, linear: nn.Linear, device, done: list) -> None:
    """The loop with torch.flatten(imgs): the whole batch becomes one input vector."""
    for imgs, _ in loader:
        output = linear(torch.flatten(imgs.to(device)))      # (B*3072,) -> (10,)
        done.append(output.shape)


def step_1_last_batch_breaks(loader, device, batch_size: int) -> int:
    linear = nn.Linear(batch_size * 3 * 32 * 32, 10).to(device)   # 196608 -> 10 for B = 64
    done: list = []
    check_raises("torch.flatten + Linear(B*3072, 10) fails on the loader's short last batch",
                 RuntimeError, flatten_everything_loop, loader, linear, device, done,
                 match="cannot be multiplied")
    print(f"{len(done)} full batches ran, then batch {len(done) + 1} of {len(loader)} "
          f"(the short one) failed")
    check("it failed on the last batch, after every full one", len(done) == len(loader) - 1,
          detail=f"{len(done)} of {len(loader)} ran")
    return len(done)


def step_2_drop_last(dataset, device, batch_size: int) -> int:
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=True)
    linear = nn.Linear(batch_size * 3 * 32 * 32, 10).to(device)
    done: list = []
    try:
        flatten_everything_loop(loader, linear, device, done)
        completed = True
    except RuntimeError:                                     # a short batch slipped through
        completed = False
    print(f"drop_last=True: {len(done)} batches of {batch_size}; the last "
          f"{len(dataset) % batch_size} images are never seen")
    check("drop_last=True: every batch has the full size, so the same loop completes",
          completed and len(done) == len(dataset) // batch_size, detail=f"{len(done)} batches")
    return len(done)


def step_3_flatten_keeps_batch(loader, linear: nn.Linear, device) -> list:
    flatten = nn.Flatten()                                   # (B, 3, 32, 32) -> (B, 3072)
    shapes = []
    for imgs, _ in loader:                                   # the short last batch included
        flat = flatten(imgs.to(device))
        shapes.append((imgs.shape[0], tuple(flat.shape), tuple(linear(flat).shape)))
    print(f"nn.Flatten + Linear(3072, 10), (B, flat, out): first {shapes[0]}, last {shapes[-1]}")
    check(f"all {len(shapes)} batches, short one included: (B, 3072) -> (B, 10)",
          all(f == (b, 3072) and o == (b, 10) for b, f, o in shapes),
          detail=f"batch sizes {shapes[0][0]} .. {shapes[-1][0]}")
    return shapes


def step_4_linear_formula(linear: nn.Linear, imgs: torch.Tensor) -> float:
    count = sum(p.numel() for p in linear.parameters())
    print(f"W {tuple(linear.weight.shape)} and a bias of 10: {count} numbers")
    check("parameter count == 3072*10 weights + 10 biases", count == 3072 * 10 + 10,
          detail=f"{count}")
    flat = nn.Flatten()(imgs)                                      # (B, 3072)
    out = linear(flat)                                             # (B, 10)
    hand = flat @ linear.weight.T + linear.bias                    # (B, in) @ (in, out) + (out,)
    return check("nn.Linear(x) == x @ W.T + b", out, hand, atol=1e-6, rtol=RTOL)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])     # last batch: len % 64
    linear = nn.Linear(3 * 32 * 32, 10).to(device)                 # 3072 -> 10
    results = {
        "full_batches_before_failure": step_1_last_batch_breaks(loader, device,
                                                                cfg["batch_size"]),
        "drop_last_batches": step_2_drop_last(dataset, device, cfg["batch_size"]),
        "flatten_shapes": step_3_flatten_keeps_batch(loader, linear, device),
    }
    with torch.no_grad():
        results["linear_error"] = step_4_linear_formula(linear, next(iter(loader))[0].to(device))
    print(f"summary: {len(loader)} batches; torch.flatten failed on the last, nn.Flatten ran all")
    return results


if __name__ == "__main__":
    main()
