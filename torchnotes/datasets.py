"""Datasets for the notes: the real ones when present, learnable stand-ins when not.

The stand-ins are generated from a seed, need no download, and are *learnable* (a small CNN
reaches high accuracy on them, unlike random noise). They mirror the torchvision API of the
real dataset they replace (``.data``, ``.targets``, ``.classes``, ``transform``), so the code
that reads them is the code that reads the real thing.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .cli import NoteError
from .curriculum import REPO_ROOT

DATA_ENV_VAR = "TORCHNOTES_DATA"


def data_root() -> Path:
    """Where real datasets live: ``$TORCHNOTES_DATA`` or the repo's ``data/`` folder."""
    return Path(os.environ.get(DATA_ENV_VAR) or REPO_ROOT / "data")


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--data auto|real|synthetic``, ``--data-root`` and ``--download`` to a parser."""
    parser.add_argument("--data", choices=("auto", "real", "synthetic"), default="auto",
                        help="auto: the real dataset if it is on disk, else the built-in "
                             "stand-in; --smoke always uses the stand-in")
    parser.add_argument("--data-root", type=Path, default=None,
                        help=f"folder holding real datasets (default: ${DATA_ENV_VAR} or data/)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the real dataset with torchvision if it is missing")
    return parser


def data_source(args: argparse.Namespace) -> str:
    """The source a run uses: smoke runs always use the stand-in, whatever --data says."""
    return "synthetic" if getattr(args, "smoke", False) else args.data

# ---------------------------------------------------------------------------------------------
# CIFAR-shaped stand-in: 3x32x32 RGB, ten named classes of shapes and patterns
# ---------------------------------------------------------------------------------------------

SHAPE_CLASSES = ("disc", "ring", "square", "diamond", "triangle",
                 "cross", "h_stripes", "v_stripes", "checker", "dots")


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue/saturation/value in [0,1] -> (N, 3) RGB in [0,1]."""
    k = torch.stack([torch.full_like(h, n) for n in (5.0, 3.0, 1.0)], dim=1)  # (N, 3)
    k = (k + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def _shape_masks(labels: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """(N,) class ids -> (N, size, size) anti-aliased masks in [0,1] of each class's shape."""
    n = labels.numel()
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")                      # (S, S)

    def u(lo, hi):                                                              # (N, 1, 1)
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    r = u(size * 0.20, size * 0.34)                                             # radius
    cx, cy = u(0.0, 1.0) * (size - 1 - 2 * r) + r, u(0.0, 1.0) * (size - 1 - 2 * r) + r
    angle = u(-0.2, 0.2)                                                        # rotation
    period, phase = u(5.0, 8.0), u(0.0, 2 * math.pi)
    masks = torch.empty(n, size, size)
    for k in range(len(SHAPE_CLASSES)):
        i = (labels == k).nonzero().flatten()
        if i.numel() == 0:
            continue
        r_, p_, ph = r[i], period[i], phase[i]
        dx0, dy0 = xx - cx[i], yy - cy[i]                                       # (n_k, S, S)
        c, s = torch.cos(angle[i]), torch.sin(angle[i])
        dx, dy = dx0 * c + dy0 * s, -dx0 * s + dy0 * c
        d = torch.sqrt(dx**2 + dy**2)
        wave_x = torch.sin(2 * math.pi * xx / p_ + ph)
        wave_y = torch.sin(2 * math.pi * yy / p_ + ph)
        inside = {  # a signed value: > 0 inside the shape, < 0 outside (about pixels)
            "disc": r_ - d,
            "ring": r_ * 0.28 - (d - r_ * 0.72).abs(),
            "square": r_ * 0.85 - torch.maximum(dx.abs(), dy.abs()),
            "diamond": r_ * 1.15 - (dx.abs() + dy.abs()),
            "triangle": torch.minimum(torch.minimum(r_ * 0.8 - dy, dy + r_),
                                      (dy + r_) * 0.6 - dx.abs()),
            "cross": torch.maximum(torch.minimum(r_ * 0.3 - dx.abs(), r_ - dy.abs()),
                                   torch.minimum(r_ * 0.3 - dy.abs(), r_ - dx.abs())),
            "h_stripes": 2.0 * wave_y.expand_as(d),
            "v_stripes": 2.0 * wave_x.expand_as(d),
            "checker": 3.0 * wave_x * wave_y,
            "dots": p_ * 0.22 - torch.sqrt(((xx + ph) % p_ - p_ / 2) ** 2
                                           + ((yy + ph) % p_ - p_ / 2) ** 2),
        }[SHAPE_CLASSES[k]]
        masks[i] = (inside * 1.5).clamp(-0.5, 0.5) + 0.5
    return masks


def make_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stand-in images: ``(uint8 array (n, size, size, 3), int64 labels (n,))``.

    Each class is a shape or pattern; its colour is random with a class-dependent hue bias
    (neighbouring classes overlap, so the shape is needed); background, position, scale,
    rotation and pixel noise are random. Deterministic in ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for start in range(0, n, 4096):                        # chunks keep memory small
        m = min(4096, n - start)
        y = torch.randint(0, len(SHAPE_CLASSES), (m,), generator=g)
        mask = _shape_masks(y, g, size)[:, :, :, None]     # (m, S, S, 1)
        hue = (y.float() / len(SHAPE_CLASSES) + 0.12 * torch.randn(m, generator=g)) % 1.0
        fg = _hsv_to_rgb(hue, 0.5 + 0.5 * torch.rand(m, generator=g),
                         0.65 + 0.35 * torch.rand(m, generator=g))          # (m, 3)
        bg = _hsv_to_rgb(torch.rand(m, generator=g), 0.4 * torch.rand(m, generator=g),
                         0.35 * torch.rand(m, generator=g))                  # (m, 3), dark
        light = torch.rand(m, generator=g) < 0.3           # some images: light background
        bg[light] = 1.0 - bg[light] * 0.5
        fg[light] = fg[light] * 0.6
        img = bg[:, None, None, :] * (1 - mask) + fg[:, None, None, :] * mask
        img = img + 0.06 * torch.randn(m, size, size, 3, generator=g)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(y)
    return torch.cat(images).numpy(), torch.cat(labels).numpy()


class SyntheticCIFAR10(Dataset):
    """A CIFAR-10-shaped stand-in with the same API as ``torchvision.datasets.CIFAR10``.

    ``data`` is uint8 ``(N, 32, 32, 3)``, ``targets`` a list of ints, ``classes`` ten names;
    ``__getitem__`` returns ``(PIL image, label)`` passed through ``transform``. The train and
    test splits are drawn from different seeds, so the test split is really held out.
    """

    def __init__(self, train: bool = True, transform=None, target_transform=None,
                 size: int | None = None, seed: int = 0):
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        n = size if size is not None else (10_000 if train else 2_000)
        if n <= 0:
            raise ValueError(f"size={n}: a dataset needs at least one image")
        self.data, labels = make_shapes(n, seed=2 * seed + (0 if train else 1))
        self.targets = labels.tolist()
        self.classes = list(SHAPE_CLASSES)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float ``(N, 3, 32, 32)`` in [0,1] and labels ``(N,)``, no transform."""
        x = torch.from_numpy(self.data).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.tensor(self.targets)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"SyntheticCIFAR10(split={split}, size={len(self)}, classes={len(self.classes)})"


def _has_real_cifar10(root: Path) -> bool:
    return (Path(root) / "cifar-10-batches-py" / "batches.meta").is_file()


def cifar10(train: bool = True, transform=None, *, source: str = "auto",
            root: str | Path | None = None, size: int | None = None, seed: int = 0,
            download: bool = False, verbose: bool = True):
    """CIFAR-10 when it is under ``root`` (or ``download=True``), else the stand-in.

    ``source``: ``auto`` (real if present, else stand-in), ``real`` or ``synthetic``.
    ``size`` caps the number of images (both sources), so smoke runs stay small.
    """
    if source not in ("auto", "real", "synthetic"):
        raise NoteError(f"--data {source}: expected auto, real or synthetic")
    root = Path(root) if root is not None else data_root()
    use_real = source == "real" or (source == "auto" and (_has_real_cifar10(root) or download))
    if use_real:
        if not _has_real_cifar10(root) and not download:
            raise NoteError(
                f"--data real: CIFAR-10 is not under {root}/cifar-10-batches-py. Fetch it with "
                f"--download (about 170 MB), or use --data synthetic for the built-in stand-in.")
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(root), train=train, transform=transform, download=download)
        except Exception as err:  # network errors come in many types; all mean the same here
            raise NoteError(
                f"could not download CIFAR-10 into {root}: {err}. Without internet, use "
                f"--data synthetic; see data/README.md for fetching it by hand.") from None
        if size is not None and size < len(ds):
            ds.data, ds.targets = ds.data[:size], ds.targets[:size]
        if verbose:
            print(f"data: real CIFAR-10 from {root} ({'train' if train else 'test'}, "
                  f"{len(ds)} images)")
        return ds
    ds = SyntheticCIFAR10(train=train, transform=transform, size=size, seed=seed)
    if verbose:
        print(f"data: built-in CIFAR-shaped stand-in ({len(ds)} {'train' if train else 'test'} "
              f"images, no download); for real CIFAR-10 add --download or see data/README.md")
    return ds
