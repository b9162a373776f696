"""``python -m torchnotes``: environment report and the curriculum."""

from __future__ import annotations

import platform
import sys


def report() -> None:
    import torch

    from .curriculum import REPO_ROOT, notes
    from .device import ENV_VAR, available_devices, get_device

    try:
        import torchvision
        tv = torchvision.__version__
    except Exception as err:  # a broken torchvision install is worth reporting, not crashing on
        tv = f"not importable ({type(err).__name__}: {err})"
    print("PyTorch learning notes: environment")
    print(f"  python        {sys.version.split()[0]} ({platform.system()} {platform.machine()})")
    print(f"  torch         {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    print(f"  torchvision   {tv}")
    print(f"  cpu threads   {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  cuda:{i}        {torch.cuda.get_device_name(i)}")
    else:
        print("  cuda          not available")
    mps = getattr(torch.backends, "mps", None)
    print(f"  mps           {'available' if mps and mps.is_available() else 'not available'}")
    print(f"  devices       {', '.join(available_devices())}")
    try:
        print(f"  --device auto {get_device()}  (set ${ENV_VAR} to change the default)")
    except ValueError as err:
        print(f"  --device auto error: {err}")

    found = notes()
    print()
    if not found:
        print(f"Curriculum: no notes found under {REPO_ROOT} (is this an editable install?)")
        return
    print(f"Curriculum: {len(found)} notes, in learning order (run: python <path>)")
    topic = None
    for note in found:
        if note.topic != topic:
            topic = note.topic
            print(f"\n  {topic}/")
        print(f"    {note.path.name:<42} {note.summary}")


if __name__ == "__main__":
    report()
