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
* :func:`load_optimizer`, :func:`load_scheduler`: the same for an optimizer's state
  (moments shaped like their parameters) and a scheduler's (its keys, values of their types).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .cli import NoteError, _plain_file_or_nothing, claims_out_dir, lock_out_dir
from .datasets import short_reason

try:
    import fcntl
except ImportError:           # Windows: no flock; RunLock becomes a no-op there
    fcntl = None

# Test hook: "N:SECONDS[:STAGE]" pauses the N-th atomic_save of this process for SECONDS at
# STAGE, so a test can SIGKILL a run in the middle of a save: "before_sidecar" (the temp file
# is complete, no checksum yet) or "before_replace" (the default: the new checksum is written,
# the final name still holds the previous file).
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


def _new_temp(path: Path) -> Path:
    """``.<name>.tmp`` beside ``path``, not there yet: a killed save's leftover file is removed;
    a link or a folder planted at that name is refused by name and left as it is (writing
    through a link would overwrite the file it points to)."""
    tmp = _plain_file_or_nothing(path.with_name(f".{path.name}.tmp"), "(a temporary one)")
    tmp.unlink(missing_ok=True)
    return tmp


def _write_atomically(data: bytes, path: Path) -> None:
    tmp = _new_temp(path)
    try:
        with open(tmp, "xb") as f:           # x: a new file, never through a link made since
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:              # a full disk, Ctrl-C: no half-written temp is left
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that a crash cannot leave half-written; records its SHA-256."""
    global _saves
    _saves += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)                        # same folder: os.replace never copies
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())                 # the bytes are on disk before the rename
        _pause("before_sidecar")
        # The checksum goes first, so a file under its final name always has its .sha256
        # beside it. Replacing a valid file, its hash stays listed until the rename is done:
        # a crash in between leaves the previous file, still loadable.
        new = sha256_file(tmp)
        old = [h for h in [sha256_file(path)] if h in _recorded(path)] if path.is_file() else []
        _write_atomically("".join(f"{h}  {path.name}\n" for h in [new, *old]).encode(),
                          sidecar(path))
        _pause("before_replace")
        os.replace(tmp, path)                    # atomic: the old file or the new, never half
    except BaseException:     # a full disk or Ctrl-C: the previous file stays, no temp is left
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)                   # the rename itself is on disk
    if old:
        _write_atomically(f"{new}  {path.name}\n".encode(), sidecar(path))
    return path


def _recorded(path: Path) -> list[str]:
    """The SHA-256 digests ``path``'s .sha256 file lists (64 hex digits each)."""
    try:
        text = sidecar(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return [t for t in text.split() if re.fullmatch(r"[0-9a-f]{64}", t)]


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
    expected = _recorded(path)
    actual = sha256_file(path)
    if actual not in expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 {actual[:12]}... "
                              f"differs from the recorded {(expected or ['?'])[0][:12]}...; "
                              f"{fix}", path)
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


def _counter(state, key: str) -> int:
    """``state[key]`` as a sort key; an edited value that is no count sorts first (--resume
    then names it, if that file is the only one)."""
    value = state.get(key, 0)
    return value if type(value) is int else -1


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
        key = (*(_counter(state, k) for k in ("epoch", "step")), _natural(path.name))
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
    when the process ends, however it ends, so a killed run never leaves a stale lock. If this
    run already claimed the folder (``torchnotes.cli``: at its first write), entering is free.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / ".lock"
        self._fd = None

    def __enter__(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not claims_out_dir(self.out_dir):
            self._fd = lock_out_dir(self.out_dir)
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


_UNFIT = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def _unfit(path: Path, what: str, why: str) -> CheckpointError:
    return CheckpointError(f"--resume: {path.name} passed its checksum, but its {what} does not "
                           f"fit this run ({why}): the file was edited, or written by another "
                           f"program. Start afresh with --overwrite or --out-dir NEW_DIR", path)


def _check_resumable(path: Path, state: dict, epochs: int | None) -> None:
    """The counters and generator states a note restores, checked before any work: a checksum
    proves the bytes are the ones saved, not that a program saved them (anyone can write a
    file and its .sha256), so an edited epoch or state is named here, not met mid-run."""
    epoch = state.get("epoch")
    if epochs is not None and "epoch" in state and (
            type(epoch) is not int or not 1 <= epoch <= epochs):
        raise _unfit(path, "epoch", f"{epoch!r}; this run's checkpoints count 1 to {epochs}")
    losses = state.get("losses")
    if "losses" in state and not (isinstance(losses, torch.Tensor) and losses.dim() == 1
                                  and losses.is_floating_point()):
        raise _unfit(path, "losses", "expected a 1-D float tensor, one loss per step")
    if "step" in state and not (type(state["step"]) is int and state["step"] >= 0):
        raise _unfit(path, "step", f"{state['step']!r}; expected a count of steps")
    if isinstance(state.get("rng"), dict):
        current = rng_state()
        try:
            set_rng_state({k: v for k, v in state["rng"].items() if k != "cuda"})
        except _UNFIT as err:
            raise _unfit(path, "random-generator state", short_reason(err)) from None
        finally:
            set_rng_state(current)
    for key in ("test_loss", "test_accuracy"):
        if key in state and type(state[key]) not in (int, float):
            raise _unfit(path, key, f"{state[key]!r}; expected a number")
    if "loader_generator" in state:
        try:
            torch.Generator().set_state(state["loader_generator"])
        except _UNFIT as err:
            raise _unfit(path, "DataLoader generator state", short_reason(err)) from None


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict, *,
                   source: str = "the checkpoint") -> None:
    """``optimizer.load_state_dict(state)``, first checking that every saved per-parameter
    tensor (Adam's moments, SGD's momentum) has its parameter's shape: ``load_state_dict``
    does not, and a wrong one would fail only at the next ``step()``. For optimizers whose
    state is shaped like the parameters (not, say, Adafactor's factored moments)."""
    try:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ids = [i for group in state["param_groups"] for i in group["params"]]
        if len(ids) != len(params):
            raise ValueError(f"{len(ids)} parameters saved, {len(params)} here")
        for i, param in zip(ids, params, strict=True):
            for name, value in state["state"].get(i, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"{name} of parameter {i} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(param.shape)}")
        optimizer.load_state_dict(state)
    except _UNFIT as err:
        raise CheckpointError(f"{source}: its optimizer state does not fit this optimizer "
                              f"({short_reason(err)}); start afresh with --overwrite or "
                              f"--out-dir NEW_DIR") from None


def load_scheduler(scheduler, state: dict, *, source: str = "the checkpoint") -> None:
    """``scheduler.load_state_dict(state)``, first checking that ``state`` has this
    scheduler's keys with values of the same types: ``load_state_dict`` copies whatever it is
    given, and an edited value would fail only at the next ``step()``."""
    mine = scheduler.state_dict()
    if not isinstance(state, dict) or state.keys() != mine.keys():
        why = (f"keys {sorted(state)[:6]}, expected {sorted(mine)[:6]}"
               if isinstance(state, dict) else f"a {type(state).__name__}, expected a dict")
    else:
        why = next((f"{k} is {v!r}, expected {type(mine[k]).__name__}" for k, v in state.items()
                    if type(v) is not type(mine[k]) and mine[k] is not None), None)
    if why:
        raise CheckpointError(f"{source}: its scheduler state does not fit this scheduler "
                              f"({why}); start afresh with --overwrite or --out-dir NEW_DIR")
    scheduler.load_state_dict(state)


def resume_or_start(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                    pattern: str = "*.pth", extra: tuple[str, ...] = (),
                    settings: dict | None = None, keys: tuple[str, ...] = (),
                    epochs: int | None = None):
    """What an earlier run left in ``out_dir`` decides how this run starts.

    Returns ``None`` (start from the beginning) or ``(path, checkpoint)`` to continue from.

    * nothing there: ``None``;
    * ``--resume``: the newest valid checkpoint, naming each corrupt one it skipped; an error
      if checkpoints are there but none loads (never a silent fresh start over earlier work),
      or if it was written with other ``settings`` (the checkpoint's ``"settings"``: the
      preset and seed that decide the data, the batches and the schedule), or lacks one of
      the ``keys`` the note restores (a file of another note's, with a valid checksum), or
      holds an epoch outside 1..``epochs``, or counters or generator states that do not fit;
    * ``--overwrite``: the earlier run's whole set (checkpoints, their ``.sha256`` files,
      unfinished temp files, the ``extra`` folders such as ``tensorboard``) is removed first,
      so no stale file is left beside the new set;
    * neither: an error naming the files and the three ways on.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise NoteError("--resume and --overwrite together: pick one (continue the earlier "
                        "run with --resume, or replace it with --overwrite)")
    for path in [*out_dir.glob(pattern), *out_dir.glob(pattern + ".sha256")]:
        if path.is_dir():         # never loaded, never removed (--overwrite removes files)
            raise NoteError(f"{path} is a folder where this run keeps a checkpoint file (or its "
                            f"checksum); move it away, or choose another --out-dir NEW_DIR")
    for path in [*out_dir.glob(f".{pattern}.tmp"), *out_dir.glob(f".{pattern}.sha256.tmp")]:
        _plain_file_or_nothing(path, "(a temporary one)")   # a link or folder: refused now,
                                                            # not at the first save
    for name in extra:
        if (out_dir / name).is_symlink():    # never written through, never removed
            raise NoteError(f"{out_dir / name} is a link where this run writes its {name} "
                            f"folder; move it away, or choose another --out-dir NEW_DIR")
        if (out_dir / name).exists() and not (out_dir / name).is_dir():
            raise NoteError(f"{out_dir / name} is a file where this run writes its {name} "
                            f"folder; move it away, or choose another --out-dir NEW_DIR")
    files = sorted((p for p in out_dir.glob(pattern) if not p.name.startswith(".")),
                   key=lambda p: _natural(p.name))
    folders = [out_dir / e for e in extra if (out_dir / e).is_dir() and
               any((out_dir / e).iterdir())]
    if not files and not folders:
        if resume:
            print(f"--resume: no checkpoint in {out_dir} yet; starting from the beginning")
        return None
    listed = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    found = ", ".join(filter(None, [listed, *(f"{f.name}/" for f in folders)]))
    if overwrite:
        leftovers = [*files, *out_dir.glob(pattern + ".sha256"), *out_dir.glob(".*.tmp")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        for folder in folders:
            shutil.rmtree(folder)
        print(f"--overwrite: removed the earlier run from {out_dir} ({found})")
        return None
    if resume:
        latest = latest_valid(out_dir, pattern)
        if latest is None:
            if not files:      # only logs (say TensorBoard) of a run that saved no checkpoint
                print(f"--resume: no checkpoint in {out_dir} yet; starting from the beginning")
                return None
            raise CheckpointError(f"--resume: none of the {len(files)} checkpoints in {out_dir} "
                                  f"loads (each is named above); to start again, pass "
                                  f"--overwrite (removes them) or choose --out-dir NEW_DIR")
        path, state = latest
        saved = state.get("settings")
        if settings is not None and saved is not None and saved != settings:
            differ = "; ".join(f"{k} {saved.get(k)!r} there, {settings.get(k)!r} here"
                               for k in sorted(saved.keys() | settings.keys())
                               if saved.get(k) != settings.get(k))
            raise NoteError(f"--resume: {path.name} was written by a run with other settings "
                            f"({differ}); resuming would mix two runs. Repeat that run's "
                            f"flags with --resume, or start afresh with --overwrite or "
                            f"--out-dir NEW_DIR")
        missing = [k for k in keys if k not in state]
        if missing:
            raise CheckpointError(f"--resume: {path.name} has no {', '.join(map(repr, missing))}"
                                  f" (its keys: {', '.join(sorted(map(str, state))[:8])}): it "
                                  f"is not a checkpoint this note wrote. Start afresh with "
                                  f"--overwrite or --out-dir NEW_DIR", path)
        _check_resumable(path, state, epochs)
        print(f"--resume: continuing from {path.name} (epoch {state.get('epoch')}, "
              f"step {state.get('step')})")
        return latest
    raise NoteError(f"--out-dir {out_dir} holds an earlier run ({found}); continue it with "
                    f"--resume, replace it with --overwrite, or choose another folder with "
                    f"--out-dir NEW_DIR")
