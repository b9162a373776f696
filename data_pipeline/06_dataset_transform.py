"""CIFAR-10 with a transform pipeline, previewed in TensorBoard and as a PNG grid.

``torchvision.datasets.CIFAR10(root, train, transform, download)`` gives ``(image, label)``
pairs; the ``transform`` turns each PIL image into what a model eats. Without the real data
(``--download`` fetches it) the built-in CIFAR-shaped stand-in is used: same API, no download.

Claims proven:
  1. The train and test splits have the expected sizes, the same ten class names, and
     integer labels in 0..9.
  2. With ``transform=ToTensor()`` item ``i`` is a float32 ``(3, 32, 32)`` tensor in [0, 1]
     equal to the raw bytes ``dataset.data[i]`` (HWC) moved channels-first and divided by 255.
  3. ``Normalize`` with the data's own per-channel mean and std (computed from the raw bytes
     in float64) gives every channel mean 0 and std 1 over those images.
  4. The first N images logged with ``add_image("test_set", img, i)`` read back from the
     event file at steps 0..N-1.
  5. The PNG grid of the first N images holds each image in its tile.

Run:  python data_pipeline/06_dataset_transform.py        (about 3 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/06_dataset_transform/logs
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from torchvision.utils import save_image

from torchnotes import check, make_parser, start
from torchnotes.datasets import SyntheticCIFAR10, add_data_args, cifar10, data_source, fresh_folder

FULL = dict(train_size=None, test_size=None, items=100, stats_images=2000, preview=10)
SMOKE = dict(train_size=256, test_size=128, items=16, stats_images=128, preview=4)
# None = the whole split: 50000/10000 for real CIFAR-10, 10000/2000 for the stand-in.


def step_1_splits(train, test, sizes: tuple) -> dict:
    print(f"train: {len(train)} images, test: {len(test)} images")
    print(f"classes: {train.classes}")
    whole = (10_000, 2_000) if isinstance(train, SyntheticCIFAR10) else (50_000, 10_000)
    expected = tuple(w if s is None else min(s, w) for s, w in zip(sizes, whole, strict=True))
    check("the splits have the expected sizes", (len(train), len(test)) == expected,
          detail=f"{(len(train), len(test))} == {expected}")
    check("both splits have the same ten class names",
          len(train.classes) == 10 and train.classes == test.classes)
    labels = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)])
    check("labels are integers in 0..9", labels.dtype.kind == "i"
          and labels.min() >= 0 and labels.max() <= 9,
          detail=f"min {labels.min()}, max {labels.max()}")
    counts = np.bincount(np.asarray(test.targets), minlength=10)
    print(f"test labels per class: {counts.tolist()}")
    return {"train": len(train), "test": len(test), "test_counts": counts.tolist()}


def step_2_to_tensor_items(test, n: int) -> int:
    img, label = test[0]
    print(f"test[0] = (tensor {tuple(img.shape)} {img.dtype}, label {label} = "
          f"{test.classes[label]!r})")
    worst = 0.0
    for i in range(min(n, len(test))):
        img, label = test[i]
        raw = torch.from_numpy(test.data[i]).permute(2, 0, 1).float() / 255   # (3, 32, 32)
        ok = (img.shape == (3, 32, 32) and img.dtype == torch.float32
              and label == test.targets[i])
        worst = max(worst, (img - raw).abs().max().item()) if ok else math.inf
    # Both divide the same byte by 255 in float32: equal up to one rounding.
    check(f"items 0..{min(n, len(test)) - 1}: float32 (3, 32, 32) == raw bytes / 255, "
          f"labels == targets", worst, 0.0, atol=1e-7)
    return min(n, len(test))


def step_3_normalize_with_data_stats(test, m: int) -> dict:
    raw = test.data[:m].astype(np.float64) / 255                     # (m, 32, 32, 3)
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    print(f"per-channel mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()} "
          f"(over {m} images)")
    test.transform = transforms.Compose([transforms.ToTensor(),
                                         transforms.Normalize(mean.tolist(), std.tolist())])
    x = torch.stack([test[i][0] for i in range(m)])                   # (m, 3, 32, 32)
    got = torch.stack([x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), correction=0)])
    # float32 statistics over m * 1024 values per channel, which PyTorch sums pairwise: the
    # error stays ~1e-7 (measured 7e-8 on the stand-in); 1e-5 leaves a wide margin.
    check("after Normalize with the data's own mean/std: channel means 0, stds 1", got,
          torch.tensor([[0.0] * 3, [1.0] * 3]), atol=1e-5)
    test.transform = transforms.ToTensor()                            # back for the preview
    return {"mean": mean.tolist(), "std": std.tolist()}


def step_4_tensorboard_preview(test, log_dir: Path, n: int) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for i in range(n):
            img, _label = test[i]
            writer.add_image("test_set", img, i)                      # CHW float in [0, 1]
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})   # 0 = keep every image
    acc.Reload()
    steps = [e.step for e in acc.Images("test_set")]
    print(f"TensorBoard 'test_set': {len(steps)} images at steps {steps}")
    check(f"'test_set' reads back {n} images at steps 0..{n - 1}", steps == list(range(n)))
    return steps


def step_5_png_grid(test, path: Path, n: int) -> tuple:
    batch = torch.stack([test[i][0] for i in range(n)])               # (n, 3, 32, 32)
    save_image(batch, path, nrow=n, padding=2)                       # one row
    grid = np.array(Image.open(path).convert("RGB"))
    tiles = [grid[2:34, 2 + k * 34:34 + k * 34] for k in range(n)]   # 32 px + 2 px border
    same = all(np.array_equal(tile, test.data[k]) for k, tile in enumerate(tiles))
    print(f"PNG grid {path.name}: {grid.shape[1]}x{grid.shape[0]}, labels "
          f"{[test.classes[test.targets[k]] for k in range(n)]}")
    check(f"the grid is {n} tiles of 32x32, tile k == image k (uint8 round trip)",
          grid.shape == (36, n * 34 + 2, 3) and same)
    return grid.shape


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # the data pipeline runs on the CPU
    cfg = SMOKE if args.smoke else FULL
    common = dict(transform=transforms.ToTensor(), source=data_source(args),
                  root=args.data_root, seed=args.seed, download=args.download)
    train = cifar10(train=True, size=cfg["train_size"], **common)
    test = cifar10(train=False, size=cfg["test_size"], **common)
    log_dir = fresh_folder(args.out_dir / "logs")              # replaces an earlier run's logs
    results = {
        "splits": step_1_splits(train, test, (cfg["train_size"], cfg["test_size"])),
        "items_checked": step_2_to_tensor_items(test, cfg["items"]),
        "stats": step_3_normalize_with_data_stats(test, min(cfg["stats_images"], len(test))),
        "preview_steps": step_4_tensorboard_preview(test, log_dir, cfg["preview"]),
        "grid_shape": step_5_png_grid(test, args.out_dir / "test_set_grid.png", cfg["preview"]),
    }
    results["log_dir"] = log_dir
    print(f"summary: {len(train)} train / {len(test)} test images; preview in {log_dir}")
    return results


if __name__ == "__main__":
    main()
