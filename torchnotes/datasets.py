"""Datasets for the notes: the real ones when present, learnable stand-ins when not.

The stand-ins are generated from a seed, need no download, and are *learnable* (a small CNN
reaches high accuracy on them, unlike random noise). They mirror the torchvision API of the
real dataset they replace (``.data``, ``.targets``, ``.classes``, ``transform``), so the code
that reads them is the code that reads the real thing.

* CIFAR-10: :func:`cifar10` (real) or :class:`SyntheticCIFAR10` (shapes and patterns).
* MNIST: :func:`mnist` (real) or :class:`SyntheticMNIST` (digits drawn with Pillow's font).
* hymenoptera (ants vs bees): :func:`hymenoptera` returns the real image folder, or writes a
  stand-in of real JPEG files in the same layout under the run's ``--out-dir``.

Bad input (a missing or empty folder, no class subfolders, a file that is not an image) raises
:class:`~torchnotes.NoteError` naming the path, the expected layout and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, UnidentifiedImageError
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


@contextlib.contextmanager
def _one_thread():
    """Run torch on one CPU thread inside the block (the stand-in generators' small ops).

    Their tensors are small, so extra threads barely help on an idle machine and cost 10-30x
    when the cores are busy (threads spin waiting for each other). Results are identical.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stand-in images: ``(uint8 array (n, size, size, 3), int64 labels (n,))``.

    Each class is a shape or pattern; its colour is random with a class-dependent hue bias
    (neighbouring classes overlap, so the shape is needed); background, position, scale,
    rotation and pixel noise are random. Deterministic in ``seed``.
    """
    with _one_thread():
        return _make_shapes(n, seed, size)


def _make_shapes(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
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


class _StandIn(Dataset):
    """What the stand-ins share: a torchvision dataset's API over images made from a seed.

    Subclasses set ``classes`` and implement ``_generate(n, seed)`` (filling ``data`` and
    ``targets``) and ``_item(index)`` (returning ``(PIL image, int label)``).
    """

    classes: list[str]

    def __init__(self, train: bool = True, transform=None, target_transform=None,
                 size: int | None = None, seed: int = 0):
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        n = size if size is not None else (10_000 if train else 2_000)
        if n <= 0:
            raise ValueError(f"size={n}: a dataset needs at least one image")
        self._generate(n, seed=2 * seed + (0 if train else 1))   # the splits never overlap
        self.classes = list(self.classes)                          # this instance's own copy
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = self._item(index)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        name, count = type(self).__name__, len(self.classes)
        return f"{name}(split={split}, size={len(self)}, classes={count})"


class SyntheticCIFAR10(_StandIn):
    """A CIFAR-10-shaped stand-in with the same API as ``torchvision.datasets.CIFAR10``.

    ``data`` is uint8 ``(N, 32, 32, 3)``, ``targets`` a list of ints, ``classes`` ten names;
    ``__getitem__`` returns ``(PIL image, label)`` passed through ``transform``. The train and
    test splits are drawn from different seeds, so the test split is really held out.
    """

    classes = list(SHAPE_CLASSES)

    def _generate(self, n: int, seed: int) -> None:
        self.data, labels = make_shapes(n, seed=seed)
        self.targets = labels.tolist()

    def _item(self, index: int):
        return Image.fromarray(self.data[index]), self.targets[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float ``(N, 3, 32, 32)`` in [0,1] and labels ``(N,)``, no transform."""
        x = torch.from_numpy(self.data).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.tensor(self.targets)


# ---------------------------------------------------------------------------------------------
# Real datasets through torchvision, with a bounded download
# ---------------------------------------------------------------------------------------------

DOWNLOAD_TIMEOUT_S = 60.0   # seconds a stalled connection may wait before the download fails


@contextlib.contextmanager
def socket_timeout(seconds: float):
    """Bound every socket operation (connect, each read) inside the block, then restore."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def short_reason(err: BaseException) -> str:
    """A one-line reason for an exception (torchvision's messages can span many lines)."""
    text = " ".join(str(getattr(err, "reason", None) or err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _call_torchvision(name: str, make, root: Path, download: bool, timeout: float):
    """Call ``make()`` (a torchvision dataset constructor); any failure becomes a NoteError."""
    try:
        with socket_timeout(timeout):
            return make()
    except Exception as err:  # network and file errors come in many types; all mean the same
        if download:
            raise NoteError(
                f"could not download {name} into {root} ({short_reason(err)}). Check the internet "
                f"connection (or proxy) and run again with --download; or fetch it by hand as "
                f"data/README.md describes; or use --data synthetic for the built-in stand-in."
            ) from None
        raise NoteError(
            f"could not read {name} from {root} ({short_reason(err)}). The files may be "
            f"incomplete: delete that folder and fetch it again with --download (see "
            f"data/README.md), or use --data synthetic for the built-in stand-in.") from None


def _real_or_stand_in(name: str, folder: str, size_note: str, *, has_real, make_real,
                      make_stand_in, unit: str, train: bool, source: str, root, size,
                      download: bool, verbose: bool, timeout: float):
    """The chooser behind :func:`cifar10` and :func:`mnist` (see cifar10's docstring)."""
    if source not in ("auto", "real", "synthetic"):
        raise NoteError(f"--data {source}: expected auto, real or synthetic")
    root = Path(root) if root is not None else data_root()
    split = "train" if train else "test"
    if source == "real" or (source == "auto" and (has_real(root) or download)):
        if not has_real(root) and not download:
            raise NoteError(
                f"--data real: {name} is not under {root}/{folder}. Fetch it with --download "
                f"({size_note}), or use --data synthetic for the built-in stand-in.")
        ds = _call_torchvision(name, lambda: make_real(str(root)), root, download, timeout)
        if size is not None and size < len(ds):
            ds.data, ds.targets = ds.data[:size], ds.targets[:size]
        if verbose:
            print(f"data: real {name} from {root} ({split}, {len(ds)} images)")
        return ds
    ds = make_stand_in()
    if verbose:
        print(f"data: built-in {name}-shaped stand-in ({len(ds)} {split} {unit}, no download); "
              f"for real {name} add --download or see data/README.md")
    return ds


_REAL = {  # name -> (folder under the data root that proves it is there, download size)
    "CIFAR-10": ("cifar-10-batches-py/batches.meta", "about 170 MB"),
    "MNIST": ("MNIST/raw/t10k-labels-idx1-ubyte", "about 12 MB"),
}


def use_real(args: argparse.Namespace, name: str = "CIFAR-10", *, verbose: bool = True) -> bool:
    """Should this run load the real ``name`` (``"CIFAR-10"`` or ``"MNIST"``)?

    The note then shows the branch itself::

        if use_real(args):
            ds = torchvision.datasets.CIFAR10(root, train=False, transform=tf,
                                              download=args.download)
        else:
            ds = SyntheticCIFAR10(train=False, transform=tf, size=n, seed=args.seed)

    ``--data real``: yes (NoteError naming the folder if the files are missing and
    ``--download`` is not given); ``--data synthetic`` and ``--smoke``: no (a smoke run says when
    it overrides ``--data real``); ``auto``: yes when the files are on disk or ``--download``.
    Prints the one-line data notice.
    """
    marker, size_note = _REAL[name]
    root = Path(args.data_root) if getattr(args, "data_root", None) else data_root()
    if getattr(args, "smoke", False):
        if args.data == "real":
            print("data: --smoke always uses the built-in stand-in; --data real is ignored")
        real = False
    elif args.data == "real" and not (root / marker).is_file() and not args.download:
        raise NoteError(f"--data real: {name} is not under {root / Path(marker).parts[0]}. "
                        f"Fetch it with --download ({size_note}), or use --data synthetic for "
                        f"the built-in stand-in.")
    else:
        real = args.data == "real" or (args.data == "auto" and
                                        ((root / marker).is_file() or args.download))
    if verbose:
        print(f"data: real {name} from {root}" if real else
              f"data: built-in {name}-shaped stand-in (no download); for real {name} add "
              f"--download or see data/README.md")
    return real


@contextlib.contextmanager
def torchvision_errors(name: str, root, download: bool, timeout: float = DOWNLOAD_TIMEOUT_S):
    """Around a visible ``torchvision.datasets.X(...)`` call: a bounded download, and any
    failure becomes one NoteError naming the folder and the fix (not a traceback)."""
    try:
        with socket_timeout(timeout):
            yield
    except Exception as err:  # network and file errors come in many types; all mean the same
        if download:
            raise NoteError(
                f"could not download {name} into {root} ({short_reason(err)}). Check the internet "
                f"connection (or proxy) and run again with --download; or fetch it by hand as "
                f"data/README.md describes; or use --data synthetic for the built-in stand-in."
            ) from None
        raise NoteError(
            f"could not read {name} from {root} ({short_reason(err)}). The files may be "
            f"incomplete: delete that folder and fetch it again with --download (see "
            f"data/README.md), or use --data synthetic for the built-in stand-in.") from None


def _has_real_cifar10(root: Path) -> bool:
    return (Path(root) / "cifar-10-batches-py" / "batches.meta").is_file()


def cifar10(train: bool = True, transform=None, *, source: str = "auto",
            root: str | Path | None = None, size: int | None = None, seed: int = 0,
            download: bool = False, verbose: bool = True,
            timeout: float = DOWNLOAD_TIMEOUT_S):
    """CIFAR-10 when it is under ``root`` (or ``download=True``), else the stand-in.

    ``source``: ``auto`` (real if present, else stand-in), ``real`` or ``synthetic``.
    ``size`` caps the number of images (both sources), so smoke runs stay small.
    ``download`` fetches it with torchvision (progress bar; ``timeout`` seconds per stalled
    socket operation); a failed download raises NoteError saying why and what to do.
    """
    from torchvision.datasets import CIFAR10

    return _real_or_stand_in(
        "CIFAR-10", "cifar-10-batches-py", "about 170 MB", has_real=_has_real_cifar10,
        make_real=lambda r: CIFAR10(r, train=train, transform=transform, download=download),
        make_stand_in=lambda: SyntheticCIFAR10(train=train, transform=transform, size=size,
                                               seed=seed),
        unit="images", train=train, source=source, root=root, size=size, download=download,
        verbose=verbose, timeout=timeout)


def cifar10_batch(args: argparse.Namespace, n: int, *, train: bool = False,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the source the flags choose, as one batch on ``device``.

    Returns float images ``(n, 3, 32, 32)`` in [0, 1] (``ToTensor``) and labels ``(n,)``.
    ``args`` carries the data flags (``add_data_args``) and ``--smoke``.
    """
    from torch.utils.data import DataLoader
    from torchvision.transforms import ToTensor

    ds = cifar10(train=train, transform=ToTensor(), source=data_source(args),
                 root=args.data_root, size=n, download=args.download)
    images, labels = next(iter(DataLoader(ds, batch_size=n)))
    return images.to(device), labels.to(device)


# ---------------------------------------------------------------------------------------------
# MNIST-shaped stand-in: 1x28x28 digits drawn with Pillow's bundled font under affine jitter
# ---------------------------------------------------------------------------------------------

MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")  # torchvision's
_GLYPH_CANVAS = 48
_GLYPH_STROKES = (0, 1, 2)                 # thin, regular, bold pens


def _digit_glyphs() -> torch.Tensor:
    """``(strokes, 10, 48, 48)`` float masks in [0,1]: each digit centred, one per pen width."""
    font = ImageFont.load_default(size=34)  # Pillow's bundled TrueType font (Aileron)
    c = _GLYPH_CANVAS
    out = torch.empty(len(_GLYPH_STROKES), 10, c, c)
    for si, stroke in enumerate(_GLYPH_STROKES):
        for digit in range(10):
            img = Image.new("L", (c, c), 0)
            ImageDraw.Draw(img).text((c / 2, c / 2), str(digit), fill=255, font=font,
                                     anchor="mm", stroke_width=stroke, stroke_fill=255)
            out[si, digit] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
    return out


def make_digits(n: int, seed: int, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` stand-in digits: ``(uint8 tensor (n, size, size), int64 labels (n,))``.

    Each digit is drawn with a random pen width, then rotated, sheared, scaled and shifted by
    a random affine map (white on black, about 20 px tall like MNIST). Deterministic in ``seed``.
    """
    with _one_thread():
        return _make_digits(n, seed, size)


def _make_digits(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    bank = _digit_glyphs()
    images, labels = [], []
    for start in range(0, n, 4096):                        # chunks keep memory small
        m = min(4096, n - start)
        y = torch.randint(0, 10, (m,), generator=g)
        pen = torch.randint(0, len(_GLYPH_STROKES), (m,), generator=g)

        def u(lo, hi, m=m):
            return lo + (hi - lo) * torch.rand(m, generator=g)

        angle, scale, shear = u(-0.3, 0.3), u(0.85, 1.1), u(-0.3, 0.3)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input coordinates (what affine_grid wants): rotate, shear, then zoom
        # 0.8 / scale so a glyph about 24 of 48 px tall fills about 20 of 28 px.
        a = torch.stack([torch.stack([cos, -sin + shear * cos], 1),
                         torch.stack([sin, cos + shear * sin], 1)], 1)      # (m, 2, 2)
        a = a * (0.8 / scale)[:, None, None]
        shift = torch.stack([u(-0.12, 0.12), u(-0.12, 0.12)], 1)[:, :, None]  # (m, 2, 1)
        theta = torch.cat([a, shift], 2)                                    # (m, 2, 3)
        grid = F.affine_grid(theta, (m, 1, size, size), align_corners=False)
        img = F.grid_sample(bank[pen, y][:, None], grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)    # (m, 1, S, S)
        img = img[:, 0] * u(0.8, 1.0)[:, None, None]                        # ink intensity
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


class SyntheticMNIST(_StandIn):
    """An MNIST-shaped stand-in with the same API as ``torchvision.datasets.MNIST``.

    ``data`` is a uint8 tensor ``(N, 28, 28)``, ``targets`` an int64 tensor ``(N,)``,
    ``classes`` torchvision's ten names; ``__getitem__`` returns ``(PIL image mode "L",
    int label)`` passed through ``transform``. Train and test use different seeds.
    """

    classes = list(MNIST_CLASSES)

    def _generate(self, n: int, seed: int) -> None:
        self.data, self.targets = make_digits(n, seed=seed)

    def _item(self, index: int):
        img = Image.fromarray(self.data[index].numpy())          # (28, 28) uint8 -> mode "L"
        return img, int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float ``(N, 1, 28, 28)`` in [0,1] and labels ``(N,)``, no transform."""
        return self.data[:, None].float().div_(255), self.targets.clone()


def _has_real_mnist(root: Path) -> bool:
    raw = Path(root) / "MNIST" / "raw"
    return all((raw / f).is_file() for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def mnist(train: bool = True, transform=None, *, source: str = "auto",
          root: str | Path | None = None, size: int | None = None, seed: int = 0,
          download: bool = False, verbose: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S):
    """MNIST when it is under ``root/MNIST/raw`` (or ``download=True``), else the stand-in.

    Same choices as :func:`cifar10`.
    """
    from torchvision.datasets import MNIST

    return _real_or_stand_in(
        "MNIST", "MNIST/raw", "about 12 MB", has_real=_has_real_mnist,
        make_real=lambda r: MNIST(r, train=train, transform=transform, download=download),
        make_stand_in=lambda: SyntheticMNIST(train=train, transform=transform, size=size,
                                             seed=seed),
        unit="digits", train=train, source=source, root=root, size=size, download=download,
        verbose=verbose, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Image folders: clear errors for bad input
# ---------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_LAYOUT = "<folder>/<class name>/<image>.jpg (one subfolder per class)"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")         # skip .DS_Store, .ipynb_checkpoints, ...


def _must_be_folder(folder: Path, layout: str) -> None:
    if not folder.exists():
        raise NoteError(
            f"{folder} does not exist. Expected {layout}. Fix: check the path (or --data-root); "
            f"data/README.md says where each dataset goes and how to get it.")
    if not folder.is_dir():
        raise NoteError(f"{folder} is a file, not a folder. Expected {layout}. Fix: pass the "
                        f"folder that holds the images.")


def class_folders(folder: str | Path, *, layout: str = FOLDER_LAYOUT) -> list[str]:
    """The class subfolders of ``folder``, sorted (the order ``ImageFolder`` numbers them)."""
    folder = Path(folder)
    _must_be_folder(folder, layout)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        found = sorted(p.name for p in folder.iterdir() if _visible(p))[:3]
        raise NoteError(
            f"{folder} has no class subfolders (found: {found or 'nothing'}). Expected {layout}. "
            f"Fix: put each class's images in its own subfolder, e.g. {folder}/ants/*.jpg.")
    return classes


def image_files(folder: str | Path, *, layout: str = FOLDER_LAYOUT) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name; other files are skipped."""
    folder = Path(folder)
    _must_be_folder(folder, layout)
    files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        other = f" (only: {[p.name for p in files[:3]]})" if files else ""
        raise NoteError(
            f"{folder} holds no images{other}. Expected {layout}, with files ending in "
            f"{', '.join(IMAGE_EXTENSIONS[:3])}, ... Fix: copy or unzip the images there "
            f"(see data/README.md), or use --data synthetic for the built-in stand-in.")
    return images


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open an image file fully (so a truncated file fails here) and convert it to ``mode``."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except FileNotFoundError:
        raise NoteError(f"{path} does not exist (was it deleted while the script ran?). "
                        f"Fix: check the folder, or run again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise NoteError(
            f"{path} is not a readable image ({short_reason(err)}). Expected a JPEG or PNG file in "
            f"{FOLDER_LAYOUT}. Fix: delete or replace that file (unzip the dataset again).") \
            from None


# ---------------------------------------------------------------------------------------------
# hymenoptera (ants vs bees): the real folder, or a stand-in of real JPEG files on disk
# ---------------------------------------------------------------------------------------------

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
HYMENOPTERA_CLASSES = ("ants", "bees")
HYMENOPTERA_LAYOUT = "hymenoptera_data/{train,val}/{ants,bees}/*.jpg"
GENERATED_MARKER = ".torchnotes-generated"   # marks a folder torchnotes made (safe to replace)


def fresh_folder(folder: str | Path) -> Path:
    """An empty ``folder`` to generate files into, replacing one torchnotes generated before.

    A folder torchnotes did not make (no marker file) is never deleted: that is an error.
    """
    folder = Path(folder)
    if folder.exists():
        if (folder / GENERATED_MARKER).is_file():
            shutil.rmtree(folder)
        elif folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        else:
            raise NoteError(
                f"{folder} already exists and was not generated by these notes, so it is not "
                f"replaced. Fix: move it away, or choose another --out-dir.")
    folder.mkdir(parents=True)
    (folder / GENERATED_MARKER).write_text("generated by torchnotes; safe to delete\n")
    return folder


def _insect_background(rng: random.Random, w: int, h: int) -> Image.Image:
    """Soft blobs of a natural palette (leaves, soil, sky, flower), the same for both classes."""
    palettes = [((70, 120, 50), (120, 170, 80)), ((150, 120, 80), (200, 170, 120)),
                ((150, 180, 210), (220, 230, 240)), ((200, 80, 120), (240, 170, 200))]
    a, b = rng.choice(palettes)
    img = Image.new("RGB", (w, h), a)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 14)):
        r = rng.randint(w // 10, w // 3)
        x, y = rng.randint(0, w), rng.randint(0, h)
        colour = tuple(int(ca + (cb - ca) * rng.random()) for ca, cb in zip(a, b, strict=True))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(w / 25))


def _draw_ant(rng: random.Random, side: int) -> Image.Image:
    """A dark, elongated body of three segments with six legs and antennae (RGBA layer)."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    base = rng.choice([(25, 20, 18), (60, 30, 20), (110, 45, 25), (40, 35, 30)])
    colour = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in base) + (255,)
    cy, s = side / 2, side / 10                  # body axis, unit length
    x, centres = side * 0.12, []
    for length, half_height in ((1.6, 1.0), (2.0, 0.7), (3.2, 1.3)):   # head, thorax, gaster
        w, hh = length * s * rng.uniform(0.9, 1.1), half_height * s * rng.uniform(0.9, 1.15)
        draw.ellipse((x, cy - hh, x + w, cy + hh), fill=colour)
        centres.append(x + w / 2)
        x += w + s * 0.35
    width = max(1, round(s * 0.25))
    for k in (-1, 0, 1):                         # three pairs of legs from the thorax
        for sign in (-1, 1):
            x0 = centres[1] + k * s * 0.5
            x1 = x0 + k * s * 1.2 + rng.uniform(-0.4, 0.4) * s
            draw.line((x0, cy, (x0 + x1) / 2, cy + sign * s * 1.6,
                       x1, cy + sign * s * rng.uniform(2.2, 2.8)), fill=colour, width=width)
    for sign in (-1, 1):                         # antennae
        hx = centres[0]
        draw.line((hx, cy, hx - s * 0.8, cy + sign * s * 1.2, hx - s * 1.6, cy + sign * s),
                  fill=colour, width=width)
    return layer


def _draw_bee(rng: random.Random, side: int) -> Image.Image:
    """A yellow oval with black stripes, a dark head and pale wings (RGBA layer)."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    yellow = (rng.randint(215, 250), rng.randint(160, 205), rng.randint(10, 60), 255)
    black = (rng.randint(10, 35),) * 3 + (255,)
    cy, s = side / 2, side / 10
    bw, bh = 5.5 * s * rng.uniform(0.9, 1.1), 1.9 * s * rng.uniform(0.9, 1.1)
    x0 = side / 2 - bw / 2 + s * 0.5
    wx = x0 + bw * 0.25
    draw.ellipse((wx, cy - bh * 0.4 - 2.2 * s, wx + 2.6 * s, cy - bh * 0.4),
                 fill=(235, 240, 250, 170))      # wings, translucent
    draw.ellipse((wx, cy + bh * 0.4, wx + 2.6 * s, cy + bh * 0.4 + 2.2 * s),
                 fill=(235, 240, 250, 170))
    body = Image.new("L", (side, side), 0)
    ImageDraw.Draw(body).ellipse((x0, cy - bh, x0 + bw, cy + bh), fill=255)
    stripes = Image.new("RGBA", (side, side), yellow)
    n = rng.randint(3, 4)
    period = bw / (n + 1)
    for k in range(n):
        sx = x0 + period * (k + 0.8)
        ImageDraw.Draw(stripes).rectangle((sx, 0, sx + period * 0.45, side), fill=black)
    layer.paste(stripes, (0, 0), body)           # the striped body, cut out by the oval
    hr = bh * 0.6
    draw.ellipse((x0 - hr * 1.3, cy - hr, x0 + hr * 0.5, cy + hr), fill=black)   # head
    return layer


def draw_insect(kind: str, rng: random.Random) -> Image.Image:
    """One RGB picture of an ant or a bee on a natural background, with random jitter.

    The size varies (96-160 x 72-128 px), as photos do; so do colour, pose and position.
    """
    w, h = rng.randint(96, 160), rng.randint(72, 128)
    img = _insect_background(rng, w, h)
    layer = (_draw_ant if kind == "ants" else _draw_bee)(rng, int(min(w, h) *
                                                                 rng.uniform(0.8, 1.15)))
    layer = layer.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=True)
    x = round(w * rng.uniform(0.35, 0.65) - layer.width / 2)
    y = round(h * rng.uniform(0.35, 0.65) - layer.height / 2)
    img.paste(layer, (x, y), layer)
    return img


def make_hymenoptera(dest: str | Path, *, seed: int = 0, train_per_class: int = 40,
                     val_per_class: int = 20) -> Path:
    """Write the ants/bees stand-in as JPEG files; return ``dest/hymenoptera_data``.

    Layout as the real dataset: ``hymenoptera_data/{train,val}/{ants,bees}/<number>.jpg``.
    Deterministic in ``seed`` (same seed, same pixels); train and val are drawn separately.
    """
    for name, n in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if n < 1:
            raise ValueError(f"{name}={n}: each class needs at least one image")
    root = fresh_folder(Path(dest) / "hymenoptera_data")
    number = 0
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for kind in HYMENOPTERA_CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            rng = random.Random(f"hymenoptera/{seed}/{split}/{kind}")  # str seeds are stable
            for _ in range(n):
                number += 1                      # names like the real set: no label inside
                draw_insect(kind, rng).save(folder / f"{number:06d}.jpg", quality=90)
    return root


def _has_real_hymenoptera(root: Path) -> bool:
    return (Path(root) / "hymenoptera_data" / "train").is_dir()


def check_hymenoptera(folder: str | Path) -> Path:
    """Check ``folder`` (a ``hymenoptera_data``) has ``{train,val}/{ants,bees}`` with images."""
    folder = Path(folder)
    layout = f"{folder.parent}/{HYMENOPTERA_LAYOUT}"
    for split in ("train", "val"):
        classes = class_folders(folder / split, layout=layout)
        missing = [c for c in HYMENOPTERA_CLASSES if c not in classes]
        if missing:
            raise NoteError(f"{folder / split} has no {missing} subfolder (found {classes}). "
                            f"Expected {layout}. Fix: unzip the dataset again (data/README.md).")
        for c in HYMENOPTERA_CLASSES:
            image_files(folder / split / c, layout=layout)
    return folder


def hymenoptera(source: str = "auto", *, out_dir: str | Path, root: str | Path | None = None,
                seed: int = 0, train_per_class: int = 40, val_per_class: int = 20,
                download: bool = False, verbose: bool = True,
                timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The ``hymenoptera_data`` folder to read: the real one, or a stand-in written to disk.

    ``source``: ``auto`` (real if under ``root``, else stand-in), ``real`` or ``synthetic``.
    The stand-in is written to ``out_dir/stand-in-data/`` (never into ``data/``), replacing
    the one an earlier run left there. ``download`` fetches the real zip (about 45 MB) from
    download.pytorch.org into ``root`` with torchvision's downloader.
    """
    if source not in ("auto", "real", "synthetic"):
        raise NoteError(f"--data {source}: expected auto, real or synthetic")
    root = Path(root) if root is not None else data_root()
    present = _has_real_hymenoptera(root)
    if source == "real" or (source == "auto" and (present or download)):
        if not present and not download:
            raise NoteError(
                f"--data real: hymenoptera is not under {root}/hymenoptera_data. Fetch it with "
                f"--download, or unzip {HYMENOPTERA_URL} into {root} (data/README.md); or use "
                f"--data synthetic for the built-in stand-in.")
        if not present:
            from torchvision.datasets.utils import download_and_extract_archive

            _call_torchvision(
                "hymenoptera", lambda: download_and_extract_archive(
                    HYMENOPTERA_URL, download_root=str(root), remove_finished=True),
                root, True, timeout)
        folder = check_hymenoptera(root / "hymenoptera_data")
        if verbose:
            print(f"data: real hymenoptera (ants vs bees) from {folder}")
        return folder
    dest = Path(out_dir) / "stand-in-data"
    if dest.resolve().is_relative_to(root.resolve()):
        raise NoteError(f"--out-dir {out_dir} is inside the data folder {root}: the stand-in "
                        f"would be mistaken for the real dataset. Choose another --out-dir.")
    folder = make_hymenoptera(dest, seed=seed, train_per_class=train_per_class,
                              val_per_class=val_per_class)
    if verbose:
        print(f"data: built-in ants/bees stand-in, {2 * (train_per_class + val_per_class)} JPEGs "
              f"written to {folder} (no download); for the real photos add --download or see "
              f"data/README.md")
    return folder
