"""Exact resume for real: training/01 runs are SIGKILLed (at random moments and inside a save)
and resumed with --resume; each must end bit-identical to an uninterrupted run of the seed.

The killed children start at once (their kills overlap); the reference run and the resumed
runs happen in this process. Everything uses one intra-op thread, so the arithmetic is the
same everywhere.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from torchnotes.checkpoint import PAUSE_ENV_VAR, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "training" / "01_train.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
ENV.pop(PAUSE_ENV_VAR, None)


def _run(out_dir: Path, *flags: str, pause: str = "") -> subprocess.Popen:
    env = dict(ENV, **({PAUSE_ENV_VAR: pause} if pause else {}))
    return subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu",
                             "--out-dir", str(out_dir), *flags], env=env, cwd=out_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(stream, text: str, limit_s: float = 60.0) -> str:
    deadline = time.monotonic() + limit_s
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} never appeared; got: {''.join(seen)[-2000:]}")


def _tensors(checkpoint: dict) -> list[torch.Tensor]:
    opt = checkpoint["optimizer"]["state"]
    return [*checkpoint["model"].values(), *(t for s in opt.values() for t in s.values()),
            checkpoint["losses"]]


def test_killed_runs_resume_bit_identical(note, tmp_path, capsys):
    seed = int(os.environ.get("RESUME_TEST_SEED", time.time_ns() % 10_000))
    delays = [round(random.Random(seed).uniform(0.0, 1.5), 2)]
    kills = {"in save 1, before its checksum": dict(pause="1:60:before_sidecar"),
             "in save 2, before the rename": dict(pause="2:60:before_replace"),
             **{f"at random (seed {seed}), {d} s into training": dict(delay=d) for d in delays}}
    children = {}
    for i, name in enumerate(kills):
        out = tmp_path / f"kill{i}"
        out.mkdir()
        children[name] = (out, _run(out, pause=kills[name].get("pause", "")))

    train01 = note("training/01_train.py")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (_, child) in children.items():        # random moments first, timed live
            if "delay" in kills[name]:
                _wait_for(child.stdout, "model: Moli")   # training starts now
                time.sleep(kills[name]["delay"])
                child.kill()                             # SIGKILL: no cleanup, no flush
        train01.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path / "reference")])
        reference = _tensors(load_checkpoint(tmp_path / "reference" / "moli_epoch_2.pth"))
        report = []
        for name, (out, child) in children.items():
            if "pause" in kills[name]:
                _wait_for(child.stderr, "paused")       # the child sits inside atomic_save
                child.kill()
            child.wait()
            for path in out.glob("moli_epoch_*.pth"):   # whatever is under a final name loads
                load_checkpoint(path)
            capsys.readouterr()
            train01.main(["--smoke", "--device", "cpu", "--out-dir", str(out), "--resume"])
            start = [ln for ln in capsys.readouterr().out.splitlines()
                     if ln.startswith("--resume:")][0]
            report.append(f"killed {name}: {start.replace(str(out), '<out>')}")
            final = _tensors(load_checkpoint(out / "moli_epoch_2.pth"))
            assert len(final) == len(reference)
            assert all(map(torch.equal, final, reference)), f"{name}: not bit-identical"
    finally:
        torch.set_num_threads(threads)
        for _, child in children.values():
            child.kill()
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert any("continuing from moli_epoch_1.pth" in r for r in report)   # a real mid-run resume
