"""training/: Moli, 01's own loop, crash-safe checkpoints and --resume, 02 and 03.

The smoke suite runs each note once; these tests pin the pieces, reproduce issue 9's findings
against the notes, and prove every claim family can fail; runs of 01 are SIGKILLed (at a
random moment and inside a save) and resumed bit-identical.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKGROUND, FORK, background
from tb_events import merged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchnotes import ClaimError, NoteError
from torchnotes.checkpoint import (
    PAUSE_ENV_VAR,
    CheckpointError,
    RunLock,
    atomic_save,
    load_checkpoint,
)

CPU = torch.device("cpu")
SMOKE = ["--smoke", "--device", "cpu"]


@pytest.fixture
def train01(note):
    return note("training/01_train.py")


@pytest.fixture
def engine(train01):
    import model  # put on sys.path's cache by importing training/01_train.py

    return model


@pytest.fixture(scope="session")       # session: the kill test, run last, compares with it
def finished(tmp_path_factory):
    """One finished smoke run of training/01 (copied by the tests that change it).

    It also reproduces findings 4 and 8: it runs with --overwrite over an earlier 3-epoch set,
    into a non-ASCII --out-dir, printing to an ASCII-only stdout, with --data real. One
    intra-op thread, like every run it is compared with bit for bit.
    """
    from conftest import REPO_ROOT, import_note

    out = tmp_path_factory.mktemp("finished") / "runs-\u00e9t\u00e9"
    for epoch in (1, 2, 3):                                  # an earlier 3-epoch run
        atomic_save({"epoch": epoch}, out / f"moli_epoch_{epoch}.pth")
    raw, stdout, threads = io.BytesIO(), sys.stdout, torch.get_num_threads()
    ascii_only = io.TextIOWrapper(raw, encoding="ascii")     # errors="strict", like a C locale
    sys.stdout = ascii_only
    torch.set_num_threads(1)
    try:
        result = import_note(REPO_ROOT / "training" / "01_train.py").main(
            [*SMOKE, "--out-dir", str(out), "--overwrite", "--data", "real"])
    finally:
        sys.stdout = stdout
        torch.set_num_threads(threads)
        ascii_only.flush()
        printed = raw.getvalue().decode("ascii")
        ascii_only.detach()                                  # keep `raw` open
    return out, result, printed


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _copy(finished, tmp_path):
    shutil.copytree(finished[0], tmp_path / "run")
    (tmp_path / "run" / ".lock").unlink()
    return tmp_path / "run"


def _tiny_loader(n=96, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _tensors(checkpoint: dict) -> list[torch.Tensor]:
    opt = checkpoint["optimizer"]["state"]
    return [*checkpoint["model"].values(), *(t for s in opt.values() for t in s.values()),
            checkpoint["losses"]]


def test_moli_is_the_specs_network(engine):
    moli = engine.Moli()
    convs = [m for m in moli.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in moli.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (5, 5), (2, 2)), (32, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 64), (64, 10)]
    assert not any(isinstance(m, (nn.ReLU, nn.Sigmoid)) for m in moli.modules())
    assert moli(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_01_holds_its_own_loop():
    from conftest import REPO_ROOT

    source = (REPO_ROOT / "training" / "01_train.py").read_text(encoding="utf-8")
    for call in ("model.train()", "optimizer.zero_grad()", "loss.backward()",
                 "optimizer.step()", "model.eval()", "torch.no_grad()", "atomic_save("):
        assert call in source, call


def test_evaluate_matches_a_hand_computation(train01, engine):
    torch.manual_seed(0)
    moli, loader = engine.Moli(), _tiny_loader()
    loss, acc = train01.evaluate(moli, loader, nn.CrossEntropyLoss(), CPU)
    x, y = loader.dataset.tensors
    with torch.no_grad():
        logits = moli.eval()(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == (logits.argmax(1) == y).sum().item() / len(y)
    assert not moli.training


def test_train_one_epoch_steps_and_callback(train01, engine):
    torch.manual_seed(0)
    moli, seen = engine.Moli(), []
    opt = torch.optim.Adam(moli.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in moli.parameters()]
    losses = train01.train_one_epoch(moli, _tiny_loader(), nn.CrossEntropyLoss(), opt, CPU,
                                     on_step=seen.append)
    assert len(losses) == 3 and seen == losses and moli.training
    assert all(not torch.equal(a, b) for a, b in zip(before, moli.parameters(), strict=True))


def test_01_smoke_learns_logs_and_checkpoints_everything(finished):
    out, result, _ = finished
    assert result["test_accuracy"] >= 0.30 and result["reloaded_accuracy"] == \
        result["test_accuracy"]
    assert sorted(p.name for p in out.glob("moli_*")) == [
        "moli_epoch_1.pth", "moli_epoch_1.pth.sha256", "moli_epoch_2.pth",
        "moli_epoch_2.pth.sha256"]
    state = torch.load(out / "moli_epoch_2.pth", map_location=CPU, weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "losses", "rng", "loader_generator"} <= \
        set(state)
    assert state["epoch"] == 2 and state["step"] == len(result["losses"]) == 32
    assert state["losses"].tolist() == result["losses"]
    assert result["compared"] == 40                        # 10 weights + 3 Adam tensors each
    tb = merged(result["tensorboard"])["scalars"]
    assert tb["train/loss"] == list(range(32))
    assert tb["test/loss"] == tb["test/accuracy"] == [1, 2]


def test_finding_4_and_8_overwrite_replaces_the_set_and_non_ascii_prints(finished):
    out, _, printed = finished
    assert "runs-\\xe9t\\xe9" in printed                      # the summary line did not crash
    assert "--data real is ignored" in printed               # --smoke said it overrode it
    assert "--overwrite: removed the earlier run" in printed
    assert sorted(p.name for p in out.glob("moli_*.pth")) == ["moli_epoch_1.pth",
                                                             "moli_epoch_2.pth"]
    assert not list(out.glob("moli_epoch_3*"))               # no stale file beside the set


def test_01_refuses_an_earlier_run_before_training(train01, finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = (out / "moli_epoch_2.pth").read_bytes()
    with pytest.raises(NoteError, match="holds an earlier run .moli_epoch_1.pth, "
                                        "moli_epoch_2.pth, tensorboard/.; continue it with "
                                        "--resume, replace it with --overwrite"):
        train01.main([*SMOKE, "--out-dir", str(out)])
    assert (out / "moli_epoch_2.pth").read_bytes() == before
    with pytest.raises(NoteError, match="pick one"):
        train01.main([*SMOKE, "--out-dir", str(out), "--resume", "--overwrite"])


def test_finding_6_resume_falls_back_from_a_corrupt_checkpoint(train01, finished, tmp_path,
                                                                capsys, one_thread):
    out = _copy(finished, tmp_path)
    data = bytearray((out / "moli_epoch_2.pth").read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # 4 KiB zeroed inside
    (out / "moli_epoch_2.pth").write_bytes(bytes(data))
    capsys.readouterr()
    train01.main([*SMOKE, "--out-dir", str(out), "--resume"])
    printed = capsys.readouterr().out
    assert "moli_epoch_2.pth: corrupt (is corrupt: its SHA-256" in printed
    assert "falling back to moli_epoch_1.pth" in printed
    assert "--resume: continuing from moli_epoch_1.pth (epoch 1, step 16)" in printed
    ours = _tensors(load_checkpoint(out / "moli_epoch_2.pth"))
    theirs = _tensors(load_checkpoint(finished[0] / "moli_epoch_2.pth"))
    assert all(map(torch.equal, ours, theirs))               # the same end, bit for bit


def test_resume_never_starts_fresh_over_unreadable_work(train01, finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for epoch in (1, 2):
        path = out / f"moli_epoch_{epoch}.pth"
        path.write_bytes(path.read_bytes()[:1198])           # truncated, as a SIGKILL once did
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints in .* loads"):
        train01.main([*SMOKE, "--out-dir", str(out), "--resume"])
    assert "no valid checkpoint to fall back to" in capsys.readouterr().out
    assert len((out / "moli_epoch_1.pth").read_bytes()) == 1198   # nothing replaced


def test_finding_7_a_checkpoint_of_another_architecture(train01, finished, tmp_path):
    out = _copy(finished, tmp_path)
    checkpoint = load_checkpoint(out / "moli_epoch_2.pth")
    checkpoint["model"]["model.7.weight"] = torch.zeros(64, 2048)     # a wider first Linear
    atomic_save(checkpoint, out / "moli_epoch_2.pth")
    with pytest.raises(CheckpointError, match=r"moli_epoch_2.pth does not fit Moli: first "
                                              r"mismatch at key 'model.7.weight': shape "
                                              r"\(64, 2048\) in the file vs shape \(64, 1024\)"):
        train01.main([*SMOKE, "--out-dir", str(out), "--resume"])


def test_resume_refuses_a_checkpoint_written_with_other_settings(train01, finished, tmp_path):
    """A smoke run resumed without --smoke, or with another seed, once mixed two runs: a claim
    failed mid-run (01: 'the restored model reproduces the test loss'; 04 under torchrun: a
    full run that trained one epoch on a smoke checkpoint, 85.0% < 85%)."""
    out = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in out.glob("moli_epoch_*")}
    cpu = [a for a in SMOKE if a != "--smoke"]
    for flags, differ in ((cpu, r"preset 'smoke' there, '(full|real)' here"),
                          ([*SMOKE, "--seed", "3"], r"seed 0 there, 3 here")):
        with pytest.raises(NoteError, match=rf"moli_epoch_2.pth was written by a run with other "
                                            rf"settings \({differ}\); resuming would mix"):
            train01.main([*flags, "--out-dir", str(out), "--resume"])
    assert {p.name: p.read_bytes() for p in out.glob("moli_epoch_*")} == before


def test_resume_refuses_a_valid_file_that_is_not_its_checkpoint(train01, tmp_path):
    """A file with a matching checksum but another note's content once ended in KeyError."""
    atomic_save({"epoch": 1, "settings": {"preset": "smoke", "seed": 0}},
                tmp_path / "moli_epoch_1.pth")
    with pytest.raises(CheckpointError, match=r"moli_epoch_1.pth has no 'model', 'optimizer', "
                                              r".*\(its keys: epoch, settings\): it is not a "
                                              r"checkpoint this note wrote"):
        train01.main([*SMOKE, "--out-dir", str(tmp_path), "--resume"])


# One value of a real checkpoint, edited as a forger would (the .sha256 rewritten to match).
EDITS = {
    "epoch": lambda s: s.update(epoch=7),                       # the smoke run has 2
    "step": lambda s: s.update(step=-32),
    "losses": lambda s: s.update(losses=s["losses"].int()),
    "test_loss": lambda s: s.update(test_loss="low"),
    "random-generator state": lambda s: s["rng"].update(torch=s["rng"]["torch"][:3]),
    "DataLoader generator state": lambda s: s.update(loader_generator=torch.zeros(5).byte()),
    "optimizer state": lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_resume_refuses_an_edited_checkpoint_before_training(train01, finished, tmp_path, what):
    """A checksum proves the bytes are the saved ones, not who saved them: a file edited and
    re-hashed once ran on (epoch -3: five epochs instead of two; epoch 10**9: a missing file)
    or stopped in a traceback (an RNG state: in set_rng_state; Adam's moments: at the first
    step). Now the edited value is named, before any training, and the files are kept."""
    out = _copy(finished, tmp_path)
    state = load_checkpoint(out / "moli_epoch_2.pth")
    EDITS[what](state)
    atomic_save(state, out / "moli_epoch_2.pth")
    with pytest.raises(CheckpointError, match=f"moli_epoch_2.pth.*its {what} does not fit"):
        train01.main([*SMOKE, "--out-dir", str(out), "--resume"])
    assert load_checkpoint(out / "moli_epoch_2.pth").keys() == state.keys()
    assert not (out / "moli_epoch_3.pth").exists()


def test_03_claim_fails_when_the_scheduler_never_steps(note, monkeypatch, tmp_path):
    """Deleting scheduler.step() from the loop once passed every check."""
    mod = note("training/03_train_gpu_device.py")
    monkeypatch.setattr(torch.optim.lr_scheduler.CosineAnnealingLR, "step", lambda self: None)
    with pytest.raises(ClaimError, match="cosine rate"):
        mod.main([*SMOKE, "--out-dir", str(tmp_path)])


def test_03_resume_refuses_an_edited_scheduler_state(note, tmp_path):
    """03 restores a CosineAnnealingLR: an edited last_epoch once failed at its first step()."""
    mod = note("training/03_train_gpu_device.py")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.Adam(torch.nn.Linear(2, 2).parameters()), T_max=2)
    saved = scheduler.state_dict()
    mod.load_scheduler(scheduler, dict(saved))                    # its own state: loads
    with pytest.raises(CheckpointError, match=r"x.pth: its scheduler state does not fit this "
                                              r"scheduler \(last_epoch is 'x', expected int\)"):
        mod.load_scheduler(scheduler, dict(saved, last_epoch="x"), source="x.pth")
    with pytest.raises(CheckpointError, match=r"keys \['T_max'\], expected"):
        mod.load_scheduler(scheduler, {"T_max": 2})


def test_finding_5_a_second_run_on_the_same_out_dir_stops(train01, tmp_path):
    with RunLock(tmp_path), pytest.raises(NoteError, match="is in use by another run"):
        train01.main([*SMOKE, "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("moli_*")) and not (tmp_path / "tensorboard").exists()


def test_finding_7_bad_flags_stop_before_training(train01, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NoteError, match="--out-dir .*file is a file; expected a folder"):
        train01.main([*SMOKE, "--out-dir", str(tmp_path / "file")])
    with pytest.raises(SystemExit):
        train01.main([*SMOKE, "--out-dir", str(tmp_path / "x"), "--seed", str(2**64)])
    assert "expected an integer from 0 to 2**64 - 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_data_real_with_smoke_says_it_was_overridden(engine, capsys):
    args = argparse.Namespace(data="real", data_root=None, download=False, smoke=True, seed=0)
    cfg = dict(train_size=8, test_size=8, batch_size=4)
    *_, is_real = engine.cifar_loaders(args, cfg)
    assert not is_real and "--data real is ignored" in capsys.readouterr().out


# --- exact resume for real: SIGKILL, then --resume -------------------------------------------
#
# A background job (tests/conftest.py) forked at the start of the session: it trains three
# smoke runs of 01 (forks too, one intra-op thread each, like `finished`), SIGKILLs them at a
# random moment of epoch 2 (a random fraction of half of epoch 1's time after it ends) and
# inside save 2, before its checksum and before the rename, then resumes each with --resume.
# The test below compares their ends with `finished`.

KILLS = {"at random": "", "in save 2, before its checksum": "2:60:before_sidecar",
         "in save 2, before the rename": "2:60:before_replace"}


def _kill_and_resume(folder, fraction: float) -> None:
    """The background job: kill three runs of 01 (SIGKILL), check what they left, resume them."""
    from conftest import REPO_ROOT, ForkedJob, import_note

    from torchnotes import checkpoint

    train01 = import_note(REPO_ROOT / "training" / "01_train.py")
    train01.step_4_resume_is_exact = lambda *a, **k: 0      # its own test runs it

    def run(out, pause: str, *extra):
        def target():
            checkpoint._saves = 0                           # counted per process: a new one
            os.environ.pop(PAUSE_ENV_VAR, None)
            os.environ.update({PAUSE_ENV_VAR: pause} if pause else {})
            train01.main([*SMOKE, "--out-dir", str(out), *extra])
        return target

    outs = [folder / f"kill{i}" for i in range(len(KILLS))]
    jobs = [ForkedJob(run(out, pause), folder / f"kill{i}.log")
            for i, (out, pause) in enumerate(zip(outs, KILLS.values(), strict=True))]
    try:
        for job, pause in zip(jobs, KILLS.values(), strict=True):
            if pause:
                job.wait_for("paused")                      # the child sits in atomic_save
            else:
                job.wait_for("model:")                      # printed as training starts
                started = time.monotonic()
                job.wait_for("epoch 1:")                    # epoch 1 saved; epoch 2 starts
                delay = fraction * 0.5 * (time.monotonic() - started)   # in epoch 2, at random
                time.sleep(delay)
                (folder / "delay").write_text(f"{delay:.2f}")
            job.kill()                                      # SIGKILL: no cleanup, no flush
            job.wait()
    finally:
        for job in jobs:                                    # none outlives a failure here
            job.kill()
    for out in outs:
        for path in out.glob("moli_epoch_*.pth"):           # whatever has a final name loads
            load_checkpoint(path)
    resumes = [ForkedJob(run(out, "", "--resume"), folder / f"resume{i}.log")
               for i, out in enumerate(outs)]
    for i, job in enumerate(resumes):
        assert job.wait(timeout=300) == 0, f"resume {i} failed:\n{job.read_log()}"


def _start_kill_runs(folder):
    from conftest import ForkedJob

    seed = int(os.environ.get("RESUME_TEST_SEED", time.time_ns() % 10_000))
    fraction = random.Random(seed).random()
    job = ForkedJob(lambda: _kill_and_resume(folder, fraction), folder / "kill_and_resume.log")
    return dict(folder=folder, job=job, seed=seed), [job]


if FORK:
    BACKGROUND["kill_runs"] = _start_kill_runs


@pytest.fixture(scope="module")
def kill_runs():
    return background("kill_runs")


@pytest.mark.skipif(not FORK, reason="kills forked runs; this platform has no os.fork")
def test_killed_runs_resume_bit_identical(finished, kill_runs, capsys):
    folder, job = kill_runs["folder"], kill_runs["job"]
    assert job.wait(timeout=600) == 0, job.log.read_text()
    reference = _tensors(load_checkpoint(finished[0] / "moli_epoch_2.pth"))
    report = []
    for i, name in enumerate(KILLS):
        if not KILLS[name]:
            delay = (folder / "delay").read_text()
            name += f" (seed {kill_runs['seed']}), {delay} s after epoch 1"
        printed = (folder / f"resume{i}.log").read_text(encoding="utf-8")
        start = [ln for ln in printed.splitlines() if ln.startswith("--resume:")][0]
        report.append(f"killed {name}: {start.replace(str(folder / f'kill{i}'), '<out>')}")
        final = _tensors(load_checkpoint(folder / f"kill{i}" / "moli_epoch_2.pth"))
        assert len(final) == len(reference)
        assert all(map(torch.equal, final, reference)), f"{name}: not bit-identical"
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert sum("continuing from moli_epoch_1.pth" in r for r in report) >= 2   # mid-run resumes


# --- every claim family can fail ----------------------------------------------------------

def test_claim_fails_when_nothing_is_learned(train01, engine, tmp_path):
    moli = engine.Moli()
    optimizer = torch.optim.Adam(moli.parameters(), lr=0.0)  # lr 0: the loss cannot go down
    with pytest.raises(ClaimError, match="the training loss went down"):
        train01.step_1_train(moli, optimizer, (_tiny_loader(n=256), _tiny_loader()), CPU,
                             dict(epochs=1, settings={}), tmp_path, None, show_progress=False)


def test_claim_fails_below_the_accuracy_bound(train01):
    with pytest.raises(ClaimError, match="final test accuracy >= 30%"):
        train01.step_2_accuracy_above_chance(0.12, 0.30)


def test_claim_fails_when_the_checkpoint_is_not_the_model(train01, engine, finished):
    other = engine.Moli()
    with pytest.raises(ClaimError, match="holds exactly the trained tensors"):
        train01.step_3_checkpoint_round_trip(other, finished[0] / "moli_epoch_2.pth",
                                             _tiny_loader(), CPU)


def test_claim_fails_when_the_recorded_accuracy_is_wrong(train01, engine, tmp_path):
    moli = engine.Moli()
    atomic_save({"model": moli.state_dict(), "test_accuracy": 0.99}, tmp_path / "c.pth")
    with pytest.raises(ClaimError, match="reloaded model gives the same test accuracy"):
        train01.step_3_checkpoint_round_trip(moli, tmp_path / "c.pth", _tiny_loader(), CPU)


def _finished_model(train01, engine, finished):
    checkpoint = load_checkpoint(finished[0] / "moli_epoch_2.pth")
    moli = engine.Moli()
    optimizer = torch.optim.Adam(moli.parameters())
    moli.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    args = argparse.Namespace(data="auto", data_root=None, download=False, smoke=True, seed=0)
    loader, _, _ = engine.cifar_loaders(args, train01.SMOKE)
    return moli, optimizer, loader, checkpoint["losses"].tolist()


def test_claim_fails_when_resume_forgets_the_shuffle_generator(train01, engine, finished,
                                                               monkeypatch):
    moli, optimizer, loader, losses = _finished_model(train01, engine, finished)
    real_restore = train01.restore

    def forgets_generator(checkpoint, *args):
        real_restore({**checkpoint, "loader_generator": torch.Generator().get_state()}, *args)

    monkeypatch.setattr(train01, "restore", forgets_generator)
    with pytest.raises(ClaimError, match="same per-step losses"):
        train01.step_4_resume_is_exact(moli, optimizer, loader, losses, finished[0], 2, CPU)


def test_claim_fails_when_resume_forgets_adams_moments(train01, engine, finished, monkeypatch):
    moli, optimizer, loader, losses = _finished_model(train01, engine, finished)
    real_restore = train01.restore

    def forgets_optimizer(checkpoint, model, opt, train_loader):
        real_restore(checkpoint, model, opt, train_loader)
        opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())   # fresh Adam

    monkeypatch.setattr(train01, "restore", forgets_optimizer)
    with pytest.raises(ClaimError, match="same per-step losses|bit-identical"):
        train01.step_4_resume_is_exact(moli, optimizer, loader, losses, finished[0], 2, CPU)


def test_claim_fails_when_the_restored_model_is_not_the_saved_one(train01, engine, finished,
                                                                  tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    monkeypatch.setattr(train01, "set_rng_state", lambda state: None)
    real_restore = train01.restore

    def loses_a_layer(checkpoint, model, *args, **kwargs):
        real_restore(checkpoint, model, *args, **kwargs)
        with torch.no_grad():
            model.model[0].weight.zero_()

    monkeypatch.setattr(train01, "restore", loses_a_layer)
    with pytest.raises(ClaimError, match="restored model reproduces the test loss"):
        train01.main([*SMOKE, "--out-dir", str(out), "--resume"])


# --- 02 and 03 ------------------------------------------------------------------------------

def test_02_claim_fails_when_nothing_is_learned(note, engine):
    mod = note("training/02_train_gpu_cuda.py")
    moli, loss_fn = mod.step_1_move_with_cuda(use_cuda=False)
    cfg = dict(epochs=1, lr=0.0)                              # lr 0: the loss cannot go down
    with pytest.raises(ClaimError, match="the training loss went down"):
        mod.step_2_train_timed(moli, loss_fn, (_tiny_loader(n=256), _tiny_loader()), False, cfg,
                               show_progress=False)


def test_02_claim_fails_when_an_unguarded_cuda_call_works(note, engine, monkeypatch):
    mod = note("training/02_train_gpu_cuda.py")
    monkeypatch.setattr(mod, "unguarded_cuda", lambda: None)      # as if .cuda() were harmless
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ClaimError, match="unguarded .cuda.. fails"):
        mod.step_1_move_with_cuda(use_cuda=False)


def test_02_claim_fails_when_evaluation_records_a_graph(note, engine, monkeypatch):
    import contextlib

    mod = note("training/02_train_gpu_cuda.py")
    moli, loss_fn = mod.step_1_move_with_cuda(use_cuda=False)
    monkeypatch.setattr(torch, "no_grad", contextlib.nullcontext)  # evaluation forgets no_grad
    with pytest.raises(ClaimError, match="carried no graph"):
        mod.step_2_train_timed(moli, loss_fn, (_tiny_loader(n=256), _tiny_loader()), False,
                               dict(epochs=1, lr=1e-2), show_progress=False)


def test_02_says_it_cannot_use_mps(note, engine, capsys):
    mod = note("training/02_train_gpu_cuda.py")
    moli, _ = mod.step_1_move_with_cuda(use_cuda=False, selected=torch.device("mps"))
    out = capsys.readouterr().out
    assert "cannot use MPS" in out and "trains on the CPU" in out
    assert {p.device.type for p in moli.parameters()} == {"cpu"}


def test_03_same_seed_same_losses_other_seed_other_losses(note, engine, monkeypatch):
    mod = note("training/03_train_gpu_device.py")
    batches = list(_tiny_loader(n=64))
    a = mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    assert a == mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    assert a != mod.first_losses(batches, CPU, seed=1, lr=1e-3)
    real, calls = mod.first_losses, []

    def unseeded_second_run(batches, device, seed, lr, **kwargs):   # run 2: another seed
        calls.append(1)
        return real(batches, device, seed + (len(calls) == 2), lr, **kwargs)

    monkeypatch.setattr(mod, "first_losses", unseeded_second_run)
    with pytest.raises(ClaimError, match="bit-identical"):
        mod.step_1_same_seed_same_run(batches, CPU, seed=0, lr=1e-3)


def test_03_resumes_to_the_same_end(note, tmp_path, capsys):
    mod = note("training/03_train_gpu_device.py")
    full = mod.main([*SMOKE, "--out-dir", str(tmp_path)])
    end = load_checkpoint(tmp_path / "moli_device_epoch_2.pth")
    for name in ("moli_device_epoch_2.pth", "moli_device_epoch_2.pth.sha256"):
        (tmp_path / name).unlink()                          # as if killed during epoch 2
    capsys.readouterr()
    mod.main([*SMOKE, "--out-dir", str(tmp_path), "--resume"])
    assert "--resume: continuing from moli_device_epoch_1.pth" in capsys.readouterr().out
    again = load_checkpoint(tmp_path / "moli_device_epoch_2.pth")
    assert again["scheduler"] == end["scheduler"] and again["losses"].tolist() == full["losses"]
    assert all(torch.equal(again["model"][k], v) for k, v in end["model"].items())


def test_03_on_the_cpu_compares_float32_with_float64_at_a_cpu_tolerance(note, engine, capsys):
    mod = note("training/03_train_gpu_device.py")
    batches = list(_tiny_loader(n=64))
    a = mod.first_losses(batches, CPU, seed=0, lr=1e-3)
    b = mod.first_losses(batches, CPU, seed=0, lr=1e-3, dtype=torch.float64)
    assert a != b                                           # really another computation
    err = mod.step_2_device_matches_cpu(batches, a, CPU, seed=0, lr=1e-3)
    assert 0 < err <= mod.CPU_RTOL * max(b) and mod.CPU_RTOL <= 2e-5
    assert "float32 and float64 on the CPU agree" in capsys.readouterr().out
    shifted = [v * (1 + 1e-4) for v in a]                   # a 1e-4 slip: caught on a CPU
    with pytest.raises(ClaimError, match="agree on the first"):
        mod.step_2_device_matches_cpu(batches, shifted, CPU, seed=0, lr=1e-3)
