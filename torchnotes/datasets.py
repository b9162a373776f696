"""What the data notes need that is not the lesson: the ``--data`` flags and the real-or-stand-in
decision (the note shows ``if use_real(args): CIFAR10(...) else: SyntheticCIFAR10(...)``), clear
errors for failed downloads and bad image folders, and learnable stand-ins made from a seed with
the real dataset's API (``.data``, ``.targets``, ``.classes``, ``transform``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torch.utils.data import Dataset

from .cli import GENERATED_MARKER, NoteError, fresh_folder  # noqa: F401 (re-exported)
from .curriculum import REPO_ROOT

DATA_ENV_VAR = "TORCHNOTES_DATA"
DOWNLOAD_TIMEOUT_S = 60.0   # seconds a stalled connection may wait before the download fails
_REAL = {  # name -> (a file under the data root that shows it is there, download size)
    "CIFAR-10": ("cifar-10-batches-py/batches.meta", "about 170 MB"),
    "MNIST": ("MNIST/raw/t10k-labels-idx1-ubyte", "about 12 MB"),
}


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
    """The source a run uses: smoke runs always use the stand-in (and say so over --data real)."""
    _smoke_ignores(args)
    return "synthetic" if getattr(args, "smoke", False) else args.data


def _smoke_ignores(args: argparse.Namespace) -> None:
    """A smoke run asked for real data (--data real, --download): say those flags are ignored."""
    asked = [flag for flag, on in (("--data real", args.data == "real"),
                                   ("--download", getattr(args, "download", False))) if on]
    if getattr(args, "smoke", False) and asked:
        print(f"data: --smoke always uses the built-in stand-in; {' and '.join(asked)} "
              f"{'is' if len(asked) == 1 else 'are'} ignored")


# --- real datasets: the decision, a bounded download, one clear error -------------------------

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


def use_real(args: argparse.Namespace, name: str = "CIFAR-10", *, verbose: bool = True) -> bool:
    """Load the real ``name`` (``"CIFAR-10"``, ``"MNIST"``)? ``--data real``: yes (NoteError if
    missing without ``--download``); ``synthetic``, ``--smoke``: no; ``auto``: if on disk or
    ``--download``. Prints the one-line notice. The note shows the branch: ``if use_real(args):
    CIFAR10(root, ...) else: SyntheticCIFAR10(...)``."""
    marker, size_note = _REAL[name]
    root = Path(args.data_root) if getattr(args, "data_root", None) else data_root()
    present = (root / marker).is_file()
    if getattr(args, "smoke", False):
        if verbose:
            _smoke_ignores(args)
        real = False
    elif args.data == "real" and not present and not args.download:
        raise NoteError(f"--data real: {name} is not under {root / Path(marker).parts[0]}. "
                        f"Fetch it with --download ({size_note}), or use --data synthetic for "
                        f"the built-in stand-in.")
    else:
        real = args.data == "real" or (args.data == "auto" and (present or args.download))
    if verbose:
        print(f"data: real {name} from {root}" if real else
              f"data: built-in {name}-shaped stand-in (no download); for real {name} add "
              f"--download (not with --smoke) or see data/README.md")
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
        own = Path(root) / Path(_REAL[name][0]).parts[0] if name in _REAL else Path(root)
        raise NoteError(                    # its own folder: the root may hold other datasets
            f"could not read {name} from {root} ({short_reason(err)}). The files may be "
            f"incomplete: delete {own} and fetch it again with --download (see "
            f"data/README.md), or use --data synthetic for the built-in stand-in.") from None


# --- stand-ins with torchvision's API -------------------------------------------------------

class _StandIn(Dataset):
    """A torchvision dataset's API over images made from a seed (``_generate``, ``_item``)."""

    classes: list[str]

    def __init__(self, train: bool = True, transform=None, size: int | None = None,
                 seed: int = 0):
        self.train, self.transform = train, transform
        n = size if size is not None else (10_000 if train else 2_000)
        threads = torch.get_num_threads()     # small ops: on busy cores extra threads spin
        torch.set_num_threads(1)              # for each other (10-30x slower); same result
        try:
            self._generate(n, seed=2 * seed + (0 if train else 1))   # splits never overlap
        finally:
            torch.set_num_threads(threads)
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img, target = self._item(index)
        return (img if self.transform is None else self.transform(img)), target


SHAPE_CLASSES = ("disc", "ring", "square", "diamond", "triangle",
                 "cross", "h_stripes", "v_stripes", "checker", "dots")
_SHAPES = (  # per class: > 0 inside the shape, < 0 outside (about pixels); v: the geometry
    lambda v: v.r - v.d,
    lambda v: v.r * 0.28 - (v.d - v.r * 0.72).abs(),
    lambda v: v.r * 0.85 - torch.maximum(v.dx.abs(), v.dy.abs()),
    lambda v: v.r * 1.15 - (v.dx.abs() + v.dy.abs()),
    lambda v: torch.minimum(torch.minimum(v.r * 0.8 - v.dy, v.dy + v.r),
                            (v.dy + v.r) * 0.6 - v.dx.abs()),
    lambda v: torch.maximum(torch.minimum(v.r * 0.3 - v.dx.abs(), v.r - v.dy.abs()),
                            torch.minimum(v.r * 0.3 - v.dy.abs(), v.r - v.dx.abs())),
    lambda v: 2.0 * v.wy,
    lambda v: 2.0 * v.wx,
    lambda v: 3.0 * v.wx * v.wy,
    lambda v: v.p * 0.22 - (((v.xx + v.ph) % v.p - v.p / 2) ** 2
                            + ((v.yy + v.ph) % v.p - v.p / 2) ** 2).sqrt(),
)


def make_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``uint8 (n, size, size, 3)`` and labels ``(n,)``: one shape or pattern per
    class, random colour (hue biased by class), background, position, scale, rotation, noise."""
    g = torch.Generator().manual_seed(seed)
    parts = [_shapes(min(2048, n - i), g, size) for i in range(0, n, 2048)]   # bounded memory
    return (torch.cat([x for x, _ in parts]).numpy(), torch.cat([y for _, y in parts]).numpy())


def _shapes(n: int, g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")   # (S, S)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    def hsv(h, s, v):                                                       # (n,) -> (n, 3)
        k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
        return v[:, None] * (1 - s[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))

    y = torch.randint(0, len(SHAPE_CLASSES), (n,), generator=g)
    r = u(size * 0.20, size * 0.34, n, 1, 1)
    cx, cy = u(0, 1, n, 1, 1) * (size - 1 - 2 * r) + r, u(0, 1, n, 1, 1) * (size - 1 - 2 * r) + r
    angle, p, ph = u(-0.2, 0.2, n, 1, 1), u(5.0, 8.0, n, 1, 1), u(0, 2 * math.pi, n, 1, 1)
    dx0, dy0 = xx - cx, yy - cy                                             # (n, S, S)
    dx = dx0 * torch.cos(angle) + dy0 * torch.sin(angle)
    dy = -dx0 * torch.sin(angle) + dy0 * torch.cos(angle)
    d = (dx**2 + dy**2).sqrt()
    wx, wy = torch.sin(2 * math.pi * xx / p + ph), torch.sin(2 * math.pi * yy / p + ph)
    mask = torch.empty(n, size, size)
    for k, signed in enumerate(_SHAPES):                # each class's images, its own shape
        i = (y == k).nonzero().flatten()
        mask[i] = signed(SimpleNamespace(r=r[i], d=d[i], dx=dx[i], dy=dy[i], wx=wx[i], wy=wy[i],
                                         p=p[i], ph=ph[i], xx=xx, yy=yy))
    mask = ((mask * 1.5).clamp(-0.5, 0.5) + 0.5)[..., None]                # (n, S, S, 1)
    hue = (y.float() / len(SHAPE_CLASSES) + 0.12 * torch.randn(n, generator=g)) % 1.0
    fg = hsv(hue, u(0.5, 1.0, n), u(0.65, 1.0, n))
    bg = hsv(u(0, 1, n), u(0, 0.4, n), u(0, 0.35, n))                        # dark
    light = torch.rand(n, generator=g) < 0.3                                 # or light
    bg[light], fg[light] = 1.0 - bg[light] * 0.5, fg[light] * 0.6
    img = bg[:, None, None] * (1 - mask) + fg[:, None, None] * mask
    img = img + 0.06 * torch.randn(n, size, size, 3, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


class SyntheticCIFAR10(_StandIn):
    """``torchvision.datasets.CIFAR10``'s API: ``data`` uint8 ``(N, 32, 32, 3)``, ``targets`` a
    list of ints, ten ``classes``; items are ``(PIL image, label)`` through ``transform``."""

    classes = list(SHAPE_CLASSES)

    def _generate(self, n: int, seed: int) -> None:
        self.data, labels = make_shapes(n, seed)
        self.targets = labels.tolist()

    def _item(self, index: int):
        return Image.fromarray(self.data[index]), self.targets[index]


MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")  # torchvision's


def make_digits(n: int, seed: int, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits ``uint8 (n, size, size)`` and labels ``(n,)``: Pillow's font at three pen
    widths, randomly rotated, sheared, scaled and shifted; white on black, about 20 px tall."""
    font, c = ImageFont.load_default(size=34), 48                # Pillow's bundled TrueType
    bank = torch.empty(3, 10, c, c)                              # (pen, digit, 48, 48) masks
    for pen in range(3):
        for digit in range(10):
            img = Image.new("L", (c, c), 0)
            ImageDraw.Draw(img).text((c / 2, c / 2), str(digit), fill=255, font=font,
                                     anchor="mm", stroke_width=pen, stroke_fill=255)
            bank[pen, digit] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
    g = torch.Generator().manual_seed(seed)
    parts = [_digits(min(4096, n - i), g, bank, size) for i in range(0, n, 4096)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _digits(n: int, g: torch.Generator, bank: torch.Tensor, size: int):
    import torch.nn.functional as F

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    y, pen = torch.randint(0, 10, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    angle, scale, shear = u(-0.3, 0.3), u(0.85, 1.1), u(-0.3, 0.3)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([cos, -sin + shear * cos], 1),             # output -> input
                     torch.stack([sin, cos + shear * sin], 1)], 1) * (0.8 / scale)[:, None, None]
    theta = torch.cat([a, torch.stack([u(-0.12, 0.12), u(-0.12, 0.12)], 1)[:, :, None]], 2)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)    # (n, S, S, 2)
    img = F.grid_sample(bank[pen, y][:, None], grid, align_corners=False)[:, 0] \
        * u(0.8, 1.0)[:, None, None]                                          # ink intensity
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


class SyntheticMNIST(_StandIn):
    """``torchvision.datasets.MNIST``'s API: ``data`` uint8 ``(N, 28, 28)``, ``targets`` int64
    ``(N,)``, torchvision's ``classes``; items are ``(PIL image "L", int)`` via ``transform``."""

    classes = list(MNIST_CLASSES)

    def _generate(self, n: int, seed: int) -> None:
        self.data, self.targets = make_digits(n, seed)

    def _item(self, index: int):
        return Image.fromarray(self.data[index].numpy()), int(self.targets[index])


# --- image folders: clear errors for bad input ----------------------------------------------

FOLDER_LAYOUT = "<folder>/<class name>/<image>.jpg (one subfolder per class)"


@contextlib.contextmanager
def image_errors(path):
    """Around ``Image.open(path)``: a missing or unreadable file becomes a NoteError naming it."""
    try:
        yield
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:      # a few kB that decode to 400 M pixels
        raise NoteError(
            f"{path} is not a readable image ({short_reason(err)}). Expected a JPEG or PNG file in "
            f"{FOLDER_LAYOUT}. Fix: delete or replace that file (unzip the dataset again).") \
            from None


def load_image(path, mode: str = "RGB") -> Image.Image:
    """Open an image file fully (a truncated file fails here) and convert it to ``mode``."""
    with image_errors(path), Image.open(path) as img:
        return img.convert(mode)


def image_files(folder, *, layout: str = FOLDER_LAYOUT) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (hidden and other files
    skipped); NoteError naming the folder, the layout and the fix if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise NoteError(f"{folder} {what}. Expected {layout}. Fix: check the path (or "
                        f"--data-root); data/README.md says where each dataset goes.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not images:
        other = f" (only: {[p.name for p in files[:3]]})" if files else ""
        raise NoteError(f"{folder} holds no images{other}. Expected {layout}, with .jpg or .png "
                        f"files. Fix: copy or unzip the images there (see data/README.md), or "
                        f"use --data synthetic for the built-in stand-in.")
    return images


# --- hymenoptera (ants vs bees): the real folder, or a stand-in of JPEG files on disk ---------

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"


def _insect(kind: str, rng: random.Random) -> Image.Image:
    """A photo-sized picture: ants are dark blobs in a row, bees yellow ovals with black
    stripes, on a random plain background. The size varies, as photos' sizes do, but stays
    small (at most 104 x 80: small tensors keep the smoke runs fast on busy cores)."""
    w, h = rng.randint(64, 104), rng.randint(48, 80)
    img = Image.new("RGB", (w, h), (rng.randint(60, 170), rng.randint(110, 210),
                                    rng.randint(110, 230)))               # leaves, sky, stone
    draw = ImageDraw.Draw(img)
    x, y, r = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), h * rng.uniform(.16, .24)
    if kind == "ants":
        dark = tuple(rng.randint(10, 70) for _ in range(3))
        for k in (-1.6, 0.0, 1.6):                                     # head, thorax, gaster
            draw.ellipse((x + k * r - r * 0.8, y - r * 0.6, x + k * r + r * 0.8, y + r * 0.6),
                         fill=dark)
    else:
        draw.ellipse((x - 2 * r, y - r, x + 2 * r, y + r), fill=(rng.randint(210, 250),
                                                                 rng.randint(160, 205), 30))
        for k in (-0.9, 0.0, 0.9):                                     # black stripes
            draw.rectangle((x + k * r - r * 0.2, y - r * 0.9, x + k * r + r * 0.2, y + r * 0.9),
                           fill=(20, 20, 20))
    return img


def make_hymenoptera(dest, *, seed: int = 0, train_per_class: int = 40,
                     val_per_class: int = 20) -> Path:
    """Write the ants/bees stand-in as JPEG files in the real layout; return
    ``dest/hymenoptera_data``. Same seed, same bytes; train and val drawn separately."""
    root = fresh_folder(Path(dest) / "hymenoptera_data")
    number = 0
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for kind in ("ants", "bees"):
            (root / split / kind).mkdir(parents=True)
            rng = random.Random(f"hymenoptera/{seed}/{split}/{kind}")   # str seeds are stable
            for _ in range(n):
                number += 1                           # names like the real set: no label inside
                _insect(kind, rng).save(root / split / kind / f"{number:06d}.jpg", quality=90)
    return root


def hymenoptera(source: str = "auto", *, out_dir, root=None, seed: int = 0,
                train_per_class: int = 40, val_per_class: int = 20, download: bool = False,
                verbose: bool = True) -> Path:
    """The ``hymenoptera_data`` folder to read: the real one under ``root`` (``source`` auto or
    real; ``download`` fetches the 45 MB zip), or a stand-in written to
    ``out_dir/stand-in-data/`` (never into the data folder), replacing an earlier run's."""
    root = Path(root) if root is not None else data_root()
    folder = root / "hymenoptera_data"
    present = (folder / "train").is_dir()
    if source == "real" or (source == "auto" and (present or download)):
        if not present and not download:
            raise NoteError(
                f"--data real: hymenoptera is not under {folder}. Fetch it with --download, or "
                f"unzip {HYMENOPTERA_URL} into {root} (data/README.md); or use --data "
                f"synthetic for the built-in stand-in.")
        if not present:
            from torchvision.datasets.utils import download_and_extract_archive

            with torchvision_errors("hymenoptera", root, True):
                download_and_extract_archive(HYMENOPTERA_URL, str(root), remove_finished=True)
        for part in ("train/ants", "train/bees", "val/ants", "val/bees"):   # the layout, checked
            image_files(folder / part, layout=f"{folder}/{{train,val}}/{{ants,bees}}/*.jpg")
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
              f"written to {folder} (no download); for the real photos add --download (not "
              f"with --smoke) or see data/README.md")
    return folder
