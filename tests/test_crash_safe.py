"""torchnotes.checkpoint and the out-dir checks: atomic saves, checksums, fallback, lock, RNG.

Findings 3, 5, 6 and 7 of issue 9 are reproduced here against the helper; the training notes'
kill-and-resume tests are in test_training.py.
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FORK, ForkedJob
from torch import nn

from torchnotes import (
    NoteError,
    checkpoint,
    cli,
    output_file,
    output_folder,
    prepare_out_dir,
    start,
    writable_file,
)
from torchnotes.checkpoint import (
    PAUSE_ENV_VAR,
    CheckpointError,
    RunLock,
    atomic_save,
    latest_valid,
    load_checkpoint,
    load_weights,
    resume_or_start,
    rng_state,
    set_rng_state,
    sidecar,
)
from torchnotes.cli import fcntl, lock_out_dir, make_parser, other_checkout

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ckpt(epoch: int, value: float = 0.0) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "epoch": epoch, "step": 10 * epoch}


def test_atomic_save_round_trips_and_writes_a_sha256_file(tmp_path):
    path = atomic_save(_ckpt(1, 2.0), tmp_path / "a.pth")
    digest, name = sidecar(path).read_text().split()
    assert name == "a.pth" and len(digest) == 64
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "a.pth.sha256"]  # no temp


def test_finding_6_a_zeroed_block_is_detected(tmp_path):
    path = atomic_save({"model": {"w": torch.randn(4096)}, "epoch": 1}, tmp_path / "a.pth")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)    # 4 KiB zeroed inside
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a\.pth is corrupt: its SHA-256"):
        load_checkpoint(path)


def test_finding_7_truncated_checkpoint_names_the_file(tmp_path):
    path = atomic_save(_ckpt(1), tmp_path / "a.pth")
    path.write_bytes(path.read_bytes()[:1198])
    with pytest.raises(CheckpointError, match="a.pth is corrupt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "--resume" in str(err.value)
    # Even with a matching checksum (written by hand), the loader says "corrupt", not a traceback
    sidecar(path).write_text(f"{__import__('hashlib').sha256(path.read_bytes()).hexdigest()}\n")
    with pytest.raises(CheckpointError, match=r"a\.pth is corrupt \(RuntimeError"):
        load_checkpoint(path)


def test_a_file_without_checksum_is_not_trusted(tmp_path):
    torch.save(_ckpt(1), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="no checksum file plain.pth.sha256"):
        load_checkpoint(tmp_path / "plain.pth")


def test_latest_valid_prefers_the_stored_epoch_and_falls_back_loudly(tmp_path, capsys):
    for e in (1, 2, 10):
        atomic_save(_ckpt(e, float(e)), tmp_path / f"ck_{e}.pth")
    assert latest_valid(tmp_path)[0].name == "ck_10.pth"         # 10 > 2, not "2" > "10"
    (tmp_path / "ck_10.pth").write_bytes(b"")                    # a 0-byte file
    (tmp_path / ".ck_11.pth.tmp").write_bytes(b"half")           # an unfinished save
    path, state = latest_valid(tmp_path)
    assert path.name == "ck_2.pth" and state["epoch"] == 2
    out = capsys.readouterr().out
    assert "ck_10.pth: corrupt (is corrupt: its SHA-256" in out
    assert "falling back to ck_2.pth" in out and ".ck_11" not in out
    assert latest_valid(tmp_path / "empty") is None


@pytest.mark.skipif(not FORK, reason="kills forked savers; this platform has no os.fork")
def test_finding_3_a_kill_during_a_save_leaves_the_previous_file_intact(tmp_path):
    def save_paused(path, stage):
        def target():
            checkpoint._saves = 0                                 # counted per process
            os.environ[PAUSE_ENV_VAR] = f"1:30:{stage}"
            atomic_save({"epoch": 2, "model": {"w": torch.ones(99)}}, path)
        return target

    children, before = {}, {}
    for stage in ("before_sidecar", "before_replace"):       # both children run at once
        path = atomic_save(_ckpt(1, 1.0), tmp_path / stage / "a.pth")
        before[stage] = path.read_bytes()
        children[stage] = ForkedJob(save_paused(path, stage), tmp_path / f"{stage}.log",
                                    background=False)
    for stage, child in children.items():
        try:
            child.wait_for(f"paused {stage}")                     # the temp file is complete
        finally:
            child.kill()                                          # SIGKILL in the save
            child.wait()
        folder = tmp_path / stage
        assert (folder / ".a.pth.tmp").is_file()                  # the unfinished save...
        assert (folder / "a.pth").read_bytes() == before[stage]   # ...never touched a.pth
        assert load_checkpoint(folder / "a.pth")["epoch"] == 1    # still valid and loadable
    # Finished, the new file replaces the old and only its own hash stays listed.
    atomic_save(_ckpt(2), tmp_path / "before_replace" / "a.pth")
    assert len(sidecar(tmp_path / "before_replace" / "a.pth").read_text().splitlines()) == 1


def test_finding_5_a_second_run_on_the_same_out_dir_is_refused(tmp_path):
    with RunLock(tmp_path):
        expected = f"{tmp_path} is in use by another run .pid {os.getpid()}"
        with pytest.raises(NoteError, match=expected):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):                                          # released: free again
        pass


def test_rng_state_is_plain_and_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.random(), np.random.randn(), torch.rand(1)
    state = rng_state()
    expected = (random.random(), np.random.randn(), torch.rand(3))
    atomic_save({"rng": state}, tmp_path / "rng.pth")
    loaded = load_checkpoint(tmp_path / "rng.pth")["rng"]             # weights_only=True
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    set_rng_state(loaded)
    again = (random.random(), np.random.randn(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_load_weights_names_the_first_mismatch_and_both_shapes():
    saved = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)).state_dict()
    other = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 10))
    expected = r"first mismatch at key '1.weight': shape \(3, 8\) in the file vs shape \(10, 8\)"
    with pytest.raises(CheckpointError, match=expected + " in the model"):
        load_weights(other, saved)
    load_weights(other, saved, may_differ=["1.weight", "1.bias"])    # a replaced head
    assert torch.equal(other[0].weight, saved["0.weight"])
    with pytest.raises(CheckpointError, match="'1.bias': shape"):
        load_weights(other, saved, may_differ=["1.weight"])          # only the listed keys


def test_finding_7_seed_overflow_is_a_flag_error(capsys):
    parser = make_parser(str(REPO_ROOT / "autograd" / "00_x.py"), "doc")
    with pytest.raises(SystemExit):
        start(parser, ["--seed", str(2**64), "--device", "cpu"])
    assert "--seed 18446744073709551616: expected an integer from 0 to 2**64 - 1" in \
        capsys.readouterr().err


def test_finding_7_out_dir_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHNOTES_RUNS", raising=False)
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "file": "is a file; expected a folder",
        tmp_path / "file" / "sub": "goes through a file",
        tmp_path / ("x" * 300): "is too long for the file system",
    }
    for path, expected in cases.items():
        with pytest.raises(NoteError, match=expected) as err:
            prepare_out_dir(path)
        assert str(path) in str(err.value) and "--out-dir NEW_DIR" in str(err.value)
        assert "\n" not in str(err.value)


def test_every_note_refuses_a_bad_out_dir_before_any_work(tmp_path, monkeypatch, capsys):
    """start() checks --out-dir for every note: notes that write late (a PNG after training,
    TensorBoard logs) once crashed there with a raw NotADirectoryError or FileExistsError."""
    from conftest import import_note

    from torchnotes.curriculum import notes

    monkeypatch.delenv("TORCHNOTES_RUNS", raising=False)
    (tmp_path / "file").write_text("x")
    bad = {tmp_path / "file": "is a file; expected a folder",
           tmp_path / "file" / "sub": "goes through a file where a folder is expected"}
    for item in notes():
        module = import_note(item.path)
        for path, expected in bad.items():
            with pytest.raises(NoteError, match=expected):
                module.main(["--smoke", "--device", "cpu", "--out-dir", str(path)])
            printed = capsys.readouterr().out
            assert "✓" not in printed, (item.name, printed)       # stopped before any claim
    assert (tmp_path / "file").read_text() == "x" and sorted(tmp_path.iterdir()) == [
        tmp_path / "file"]


def test_the_start_check_creates_nothing(tmp_path, monkeypatch):
    parser = make_parser(str(REPO_ROOT / "autograd" / "00_x.py"), "doc")
    start(parser, ["--device", "cpu", "--out-dir", str(tmp_path / "new" / "sub")])
    assert not (tmp_path / "new").exists()        # a note that writes nothing leaves nothing
    monkeypatch.setattr(os, "access", lambda *a, **k: False)         # as for a read-only disk
    with pytest.raises(NoteError, match=r"--out-dir .*new/sub is not writable"):
        start(parser, ["--device", "cpu", "--out-dir", str(tmp_path / "new" / "sub")])


# ---- crafted entries inside --out-dir: refused by name, never removed, never written through --

def _crafted(tmp_path) -> Path:
    out = tmp_path / "out"
    (out / "grid.png").mkdir(parents=True)
    (out / "grid.png" / "mine.txt").write_text("keep")            # a folder where a file goes
    (out / "tb").write_text("keep")                                # a file where a folder goes
    (tmp_path / "elsewhere.txt").write_text("keep")
    try:
        (out / "linked.png").symlink_to(tmp_path / "elsewhere.txt")    # a link to a file
        (tmp_path / "empty").mkdir()
        (out / "linked_tb").symlink_to(tmp_path / "empty")         # a link to a folder
    except OSError:                        # Windows without the symlink privilege
        pytest.skip("this account cannot make symbolic links")
    return out


def test_output_paths_refuse_the_other_kind_and_links(tmp_path):
    out = _crafted(tmp_path)
    with pytest.raises(NoteError, match=r"grid.png is a folder; this note writes a file"):
        output_file(out, "grid.png")
    with pytest.raises(NoteError, match=r"linked.png is a link; this note writes a file"):
        output_file(out, "linked.png")
    with pytest.raises(NoteError, match=r"tb already exists and was not generated by these "
                                        r"notes, so it is not replaced"):
        output_folder(out, "tb")
    with pytest.raises(NoteError, match=r"linked_tb is a link; this note makes a folder"):
        output_folder(out, "linked_tb")                    # once filled the folder it names
    assert not any((tmp_path / "empty").iterdir())
    for name in ("grid.png", "linked.png"):
        with pytest.raises(NoteError, match=f"{name} is a"):
            writable_file(out / name, overwrite=True)      # --overwrite replaces files only
    with pytest.raises(NoteError, match=r"tb is a file where a folder is expected"):
        writable_file(out / "tb" / "model.pth")
    assert (out / "grid.png" / "mine.txt").read_text() == "keep"
    assert (out / "tb").read_text() == (tmp_path / "elsewhere.txt").read_text() == "keep"
    assert output_file(out, "new.png") == out / "new.png" and output_folder(out, "logs").is_dir()


def test_resume_or_start_refuses_a_folder_named_like_a_checkpoint(tmp_path):
    (tmp_path / "moli_epoch_1.pth").mkdir()
    (tmp_path / "moli_epoch_1.pth" / "mine.txt").write_text("keep")
    for flags in (dict(resume=False, overwrite=True), dict(resume=True, overwrite=False)):
        with pytest.raises(NoteError, match=r"moli_epoch_1.pth is a folder where this run keeps"):
            resume_or_start(tmp_path, pattern="moli_epoch_*.pth", **flags)
    assert (tmp_path / "moli_epoch_1.pth" / "mine.txt").read_text() == "keep"
    (tmp_path / "moli_epoch_1.pth" / "mine.txt").unlink()
    (tmp_path / "moli_epoch_1.pth").rmdir()
    (tmp_path / "tensorboard").write_text("keep")
    with pytest.raises(NoteError, match=r"tensorboard is a file where this run writes its "
                                        r"tensorboard folder"):
        resume_or_start(tmp_path, resume=False, overwrite=True, extra=("tensorboard",))
    assert (tmp_path / "tensorboard").read_text() == "keep"
    (tmp_path / "tensorboard").unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tensorboard").symlink_to(tmp_path / "elsewhere")   # --overwrite: a traceback
    for flags in (dict(resume=False, overwrite=True), dict(resume=False, overwrite=False)):
        with pytest.raises(NoteError, match=r"tensorboard is a link where this run writes its"):
            resume_or_start(tmp_path, extra=("tensorboard",), **flags)


@pytest.mark.parametrize("rel,name,kind", [
    ("advanced/generative_models/01_vae_basics.py", "vae_grid.png", "folder"),
    ("advanced/generative_models/03_gan_training.py", "gan_modes.png", "folder"),
    ("data_pipeline/05_tensorboard_basics.py", "batch_grid.png", "folder"),
    ("nn_modules/02_nn_relu.py", "tb", "file"),
    ("data_pipeline/01_read_data.py", "stand-in-data", "file"),
    ("training/01_train.py", "tensorboard", "file"),
    ("training/01_train.py", "moli_epoch_2.pth.sha256", "folder"),
    # A link at a temp or lock name: the run's bytes, or its pid, once went into the file the
    # link points to (the checkpoint temp then became moli_epoch_1.pth, a link to it).
    ("training/01_train.py", ".moli_epoch_1.pth.tmp", "link"),
    ("data_pipeline/01_read_data.py", ".lock", "link"),
    ("data_pipeline/01_read_data.py", ".lock", "folder"),
    ("data_pipeline/01_read_data.py", ".lock", "file"),        # a file of the user's: "keep"
])
def test_notes_refuse_a_crafted_entry_and_leave_it(note, tmp_path, rel, name, kind):
    """These once ended in IsADirectoryError/NotADirectoryError tracebacks, the PNG notes after
    all their training, or wrote through the link; now each names the entry, most before any
    work, and leaves it."""
    out = tmp_path / "out"
    out.mkdir()
    if kind == "folder":
        (out / name).mkdir()
        (out / name / "mine.txt").write_text("keep")
    elif kind == "link":
        (tmp_path / "elsewhere.txt").write_text("keep")
        (out / name).symlink_to(tmp_path / "elsewhere.txt")
    else:
        (out / name).write_text("keep")
    with pytest.raises(NoteError, match=f"{name} (is a|is not a lock file|already exists and "
                                        f"was not generated)"):
        note(rel).main(["--smoke", "--device", "cpu", "--out-dir", str(out)])
    kept = out / name / "mine.txt" if kind == "folder" else out / name
    assert kept.read_text() == "keep" and (kind == "link") == (out / name).is_symlink()


@pytest.mark.skipif(fcntl is None, reason="no flock on this platform: one run per folder is "
                    "not enforced there")
def test_a_second_run_on_the_same_out_dir_stops_before_touching_it(note, tmp_path, capsys):
    """Two runs of a data note in one folder: the second once deleted and regenerated the
    first's stand-in JPEGs under it ("000007.jpg is not a readable image")."""
    read = note("data_pipeline/01_read_data.py")
    argv = ["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)]
    read.main(argv)
    read.main(argv)                        # the same process, one run after the other: fine
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    fd = lock_out_dir(tmp_path)            # free once main() returned; now another run holds it
    try:
        with pytest.raises(NoteError, match=r"--out-dir .* is in use by another run \(pid "
                                            rf"{os.getpid()} holds .lock\)"):
            read.main(argv)
    finally:
        os.close(fd)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    quiet = tmp_path / "quiet"
    note("autograd/02_autograd_basics.py").main(["--smoke", "--device", "cpu", "--out-dir",
                                                 str(quiet)])
    assert not quiet.exists()             # a note that writes nothing claims nothing


def _deny_writes(monkeypatch, folder: Path):
    """A read-only folder: chmod where it binds, a refusing write probe where we are root."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and (Path(dir) == folder or folder in Path(dir).parents):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # root ignores chmod


def test_finding_7_read_only_out_dir_and_unwritable_runs_root(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHNOTES_RUNS", raising=False)
    _deny_writes(monkeypatch, tmp_path / "ro")
    with pytest.raises(NoteError, match=r"--out-dir .*ro is not writable.*--out-dir NEW_DIR"):
        prepare_out_dir(tmp_path / "ro")
    monkeypatch.setenv("TORCHNOTES_RUNS", str(tmp_path / "ro"))
    with pytest.raises(NoteError, match=r"\$TORCHNOTES_RUNS .* is not writable.*set "
                                        r"TORCHNOTES_RUNS to a writable folder"):
        prepare_out_dir(tmp_path / "ro" / "training" / "01_train")


def test_finding_8_a_second_checkout_is_detected(tmp_path, capsys):
    (tmp_path / "torchnotes").mkdir()
    (tmp_path / "training").mkdir()
    script = tmp_path / "training" / "01_train.py"
    assert other_checkout(REPO_ROOT / "training" / "01_train.py") is None
    line = other_checkout(script)
    assert str(tmp_path) in line and str(REPO_ROOT) in line and "pip install -e" in line
    start(make_parser(str(script), "doc"), ["--device", "cpu"])
    assert capsys.readouterr().out.startswith("note: this script is in the checkout")



def _full_disk_at(limit: int) -> None:
    """In a forked child: every file this process writes past ``limit`` bytes fails, as on a
    full disk (RLIMIT_FSIZE: the write gets EFBIG instead of the SIGXFSZ kill)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.skipif(not FORK, reason="needs os.fork and RLIMIT_FSIZE (Linux, macOS)")
def test_a_full_disk_mid_save_keeps_the_previous_checkpoint_and_no_temp(tmp_path):
    path = atomic_save(_ckpt(1, 1.0), tmp_path / "a.pth")
    before = path.read_bytes()

    def target():
        _full_disk_at(64 * 1024)
        try:
            atomic_save({"epoch": 2, "model": {"w": torch.ones(100_000)}}, path)   # 400 kB
        except (OSError, RuntimeError) as err:
            print(cli.disk_full_message(err, tmp_path))
            return
        raise AssertionError("the save past the limit did not fail")

    child = ForkedJob(target, tmp_path / "child.log", background=False)
    assert child.wait() == 0, child.read_log()
    log = child.read_log()
    assert f"could not be written: File too large. The disk holding --out-dir {tmp_path}" in log
    assert "Fix: free some space, or pass --out-dir on a disk with room" in log
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "a.pth.sha256", "child.log"]


def test_a_full_disk_and_ctrl_c_are_one_line_other_errors_keep_a_traceback(tmp_path,
                                                                           monkeypatch, capsys):
    parser = make_parser(str(REPO_ROOT / "training" / "01_train.py"), None)
    start(parser, ["--out-dir", str(tmp_path / "run")])
    monkeypatch.setitem(cli._run, "told_disk_full", False)
    passed_on = []
    monkeypatch.setitem(cli._run, "previous_hook", lambda *exc: passed_on.append(exc[1]))
    try:                                    # what torch.save raises after a short write
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from err
    except RuntimeError as err:
        torch_error = err
    cli._excepthook(RuntimeError, torch_error, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: a file could not be written: No space left on device. "
                          f"The disk holding --out-dir {tmp_path / 'run'} has ")
    cli._excepthook(OSError, OSError(errno.ENOSPC, "No space left on device"), None)
    assert capsys.readouterr().err == ""                  # said once (a thread, then main)
    # TensorBoard's writer thread hits the full disk first: its line, then none from main
    monkeypatch.setitem(cli._run, "told_disk_full", False)

    def writer():
        raise OSError(errno.ENOSPC, "No space left on device")

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert capsys.readouterr().err.count("error: a file could not be written") == 1
    cli._excepthook(RuntimeError, torch_error, None)
    assert capsys.readouterr().err == ""
    other = OSError(errno.EIO, "Input/output error")
    cli._excepthook(OSError, other, None)
    assert passed_on == [other]                           # anything else: Python's traceback
    cli._excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)      # Ctrl-C: one line
    assert capsys.readouterr().err == (
        f"\nstopped by Ctrl-C. What this run wrote to --out-dir {tmp_path / 'run'} stays there; "
        f"a checkpoint it was saving is dropped and the previous one kept (the training notes "
        f"continue with --resume).\n")
    # torch.save's own message alone (no OSError behind it) is a full disk too
    assert "stopped short" in cli.disk_full_message(RuntimeError("unexpected pos 7 vs 9"), None)
    assert cli.disk_full_message(RuntimeError("unexpected key"), None) is None
