"""Shared test fixtures: ``pytest --device cuda`` reruns the smoke suite on a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="device the notes run on in the smoke suite: cpu, cuda, cuda:N, mps")


@pytest.fixture(scope="session")
def device_name(request) -> str:
    from torchnotes import DeviceError, get_device

    name = request.config.getoption("--device")
    try:
        get_device(name)
    except DeviceError as err:
        raise pytest.UsageError(f"pytest --device {name}: {err}") from None
    return name


def import_note(path: Path):
    """Import a note by path, as ``python path`` would see it (its folder first on sys.path)."""
    name = f"note_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture
def note():
    """``note("autograd/02_autograd_basics.py")`` imports that script as a module."""
    return lambda rel: import_note(REPO_ROOT / rel)


# ---- background jobs: subprocesses that start right after collection ------------------------
#
# A test module registers a starter under the name of the fixture its tests use to collect the
# results (``BACKGROUND["torchrun_jobs"] = start``). If any selected test needs that fixture,
# the starter runs when the first test starts: the jobs (each a fresh Python importing torch)
# then run while the in-process tests do, instead of one core idling while a test waits.

BACKGROUND = {}     # fixture name -> starter(folder) -> (value, [Popen, ...])
_STARTED = {}       # fixture name -> (value, [Popen, ...])


def background(name: str):
    """The value the starter of ``name`` returned (the jobs it started, still running or not)."""
    return _STARTED[name][0]


def _jobs_running() -> bool:
    return any(p.poll() is None for _, procs in _STARTED.values() for p in procs)


@pytest.fixture(scope="session", autouse=True)
def _background_jobs(request, tmp_path_factory):
    wanted = {name for item in request.session.items for name in item.fixturenames}
    for name, starter in BACKGROUND.items():
        if name in wanted:
            _STARTED[name] = starter(tmp_path_factory.mktemp(name))
    yield
    for _, procs in _STARTED.values():
        for proc in procs:
            if proc.poll() is None:          # a failed test left it running: stop it
                proc.terminate()             # torchrun passes SIGTERM on to its workers
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _one_thread_while_jobs_run(_background_jobs):
    """While background jobs run, a module's in-process torch work gets one intra-op thread:
    two threads on a 2-core machine whose other core is busy spin for each other (10-30x
    slower). Set per module, so results compared across a module's tests share a setting."""
    if not _jobs_running():
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
