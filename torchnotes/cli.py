"""The flags every note shares, seeding, progress bars and safe output paths."""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import stat
import sys
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

try:
    import fcntl
except ImportError:                  # Windows: no flock; one run per folder is not enforced
    fcntl = None

from .curriculum import REPO_ROOT, repo_relative
from .device import CHOICES, ENV_VAR, DeviceError, get_device

RUNS_ENV_VAR = "TORCHNOTES_RUNS"


class NoteError(SystemExit):
    """Bad input to a note (a flag, a file, a folder): exits with the message, no traceback.

    The message names the flag or path, what was expected, and how to fix it.
    """

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def script_repo(script: str | os.PathLike) -> Path:
    """The checkout a note lives in: ``<repo>`` for ``<repo>/<topic>/NN_name.py``."""
    path = Path(script).resolve()
    topic = Path(repo_relative(path)).parent              # "autograd" or "advanced/peft"
    return path.parents[len(topic.parts)]


def default_out_dir(script: str | os.PathLike) -> Path:
    """``<repo>/runs/<topic>/<script stem>``; ``TORCHNOTES_RUNS`` moves the ``runs`` root.

    The root sits beside the topic folders (git-ignored), wherever the script is run from, so
    a run never writes into the current directory.
    """
    path = Path(script).resolve()
    topic = Path(repo_relative(path)).parent
    root = Path(os.environ.get(RUNS_ENV_VAR) or script_repo(path) / "runs")
    return root / topic / path.stem


def other_checkout(script: str | os.PathLike) -> str | None:
    """One line when ``script`` belongs to another checkout than the imported ``torchnotes``.

    An editable install points at one checkout; a note run from a second checkout would
    silently use the first one's helper and ``data/``.
    """
    repo = script_repo(script)
    if repo == REPO_ROOT or not (repo / "torchnotes").is_dir():
        return None
    return (f"note: this script is in the checkout {repo}, but torchnotes (and its data/) "
            f"come from {REPO_ROOT}; to use this checkout's: pip install -e {repo}")


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
    parser.torchnotes_script = script         # start() checks which checkout it belongs to
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


# ---- one run per --out-dir ------------------------------------------------------------------
# A note that writes claims its --out-dir (an exclusive flock on ``<out-dir>/.lock``) before its
# first write and holds it until the run ends: its main() returns (its parsed flags are freed),
# the process exits (the kernel drops the lock however it ends), or the next note run in this
# process calls start(). A second run on the same folder stops with a NoteError instead of
# deleting the first one's stand-in data or logs under it. Notes that write nothing claim
# nothing.

_run: dict = {"out_dir": None, "claims": {}, "token": None,    # this process's current run
              "last_out_dir": None, "told_disk_full": False,
              "previous_hook": sys.excepthook, "previous_thread_hook": threading.excepthook}


def lock_out_dir(out_dir: Path) -> int:
    """Open ``out_dir/.lock`` and take its exclusive lock (it then holds our pid); the fd.

    Only a lock file is ever rewritten: a link, a folder, or a file holding anything but a
    pid at that name is refused by name and left as it is (writing our pid through a link
    planted there would overwrite the file it points to).
    """
    path = out_dir / ".lock"
    refused = NoteError(f"{path} is not a lock file of these notes (a link, a folder, or a file "
                        f"holding other data); it is left as it is. Fix: move it away, or "
                        f"choose another folder with --out-dir NEW_DIR.")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:                                  # ELOOP (a link), EISDIR (a folder)
        raise refused from None
    info = os.fstat(fd)
    held = os.read(fd, 64)
    os.lseek(fd, 0, os.SEEK_SET)
    pid_or_nothing = held.strip().isdigit() or not held.strip()
    if not (stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and pid_or_nothing):
        os.close(fd)
        raise refused
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = held.decode(errors="replace").strip() or "?"
            os.close(fd)
            raise NoteError(f"--out-dir {out_dir} is in use by another run (pid {holder} holds "
                            f"{path.name}); wait for it to finish, or choose another folder "
                            f"with --out-dir NEW_DIR") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claims_out_dir(path: str | os.PathLike) -> bool:
    """Is ``path`` this run's --out-dir, claimed by this process (re-entry is then free)?"""
    return _run["claims"].get(Path(path).resolve(), (None, None))[1] == os.getpid()


def _claim(path: Path) -> None:
    """About to write at ``path``: if it lies in this run's --out-dir, claim that folder."""
    out = _run["out_dir"]
    if out is None or os.environ.get("RANK", "0") != "0":     # torchrun: rank 0 owns the folder
        return
    resolved = path.resolve()
    if (resolved != out and out not in resolved.parents) or claims_out_dir(out):
        return
    out.mkdir(parents=True, exist_ok=True)
    _run["claims"][out] = (lock_out_dir(out), os.getpid())


def _end_run(token: object = None) -> None:
    """The note run ``token`` (default: whichever is current) is over: drop its claims."""
    if token is not None and token is not _run["token"]:
        return                                      # a later run has started since
    for fd, pid in _run["claims"].values():
        if fcntl is not None and pid == os.getpid():   # a forked child never unlocks its parent's
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    _run["claims"].clear()
    _run["out_dir"] = _run["token"] = None


# ---- a full disk, Ctrl-C ----------------------------------------------------------------------
# A write that fails because the disk (a quota, a file-size limit) is full surfaces as an
# OSError deep inside torch.save, TensorBoard's writer thread or PIL, or as torch.save's
# "unexpected pos" RuntimeError. start() installs a hook that turns such an uncaught error
# into one line naming the folder, its free space and the fix, and Ctrl-C into one line on
# what was kept; every other error keeps its traceback.

_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TORCH_WRITER_ERRORS = ("unexpected pos", "PytorchStreamWriter failed writing")


def write_failure(exc: BaseException) -> str | None:
    """What went wrong, when ``exc`` (or an error it arose from) means a file could not be
    written for lack of space: ``"No space left on device"``; ``None`` for any other error."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return exc.strerror or os.strerror(exc.errno)
        if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITER_ERRORS):
            found = "torch.save's file writer stopped short (the disk is likely full)"
        exc = exc.__cause__ or exc.__context__
    return found


def disk_full_message(exc: BaseException, out_dir: str | os.PathLike | None) -> str | None:
    """The one-line error a full disk gets (None for any other error)."""
    why = write_failure(exc)
    if why is None:
        return None
    folder = Path(out_dir) if out_dir is not None else Path.cwd()
    where = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:,.1f} MiB free" if where else "?"
    except OSError:
        free = "free space unknown"
    return (f"error: a file could not be written: {why}. The disk holding --out-dir {folder} "
            f"has {free}; a file this run was writing may be cut short. Fix: free some "
            f"space, or pass --out-dir on a disk with room.")


def _excepthook(kind, exc, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):   # Ctrl-C: what the learner wants to know
        print(f"\nstopped by Ctrl-C. What this run wrote to --out-dir {_run['last_out_dir']} "
              f"stays there; a checkpoint it was saving is dropped and the previous one kept "
              f"(the training notes continue with --resume).", file=sys.stderr)
        return
    line = disk_full_message(exc, _run["last_out_dir"])
    if line is None:
        _run["previous_hook"](kind, exc, tb)
    elif not _run["told_disk_full"]:
        _run["told_disk_full"] = True
        print(line, file=sys.stderr)


def _thread_excepthook(args) -> None:      # TensorBoard writes its event files in a thread
    if disk_full_message(args.exc_value, _run["last_out_dir"]) is None:
        _run["previous_thread_hook"](args)
    else:
        _excepthook(args.exc_type, args.exc_value, args.exc_traceback)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start(parser: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, torch.device]:
    """Parse flags, pick the device, check --out-dir, seed everything; print one line saying so."""
    args = parser.parse_args(argv)
    _end_run()
    try:
        device = get_device(args.device)
    except DeviceError as err:
        parser.error(str(err))
    if not 0 <= args.seed < 2**64:              # torch.manual_seed takes 64 bits
        parser.error(f"--seed {args.seed}: expected an integer from 0 to 2**64 - 1 "
                     f"({2**64 - 1}); pick a smaller seed")
    if getattr(args, "out_dir", None) is not None:
        check_out_dir(args.out_dir)             # a bad folder stops here, before any work
        out_dir = _run["last_out_dir"] = Path(args.out_dir).resolve()   # for _excepthook
        _run["out_dir"] = out_dir                   # claimed at its first write
        _run["token"] = token = object()
        weakref.finalize(args, _end_run, token)     # main() returned: its flags are freed
    if sys.excepthook is not _excepthook:       # a full disk: one line, not a traceback
        _run["previous_hook"], sys.excepthook = sys.excepthook, _excepthook
    if threading.excepthook is not _thread_excepthook:
        _run["previous_thread_hook"] = threading.excepthook
        threading.excepthook = _thread_excepthook
    # A path or name the terminal cannot encode prints as \xe9 instead of crashing the run.
    if hasattr(sys.stdout, "reconfigure") and getattr(sys.stdout, "errors", "") == "strict":
        sys.stdout.reconfigure(errors="backslashreplace")
    line = other_checkout(getattr(parser, "torchnotes_script", None) or REPO_ROOT)
    if line:
        print(line)
    seed_everything(args.seed)
    mode = "smoke" if args.smoke else "full"
    print(f"device: {device} | seed: {args.seed} | mode: {mode} | torch {torch.__version__}")
    return args, device


def output_file(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir / name``: a file this note writes afresh each run (a preview image).

    ``out_dir`` is created. A folder or a link already at that name is refused, before the
    note's work, with the path named; the note never writes through a link into a file
    elsewhere, and never replaces a folder.
    """
    return _plain_file_or_nothing(prepare_out_dir(out_dir) / name, "(replaced each run)")


def _plain_file_or_nothing(path: Path, note: str = "") -> Path:
    """``path`` if nothing or a plain file is there; a folder or a link: NoteError by name
    (a note never replaces a folder, nor writes through a link into a file elsewhere)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = ("a link" if path.is_symlink() else "a folder" if path.is_dir()
                else "not a plain file")
        also = f" {note}" if note else ""
        raise NoteError(f"{path} is {kind}; this note writes a file of that name{also}. Fix: "
                        f"move it away, or choose another folder with --out-dir NEW_DIR.")
    return path


def output_folder(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir / name``: a folder this note fills afresh each run (TensorBoard logs, per-rank
    results), so a rerun's curves never mix with the last run's. See :func:`fresh_folder`."""
    return fresh_folder(prepare_out_dir(out_dir) / name)


GENERATED_MARKER = ".torchnotes-generated"   # marks a folder torchnotes made (safe to replace)


def _remove_generated(folder: Path) -> None:
    """Delete a folder torchnotes generated so that a kill at any moment leaves it marked:
    renamed aside first, its marker deleted last. The next run finishes the job."""
    if not folder.name.startswith("."):
        aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, aside)
        folder = aside
    for child in folder.iterdir():
        if child.name == GENERATED_MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (folder / GENERATED_MARKER).unlink()
    folder.rmdir()


def fresh_folder(folder: str | os.PathLike) -> Path:
    """An empty ``folder`` to generate files into, replacing one torchnotes generated before;
    anything else there (a file, a non-empty folder torchnotes did not make: no marker file)
    is never deleted: NoteError."""
    folder = Path(folder)
    make_folder(folder.parent)             # this run claims its --out-dir before replacing
    if folder.is_symlink():                # even to an empty folder: never written through
        raise NoteError(f"{folder} is a link; this note makes a folder of that name (replaced "
                        f"each run). Fix: move it away, or choose another --out-dir.")
    mine = (folder / GENERATED_MARKER).is_file() or (folder.is_dir() and not any(folder.iterdir()))
    if folder.exists() and not mine:
        raise NoteError(f"{folder} already exists and was not generated by these notes, so "
                        f"it is not replaced. Fix: move it away, or choose another --out-dir.")
    for old in [*folder.parent.glob(f".{folder.name}.old-*"), folder]:
        if old.is_dir() and not old.is_symlink() and (old / GENERATED_MARKER).is_file():
            _remove_generated(old)
    make_folder(folder)                                 # names a file in the way, if any
    (folder / GENERATED_MARKER).write_text("generated by torchnotes; safe to delete\n")
    return folder


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
    path = _plain_file_or_nothing(Path(path))            # --overwrite never replaces those
    if path.exists() and not overwrite:
        raise NoteError(
            f"{path} already exists (left by an earlier run). Keep it by choosing another "
            f"folder with --out-dir NEW_DIR, or replace it by passing --overwrite."
        )
    make_folder(path.parent)
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a file in the way is named in a NoteError, not a traceback."""
    path = Path(path)
    try:
        _claim(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                       None)
        why = f"{blocker} is a file where a folder is expected" if blocker else err.strerror
        raise NoteError(f"{path} cannot be made: {why}. Fix: move it away, or choose another "
                        f"folder with --out-dir NEW_DIR.") from None
    return path


def _out_dir_words(path: Path) -> tuple[str, str]:
    """How an error names the folder (the flag, or ``$TORCHNOTES_RUNS`` that chose it) and
    what fixes it."""
    runs = os.environ.get(RUNS_ENV_VAR)
    from_env = bool(runs) and Path(runs).resolve() in (path.resolve(), *path.resolve().parents)
    what = f"${RUNS_ENV_VAR} ({runs}), the root of the default --out-dir {path}," if from_env \
        else f"--out-dir {path}"
    fix = (f"set {RUNS_ENV_VAR} to a writable folder, or pass --out-dir NEW_DIR" if from_env
           else "choose another folder with --out-dir NEW_DIR")
    return what, fix


def _out_dir_error(path: Path, err: OSError) -> NoteError:
    what, fix = _out_dir_words(path)
    if err.errno == errno.ENAMETOOLONG:
        problem = (f"is too long for the file system ({len(str(path))} characters; at most "
                   f"255 bytes per name)")
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem = "is not writable (permission denied or a read-only file system)"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        problem = "goes through a file where a folder is expected"
    else:
        problem = f"cannot be created ({err.strerror})"
    return NoteError(f"{what} {problem}; expected a writable folder. Fix: {fix}")


def check_out_dir(path: str | os.PathLike) -> Path:
    """Refuse an ``--out-dir`` that cannot become a writable folder, creating nothing.

    ``start()`` calls it for every note, so a file, a path through a file, a name too long or
    a read-only place stops the run before any work, also in notes that write their files
    late (an image after training) or not at all.
    """
    path = Path(path)
    what, fix = _out_dir_words(path)
    try:
        if any(len(os.fsencode(part)) > 255 for part in path.parts):
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
        if path.exists() and not path.is_dir():
            raise NoteError(f"{what} is a file; expected a folder. Fix: {fix}")
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None:                       # not even "." (a deleted working folder)
            raise OSError(errno.ENOENT, "No such file or directory", str(path))
        if not existing.is_dir():
            raise OSError(errno.ENOTDIR, "Not a directory", str(existing))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "Permission denied", str(existing))
    except OSError as err:
        raise _out_dir_error(path, err) from None
    return path


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and prove it is writable, or raise one NoteError saying what to do.

    Called before any training, so a bad ``--out-dir`` (a file, read-only, a name too long)
    or an unwritable ``$TORCHNOTES_RUNS`` stops the run at once, not after an epoch.
    """
    path = check_out_dir(path)
    try:
        _claim(path)
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)  # a new file, never
        os.close(fd)                                              # through a planted link
        os.unlink(probe)
    except OSError as err:
        raise _out_dir_error(path, err) from None
    return path
