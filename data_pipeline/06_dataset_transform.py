"""CIFAR-10 with a transform pipeline, previewed in TensorBoard and as a PNG grid.

``torchvision.datasets.CIFAR10(root, train, transform, download)`` gives ``(image, label)``
pairs; the ``transform`` turns each PIL image into what a model eats. Without the real data
(``--download`` fetches it) the built-in CIFAR-shaped stand-in is used: same API, no download.

Claims proven:
  1. With ``transform=ToTensor()`` item ``i`` is a float32 ``(3, 32, 32)`` tensor in [0, 1]
     equal to the raw bytes ``dataset.data[i]`` (HWC) moved channels-first and divided by 255,
     with label ``dataset.targets[i]`` in 0..9.
  2. The PNG grid of the first N images holds each image's exact bytes in its tile.
  3. Normalisation statistics come from the TRAIN split only: the mean given to
     ``Normalize`` equals the train images' channel mean summed through a ``DataLoader`` (a
     second, independent way). The same ``Normalize`` is then applied to the test split: test
     item ``i`` equals ``(bytes / 255 - mean) / std`` with the train mean and std. Test
     statistics would leak the held-out data into training: so the test channel means come
     out near 0 but not exactly 0.

The first N test images are logged with ``add_image("test_set", img, i)`` for TensorBoard.

Run:  python data_pipeline/06_dataset_transform.py        (about 3 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/06_dataset_transform/logs
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from torchvision.utils import save_image

from torchnotes import check, make_parser, output_file, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    fresh_folder,
    torchvision_errors,
    use_real,
)

FULL = dict(train_size=10_000, test_size=2_000, items=100, preview=10)   # stand-in sizes
SMOKE = dict(train_size=256, test_size=128, items=8, preview=4)
# Real CIFAR-10 is always the whole split: 50000 train, 10000 test images.


def step_1_to_tensor_items(test_set, n: int) -> int:
    img, label = test_set[0]
    print(f"test_set[0] = (tensor {tuple(img.shape)} {img.dtype}, label {label} = "
          f"{test_set.classes[label]!r}); {len(test_set)} images, classes {test_set.classes}")
    errors, wrong = [], 0
    for i in range(min(n, len(test_set))):
        img, label = test_set[i]
        raw = torch.from_numpy(test_set.data[i]).permute(2, 0, 1).float() / 255   # (3, 32, 32)
        if (img.shape, img.dtype, label) != ((3, 32, 32), torch.float32, test_set.targets[i]):
            wrong += 1
        else:
            errors.append((img - raw).abs().max().item())
    check(f"items 0..{min(n, len(test_set)) - 1} are float32 (3, 32, 32) with label == targets[i]",
          wrong == 0 and 0 <= min(test_set.targets) and max(test_set.targets) <= 9,
          detail=f"{wrong} wrong; labels in {min(test_set.targets)}..{max(test_set.targets)}")
    # Both divide the same byte by 255 in float32: equal up to one rounding.
    check("each item == its raw bytes (HWC) moved channels-first / 255", max(errors), 0.0,
          atol=1e-7)
    return min(n, len(test_set))


def step_2_preview(test_set, log_dir, grid_path, n: int) -> tuple:
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for i in range(n):
            img, _label = test_set[i]
            writer.add_image("test_set", img, i)                      # CHW float in [0, 1]
    print(f"TensorBoard: {n} images under tag 'test_set' in {log_dir}")
    batch = torch.stack([test_set[i][0] for i in range(n)])          # (n, 3, 32, 32)
    save_image(batch, grid_path, nrow=n, padding=2)                 # one row
    grid = np.array(Image.open(grid_path).convert("RGB"))
    tiles = [grid[2:34, 2 + k * 34:34 + k * 34] for k in range(n)]  # 32 px + 2 px border
    same = all(np.array_equal(tile, test_set.data[k]) for k, tile in enumerate(tiles))
    print(f"PNG grid {grid_path.name}: {grid.shape[1]}x{grid.shape[0]}, labels "
          f"{[test_set.classes[test_set.targets[k]] for k in range(n)]}")
    check(f"the grid is {n} tiles of 32x32, tile k == image k's bytes",
          grid.shape == (36, n * 34 + 2, 3) and same)
    return grid.shape


def channel_stats(images: np.ndarray) -> tuple:
    """Per-channel mean and std in [0, 1] units of ``(N, H, W, 3)`` uint8 images."""
    pixels = images.reshape(-1, 3)                                   # (N * H * W, 3) uint8
    mean = pixels.mean(axis=0, dtype=np.float64) / 255               # float64 sums, per channel
    std = np.array([pixels[:, c].std(dtype=np.float64) for c in range(3)]) / 255
    return mean, std


def step_3_normalize_with_train_statistics(train_set, test_set, n: int) -> dict:
    # Statistics from the TRAIN split only: the test split stands for data never seen, and
    # anything computed from it (a mean, a std) would leak it into training.
    mean, std = channel_stats(train_set.data)
    print(f"train per-channel mean {np.round(mean, 4).tolist()}, std "
          f"{np.round(std, 4).tolist()} (over {len(train_set.data)} images)")
    train_set.transform = transforms.ToTensor()                      # what the model would see
    total = torch.zeros(3, dtype=torch.float64)
    for imgs, _ in DataLoader(train_set, batch_size=1000):           # (B, 3, 32, 32) float32
        total += imgs.sum(dim=(0, 2, 3), dtype=torch.float64)
    # Each float32 pixel is k / 255 within 3e-8; summed in float64, the means agree far below
    # 1e-6. Mixing the test split in moves the mean by ~4e-3 (smoke stand-in).
    check("the mean given to Normalize == the train images' channel mean through a DataLoader",
          mean, total / (len(train_set) * 32 * 32), atol=1e-6)
    normalize = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(mean.tolist(), std.tolist())])
    train_set.transform = normalize                                  # the same pipeline
    test_set.transform = normalize                                   # for both splits
    x = torch.stack([test_set[i][0] for i in range(n)])              # (n, 3, 32, 32)
    by_hand = (torch.from_numpy(test_set.data[:n]).double() / 255 - torch.from_numpy(mean)) \
        / torch.from_numpy(std)                                      # (n, 32, 32, 3) float64
    # float32 Normalize vs float64 by hand: values of a few units, float32 rounding ~1e-7 each.
    check("test item i == (bytes / 255 - train mean) / train std", x,
          by_hand.permute(0, 3, 1, 2), atol=1e-6)
    test_mean = test_set.data.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255
    test_means = torch.from_numpy((test_mean - mean) / std)          # mean of the normalised
    print(f"whole test split after Normalize: channel means "
          f"{test_means.numpy().round(4).tolist()}")
    check("test channel means are near 0 (same distribution) but not exactly 0 (no test data "
          "went into the statistics)", bool((test_means.abs() < 0.5).all()
                                            and (test_means.abs() > 1e-4).any()),
          detail=f"max |mean| {test_means.abs().max():.4f}")
    return {"mean": mean.tolist(), "std": std.tolist(), "test_means": test_means.tolist()}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # the data pipeline runs on the CPU
    cfg = SMOKE if args.smoke else FULL
    root = args.data_root or data_root()
    tf = transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        with torchvision_errors("CIFAR-10", root, args.download):
            train_set = torchvision.datasets.CIFAR10(root, train=True, transform=tf,
                                                     download=args.download)
            test_set = torchvision.datasets.CIFAR10(root, train=False, transform=tf,
                                                    download=args.download)
    else:
        train_set = SyntheticCIFAR10(train=True, transform=tf, size=cfg["train_size"],
                                     seed=args.seed)
        test_set = SyntheticCIFAR10(train=False, transform=tf, size=cfg["test_size"],
                                    seed=args.seed)
    print(f"train: {len(train_set)} images, test: {len(test_set)} images")
    log_dir = fresh_folder(args.out_dir / "logs")              # replaces an earlier run's logs
    grid_path = output_file(args.out_dir, "test_set_grid.png")  # a preview: replaced each run
    results = {
        "sizes": (len(train_set), len(test_set)),
        "items_checked": step_1_to_tensor_items(test_set, cfg["items"]),
        "grid_shape": step_2_preview(test_set, log_dir, grid_path, cfg["preview"]),
        "stats": step_3_normalize_with_train_statistics(train_set, test_set, cfg["items"]),
        "log_dir": log_dir,
    }
    print(f"summary: {len(train_set)} train / {len(test_set)} test images; preview in {log_dir}")
    return results


if __name__ == "__main__":
    main()
