"""Device selection shared by every note: ``--device auto|cpu|cuda|cuda:N|mps``."""

from __future__ import annotations

import os

import torch

ENV_VAR = "TORCHNOTES_DEVICE"
CHOICES = "auto, cpu, cuda, cuda:N, mps"


class DeviceError(ValueError):
    """The requested device does not exist on this machine (or is not a device name)."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Every device name this machine can run the notes on, CPU first."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def get_device(name: str | None = None) -> torch.device:
    """Resolve a device name to a ``torch.device`` that really exists here.

    ``name=None`` reads the ``TORCHNOTES_DEVICE`` environment variable and falls back to
    ``auto``, which picks CUDA, then Apple MPS, then the CPU.
    """
    source = "--device"
    if name is None:
        name = os.environ.get(ENV_VAR) or "auto"
        source = f"{ENV_VAR}" if os.environ.get(ENV_VAR) else "--device"
    text = str(name).strip().lower()
    where = f"{source}={name!r}" if source == ENV_VAR else f"--device {name}"
    have = ", ".join(available_devices())

    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"{where}: not a device name. Expected one of {CHOICES}. Available here: {have}."
        ) from None

    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (a CPU-only build)"
            raise DeviceError(
                f"{where}: CUDA is not available here (torch {torch.__version__}, CUDA build: "
                f"{build}). Available here: {have}. Use --device auto or --device cpu."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{where}: this machine has {count} CUDA device(s), numbered 0 to {count - 1}. "
                f"Available here: {have}."
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                f"{where}: Apple MPS is not available here (it needs an Apple-silicon Mac and a "
                f"macOS build of torch). Available here: {have}."
            )
        return torch.device("mps")
    raise DeviceError(
        f"{where}: the notes support {CHOICES}, not {device.type!r}. Available here: {have}."
    )


def float64_device(device: torch.device) -> torch.device:
    """Where a float64 check can run: ``device`` itself, or the CPU on Apple MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
