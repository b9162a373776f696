"""The flags every note shares, seeding, progress bars and safe output paths."""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .curriculum import repo_relative
from .device import CHOICES, ENV_VAR, DeviceError, get_device

RUNS_ENV_VAR = "TORCHNOTES_RUNS"


class NoteError(SystemExit):
    """Bad input to a note (a flag, a file, a folder): exits with the message, no traceback.

    The message names the flag or path, what was expected, and how to fix it.
    """

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def default_out_dir(script: str | os.PathLike) -> Path:
    """``<repo>/runs/<topic>/<script stem>``; ``TORCHNOTES_RUNS`` moves the ``runs`` root.

    The root sits beside the topic folders (git-ignored), wherever the script is run from, so
    a run never writes into the current directory.
    """
    path = Path(script).resolve()
    topic = Path(repo_relative(path)).parent              # "autograd" or "advanced/peft"
    repo = path.parents[len(topic.parts)]
    root = Path(os.environ.get(RUNS_ENV_VAR) or repo / "runs")
    return root / topic / path.stem


def make_parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser with the shared flags; add a note's own flags to it.

    ``script`` is the note's ``__file__`` (names the default output folder), ``doc`` its
    ``__doc__`` (its first line becomes the ``--help`` description).
    """
    summary = (doc or "").strip().splitlines()[0] if doc and doc.strip() else None
    parser = argparse.ArgumentParser(
        prog=f"python {repo_relative(script)}",
        description=summary,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default=None,
                        help=f"{CHOICES}; default: ${ENV_VAR} or auto (CUDA, then MPS, then CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for Python, NumPy and torch")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and few steps, same checks (what the tests run)")
    parser.add_argument("--out-dir", type=Path, default=default_out_dir(script),
                        help="the only folder this note writes into")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing files (checkpoints) an earlier run left in --out-dir")
    return parser


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start(parser: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, torch.device]:
    """Parse flags, pick the device, seed everything; print one line saying so."""
    args = parser.parse_args(argv)
    try:
        device = get_device(args.device)
    except DeviceError as err:
        parser.error(str(err))
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: expected a non-negative integer")
    seed_everything(args.seed)
    mode = "smoke" if args.smoke else "full"
    print(f"device: {device} | seed: {args.seed} | mode: {mode} | torch {torch.__version__}")
    return args, device


def progress(iterable, *, desc: str = "", total: int | None = None, enabled: bool = True):
    """A tqdm progress bar on an interactive terminal; a plain iterator otherwise."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def writable_file(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Make the parent folder and return ``path``, refusing to replace an existing file.

    Checkpoints are what a learner keeps; an earlier run's file is never replaced silently.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise NoteError(
            f"{path} already exists (left by an earlier run). Keep it by choosing another "
            f"folder with --out-dir NEW_DIR, or replace it by passing --overwrite."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
