"""Shared test fixtures: ``pytest --device cuda`` reruns the smoke suite on a GPU."""

from __future__ import annotations

import importlib.util
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
