"""Shared test fixtures: ``pytest --device cuda`` reruns the smoke suite on a GPU."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import traceback
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
# the starter runs when the first test starts: the jobs (fresh Pythons where the fresh process
# is the point, forked copies of this one otherwise) then run while the in-process tests do,
# instead of one core idling while a test waits.

FORK = hasattr(os, "fork")      # POSIX; Windows has no fork
NICE = 19                       # background jobs yield the CPU to the in-process tests


def yield_cpu() -> None:
    """Lower this process's priority (POSIX): a background job then fills the time the tests
    leave idle instead of taking half of a core from the critical path of the session."""
    if hasattr(os, "nice"):
        os.nice(NICE)


# For subprocess.Popen(..., preexec_fn=PREEXEC): the child lowers its priority before exec.
PREEXEC = yield_cpu if os.name == "posix" else None


class ForkedJob:
    """``target()`` in a forked copy of this process, with Popen's ``poll``/``wait``/``kill``.

    A fork starts with torch and the notes already imported: no fresh interpreter, which costs
    2-4 s of CPU per process here. The child runs on one intra-op thread at a lower priority
    (``yield_cpu``), writes its stdout and stderr, line by line, to ``log``, and exits with 0
    if ``target`` returned, 1 if it raised (the traceback is in ``log``), never running
    pytest's cleanup.
    """

    def __init__(self, target, log: Path, background: bool = True):
        self.log, self.returncode = Path(log), None
        self.pid = os.fork()
        if self.pid == 0:                                   # the child
            code = 1
            try:
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
                sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
                if background:                              # not when a test waits for it
                    yield_cpu()
                import torch

                torch.set_num_threads(1)
                target()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def read_log(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Until ``text`` appears in the log; fails if the child ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while text not in self.read_log():
            if self.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in {self.log}:\n{self.read_log()}")
            time.sleep(0.01)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked job {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

BACKGROUND = {}     # fixture name -> starter(folder) -> (value, [Popen, ...])
_STARTED = {}       # fixture name -> (value, [Popen, ...])


def background(name: str):
    """The value the starter of ``name`` returned (the jobs it started, still running or not)."""
    return _STARTED[name][0]


def _jobs_running() -> bool:
    return any(p.poll() is None for _, procs in _STARTED.values() for p in procs)


def pytest_collection_modifyitems(session, config, items):
    """The tests that collect a background job's results run last (in their own order): the
    jobs then have the whole session to finish instead of being waited for early on."""
    late = [item for item in items if BACKGROUND.keys() & set(item.fixturenames)]
    items[:] = [item for item in items if item not in late] + late


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
