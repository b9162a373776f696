"""Saving a model two ways: the whole object vs its state_dict, and the custom-class trap.

``torch.save(model)`` pickles the module object: its tensors plus a *reference* to its class
(``module.path.ClassName``), never the class's code. ``torch.save(model.state_dict())`` saves
only an ordered dict of parameter names to tensors. The state_dict is the recommended form: it
loads under ``torch.load``'s safe default (``weights_only=True``), it does not care where the
class lived when it was saved, and any code that builds the same layers can use it.

Claims proven:
  1. Both files hold the same weights (the whole-model file, loaded with its classes
     allowlisted, has the state_dict file's keys and tensors exactly); their sizes differ only
     by the pickled structure, and the state_dict file round-trips exactly into a fresh model.
  2. The whole-model file names its classes by import path and carries no code; the
     state_dict file names no class at all.
  3. The custom-class trap, for real: a program in a project folder saves a model whose
     class lives in that folder's ``tiny_model.py``. Elsewhere (here) the whole-model file
     cannot be loaded, because ``tiny_model`` cannot be imported.
  4. The fix: rebuild the class here and load the state_dict; the outputs match the saving
     program's exactly.

Run:  python checkpointing/01_model_save.py      (about 5 s on a laptop CPU: one subprocess)
Then: python checkpointing/02_model_load.py      (loads these files; see that note)
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from torchnotes import check, make_parser, start, writable_file

FULL = dict(batch=8)
SMOKE = dict(batch=2)
# The files 02_model_load.py looks for (same names, same folder).
WHOLE_FILE, STATE_FILE = "squeezenet_whole.pth", "squeezenet_state_dict.pth"


def build_model() -> nn.Module:
    """A real torchvision architecture, small enough (0.7 M parameters) to save in a blink."""
    return torchvision.models.squeezenet1_1(weights=None, num_classes=10)


# The saving program's project: its model file, and the program that saves the model.
TINY_MODEL_PY = """from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.body(x)
"""
SAVER = """
import sys, torch
from tiny_model import TinyNet
torch.manual_seed(0)
model = TinyNet()
torch.save(model, sys.argv[1])                  # whole model: pickles "tiny_model.TinyNet"
torch.save(model.state_dict(), sys.argv[2])     # state_dict: names -> tensors
x = torch.randn(3, 4)
torch.save({"x": x, "y": model(x).detach()}, sys.argv[3])
"""


class TinyNet(nn.Module):
    """The loading side's copy of tiny_model.TinyNet: same layers, so the same state_dict keys."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, 4) -> (B, 2)
        return self.body(x)


def step_1_save_both_ways(out_dir: Path, overwrite: bool, device: torch.device,
                          batch: int) -> dict:
    model = build_model().to(device).eval()
    whole = writable_file(out_dir / WHOLE_FILE, overwrite=overwrite)
    state = writable_file(out_dir / STATE_FILE, overwrite=overwrite)
    torch.save(model, whole)                  # way 1: the whole module object
    torch.save(model.state_dict(), state)     # way 2: only the parameters and buffers
    size_whole, size_state = whole.stat().st_size, state.stat().st_size
    print(f"torch.save(model)              -> {whole.name}: {size_whole:,} bytes")
    print(f"torch.save(model.state_dict()) -> {state.name}: {size_state:,} bytes")
    # The tensors dominate both files; the whole-model file adds the pickled module tree.
    check("the whole-model file is a little larger (same tensors + module structure)",
          0 < size_whole - size_state < 0.02 * size_state,
          detail=f"+{size_whole - size_state:,} bytes")
    loaded = torch.load(state, map_location=device)           # default weights_only=True
    saved = model.state_dict()
    check("the state_dict file holds exactly the saved tensors",
          loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved))
    # The whole file names classes, so the safe default needs them allowlisted (02 explains
    # safe_globals): exactly the classes this model is built from, and nothing else.
    with torch.serialization.safe_globals(list({type(m) for m in model.modules()})):
        from_whole = torch.load(whole, map_location=device).state_dict()
    check("both files hold the same weights: same keys, every tensor equal",
          from_whole.keys() == loaded.keys()
          and all(torch.equal(from_whole[k], loaded[k]) for k in loaded),
          detail=f"{len(from_whole)} tensors each")
    fresh = build_model().to(device).eval()   # rebuild from code, then pour the weights in
    fresh.load_state_dict(loaded)
    x = torch.randn(batch, 3, 64, 64, device=device)
    with torch.no_grad():
        # Same weights and input: identical on the CPU; a GPU may pick another conv algorithm.
        err = check("a rebuilt model + load_state_dict gives the original's outputs",
                    fresh(x), model(x), atol=0.0 if device.type == "cpu" else 1e-5)
    return dict(whole=whole, state=state, size_whole=size_whole, size_state=size_state,
                output_error=err)


def step_2_what_the_files_name(whole: Path, state: Path) -> dict:
    # The globals a file needs besides tensors and plain containers, read without loading it.
    named_whole = torch.serialization.get_unsafe_globals_in_checkpoint(whole)
    named_state = torch.serialization.get_unsafe_globals_in_checkpoint(state)
    print(f"classes named in {whole.name}: {sorted(named_whole)}")
    print(f"classes named in {state.name}: {sorted(named_state)}")
    with zipfile.ZipFile(whole) as archive:
        pickled = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))
    check("the whole-model file names its class by import path",
          "torchvision.models.squeezenet.SqueezeNet" in named_whole)
    check("...as text in the pickle, and carries none of its code (no 'def forward')",
          b"SqueezeNet" in pickled and b"def forward" not in pickled)
    check("the state_dict file names no class: just names -> tensors", named_state == [])
    return dict(named_whole=sorted(named_whole), named_state=sorted(named_state))


def step_3_custom_class_trap(out_dir: Path, overwrite: bool, device: torch.device) -> dict:
    project = out_dir / "trap_project"                        # the saving program's folder
    module = writable_file(project / "tiny_model.py", overwrite=overwrite)
    module.write_text(TINY_MODEL_PY)
    paths = [writable_file(project / n, overwrite=overwrite)
             for n in ("tiny_whole.pth", "tiny_state_dict.pth", "tiny_io.pth")]
    # A fresh Python in the project folder (``-c`` puts its cwd on sys.path): no .pyc left.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c", SAVER, *map(str, paths)], cwd=project, env=env,
                   check=True)
    whole = paths[0]
    print(f"a program in {project.name}/ saved {whole.name}, {paths[1].name} and {paths[2].name}")
    errors = {}
    try:                                      # what anyone without tiny_model.py gets
        torch.load(whole, map_location=device)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln]
        first = (lines or [str(err)])[0]
        errors["load"] = f"{type(err).__name__}: {first.split(' by default')[0]}"
    try:                                      # allowlisting the class needs the class itself
        importlib.import_module("tiny_model")
    except ImportError as err:
        errors["import"] = f"{type(err).__name__}: {err}"
    for what, message in errors.items():
        print(f"  {what}: {message}")
    check("loading the whole file here fails on the class reference tiny_model.TinyNet",
          "tiny_model.TinyNet" in errors.get("load", ""))
    check("...and the class cannot be imported here to allowlist it",
          errors.get("import", "").startswith("ModuleNotFoundError"))
    return dict(paths=paths, errors=errors)


def step_4_fix_rebuild_the_class(state: Path, io_file: Path, device: torch.device) -> float:
    model = TinyNet().to(device)              # our own copy of the class...
    model.load_state_dict(torch.load(state, map_location=device))   # ...and the saved numbers
    ref = torch.load(io_file, map_location=device)   # the saving program's input and output
    with torch.no_grad():
        # One Linear-ReLU-Linear: identical on the CPU; a GPU's float32 rounding differs.
        return check("rebuilt TinyNet + its state_dict reproduces the saving program's outputs",
                     model(ref["x"]), ref["y"], atol=0.0 if device.type == "cpu" else 1e-6)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    saved = step_1_save_both_ways(args.out_dir, args.overwrite, device, cfg["batch"])
    named = step_2_what_the_files_name(saved["whole"], saved["state"])
    trap = step_3_custom_class_trap(args.out_dir, args.overwrite, device)
    trap["output_error"] = step_4_fix_rebuild_the_class(*trap["paths"][1:], device)
    print(f"summary: whole {saved['size_whole']:,} B vs state_dict {saved['size_state']:,} B; "
          f"prefer the state_dict. Files in {args.out_dir}")
    return dict(saved, **named, trap=trap)


if __name__ == "__main__":
    main()
