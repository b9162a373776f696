"""Crash-safe checkpoints: atomic writes, checksums, the newest valid file, a run lock, RNG state.

The training notes show the pattern in their own lines (what a checkpoint holds, write then
rename); this module holds the details every script needs done the same way:

* :func:`atomic_save`: ``torch.save`` into a temp file in the same folder, flush, fsync,
  ``os.replace`` onto the final name, fsync the folder; a ``<name>.sha256`` file beside it
  records the SHA-256 of the bytes (written the same way). A crash at any moment leaves the
  previous file or the new one under the final name, never a partial one.
* :func:`load_checkpoint`: verify the SHA-256, then ``torch.load(..., weights_only=True)``.
* :func:`latest_valid`: the newest checkpoint that loads; says which corrupt ones it skipped.
* :class:`RunLock`: one run per ``--out-dir`` at a time (``fcntl.flock``).
* :func:`rng_state` / :func:`set_rng_state`: Python, NumPy, torch CPU and CUDA generators as
  tensors and plain numbers (so a checkpoint loads with ``weights_only=True``, no allow-list).
* :func:`load_weights`: ``load_state_dict`` with a one-line error naming the first key that
  does not fit; ``strict=False`` only for an explicit list of keys allowed to differ.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .cli import NoteError

try:
    import fcntl
except ImportError:           # Windows: no flock; RunLock becomes a no-op there
    fcntl = None

# Test hook: "N:SECONDS[:STAGE]" pauses the N-th atomic_save of this process for SECONDS at
# STAGE ("before_replace", the default: the temp file is complete, the final name untouched;
# or "before_sidecar": the new file is in place, its checksum not yet), so a test can SIGKILL
# a run in the middle of a save.
PAUSE_ENV_VAR = "TORCHNOTES_SAVE_PAUSE"
_saves = 0


class CheckpointError(NoteError):
    """A checkpoint that cannot be used: names the file, what is wrong, and the fix."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar(path: str | os.PathLike) -> Path:
    """``moli_epoch_1.pth`` -> ``moli_epoch_1.pth.sha256`` (``sha256sum -c`` reads it)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:            # Windows cannot open a folder; its os.replace is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pause(stage: str) -> None:
    spec = os.environ.get(PAUSE_ENV_VAR, "")
    if not spec:
        return
    n, seconds, *where = spec.split(":")
    if int(n) == _saves and (where or ["before_replace"])[0] == stage:
        print(f"[{PAUSE_ENV_VAR}] save {n} paused {stage}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def _replace_atomically(write, path: Path, pause: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")    # same folder: os.replace never copies
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())                     # the bytes are on disk before the rename
    if pause:
        _pause("before_replace")
    os.replace(tmp, path)                        # atomic: old file or new file, never half
    _fsync_folder(path.parent)                   # the rename itself is on disk


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that a crash cannot leave half-written; records its SHA-256."""
    global _saves
    _saves += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(lambda f: torch.save(obj, f), path, pause=True)
    digest = sha256_file(path)
    _pause("before_sidecar")
    line = f"{digest}  {path.name}\n".encode()
    _replace_atomically(lambda f: f.write(line), sidecar(path))
    return path


def _refused_global(err: Exception) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return found.group(1) if found else " ".join(str(err).split())[:120]


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Verify ``path`` against its ``.sha256`` file, then load it with ``weights_only=True``."""
    path = Path(path)
    fix = ("delete it (and its .sha256 file), or resume from an earlier checkpoint "
           "(--resume falls back to the newest valid one)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; expected a file written by "
                              f"atomic_save", path)
    check_file = sidecar(path)
    if not check_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {check_file.name}: it "
                              f"was not written completely (or not by atomic_save); {fix}", path)
    expected = (check_file.read_text(encoding="ascii", errors="replace").split() or [""])[0]
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 {actual[:12]}... "
                              f"differs from the recorded {expected[:12]}...; {fix}", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {path} names code to run ({_refused_global(err)}), "
                              f"which weights_only=True refuses: never load it unless you "
                              f"made it; {fix}", path) from None
    except Exception as err:  # truncated zip, bad pickle, ...: all mean "corrupt"
        reason = " ".join(str(err).split())[:120]
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__}: "
                              f"{reason}); {fix}", path) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a "
                              f"dict; {fix}", path)
    return state


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def latest_valid(out_dir: str | os.PathLike, pattern: str = "*.pth",
                 map_location="cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``out_dir`` that loads (by the epoch/step it stores, then name).

    Prints one line per corrupt file skipped. ``None`` when there is no valid checkpoint.
    """
    best, bad = None, []
    for path in sorted(Path(out_dir).glob(pattern), key=lambda p: _natural(p.name)):
        if path.name.startswith(".") or not path.is_file():
            continue                             # temp files of an unfinished save
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            bad.append((path, str(err).removeprefix("error: ")))
            continue
        key = (int(state.get("epoch", 0)), int(state.get("step", 0)), _natural(path.name))
        if best is None or key > best[0]:
            best = (key, path, state)
    for path, reason in bad:
        target = (f"falling back to {best[1].name}" if best
                  else "no valid checkpoint to fall back to")
        short = reason.split(";")[0].removeprefix(f"checkpoint {path} ")
        print(f"{path.name}: corrupt ({short}), {target}")
    return (best[1], best[2]) if best else None


class RunLock:
    """``with RunLock(out_dir):`` one run at a time in a folder (an exclusive ``flock``).

    The lock file is ``out_dir/.lock`` (it holds the owner's pid). The kernel drops the lock
    when the process ends, however it ends, so a killed run never leaves a stale lock.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / ".lock"
        self._fd = None

    def __enter__(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(self._fd, 32).decode(errors="replace").strip() or "?"
                os.close(self._fd)
                self._fd = None
                raise NoteError(f"--out-dir {self.out_dir} is in use by another run (pid "
                                f"{holder} holds {self.path.name}); wait for it to finish, or "
                                f"choose another folder with --out-dir NEW_DIR") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def rng_state() -> dict:
    """Every global random generator's state, as tensors and plain numbers only."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            print(f"note: the checkpoint holds {len(cuda)} CUDA generator states, this machine "
                  f"has {torch.cuda.device_count()} GPUs: CUDA random numbers will differ")


def load_weights(model: torch.nn.Module, state: dict, *, may_differ=(),
                 source: str = "the checkpoint") -> None:
    """``model.load_state_dict(state)``; a file for another architecture gives one line.

    ``may_differ``: the exact keys allowed to be missing, extra or of another shape (for
    example a replaced head); only then is ``strict=False`` used, and every other key must fit.
    """
    mine = model.state_dict()
    allowed = set(may_differ)
    name = type(model).__name__
    fix = ("build the model the checkpoint was saved from, or list the keys allowed to "
           "differ (may_differ=[...])")
    for key in [*mine, *(k for k in state if k not in mine)]:
        if key in allowed:
            continue
        ours = tuple(mine[key].shape) if key in mine else None
        theirs = tuple(state[key].shape) if key in state else None
        if ours != theirs:
            a = "missing" if theirs is None else f"shape {theirs}"
            b = "missing" if ours is None else f"shape {ours}"
            raise CheckpointError(f"{source} does not fit {name}: first mismatch at key {key!r}: "
                                  f"{a} in the file vs {b} in the model; {fix}")
    if not allowed:
        model.load_state_dict(state)              # strict: every key, every shape
        return
    kept = {k: v for k, v in state.items() if k not in allowed}
    result = model.load_state_dict(kept, strict=False)
    stray = set(result.missing_keys) - allowed
    if stray or result.unexpected_keys:      # cannot happen after the loop above; belt and braces
        raise CheckpointError(f"{source}: keys outside may_differ did not load: "
                              f"{sorted(stray | set(result.unexpected_keys))[:3]}")
