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
  3. The whole-model trap has two distinct failures:
     a. ``torch.load``'s default (``weights_only=True``) refuses a whole model with
        ``UnpicklingError`` even where its class is importable (torchvision's SqueezeNet);
     b. a model whose class was defined in the saving script (``__main__``) cannot be loaded
        by another program even with the full unpickler: pickle stored ``__main__.TinyNet``
        and that program's ``__main__`` has no ``TinyNet`` (``AttributeError``). Shown for
        real with two isolated Python processes started side by side, like ``saver | loader``
        in a shell: the bytes go through the pipe, never a file.
  4. The fix: rebuild the class here and load the state_dict; the outputs match the saving
     program's exactly.

Run:  python checkpointing/01_model_save.py      (7 s measured on a 2-core CPU: two subprocesses)
Then: python checkpointing/02_model_load.py      (loads these files; see that note)
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from torchnotes import (
    NoteError,
    check,
    check_raises,
    make_parser,
    prepare_out_dir,
    start,
    writable_file,
)

FULL = dict(batch=8)
SMOKE = dict(batch=2)
# The files 02_model_load.py looks for (same names, same folder).
WHOLE_FILE, STATE_FILE = "squeezenet_whole.pth", "squeezenet_state_dict.pth"


def build_model() -> nn.Module:
    """A real torchvision architecture, small enough (0.7 M parameters) to save in a blink."""
    return torchvision.models.squeezenet1_1(weights=None, num_classes=10)


# The saving program: TinyNet is defined in the script itself, so pickle records it as
# "__main__.TinyNet". It writes the whole model's bytes to stdout, the state_dict and a
# reference input/output to files.
SAVER = """
import sys, torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.body(x)

torch.manual_seed(0)
model = TinyNet()
torch.save(model, sys.stdout.buffer)            # whole model: pickles "__main__.TinyNet"
torch.save(model.state_dict(), sys.argv[1])     # state_dict: names -> tensors
x = torch.randn(3, 4)
torch.save({"x": x, "y": model(x).detach()}, sys.argv[2])
"""
# Another program: it has torch, but no TinyNet in its own __main__. It loads with the full
# unpickler, through 02_model_load.py's load_trusting (the one place these notes turn the safe
# default off; 02 shows why that is dangerous). The bytes come from the saver through a pipe,
# never from a file someone could swap: the notes unpickle only what they made themselves.
LOADER = """
import io, runpy, sys
load_trusting = runpy.run_path(sys.argv[1])["load_trusting"]
data = sys.stdin.buffer.read()
print(len(data), flush=True)
load_trusting(io.BytesIO(data), "cpu")
"""
TRUSTING = Path(__file__).resolve().parent / "02_model_load.py"


def isolated(code: str, *args: str) -> list[str]:
    """``python -I -c code``: no PYTHON* variables, no user site, no current folder on sys.path;
    run it from an empty folder, so nothing planted in --out-dir (a torch.py) is imported."""
    return [sys.executable, "-I", "-c", code, *args]


def saver_to_loader(paths: list[Path]) -> tuple[int, str]:
    """``python -I -c SAVER | python -I -c LOADER``, both started at once, as a shell pipe would.
    Returns the loader's exit code and the last line of its errors."""
    pipe = subprocess.PIPE
    with tempfile.TemporaryDirectory() as empty:
        saver = subprocess.Popen(isolated(SAVER, *map(str, paths)), cwd=empty, stdout=pipe,
                                 stderr=pipe)
        loader = subprocess.Popen(isolated(LOADER, str(TRUSTING)), cwd=empty, stdin=saver.stdout,
                                  stdout=pipe, stderr=pipe)
        saver.stdout.close()                          # the loader reads it now
        saver.stdout = None
        try:
            out, err = loader.communicate(timeout=120)
            saver_err = saver.communicate(timeout=120)[1].decode()
        except subprocess.TimeoutExpired:
            saver.kill(), loader.kill()
            raise NoteError("the saving and loading programs did not finish in 120 s") from None
        if saver.returncode != 0:
            raise NoteError(f"the saving program failed: {saver_err[-300:]}"
                            f" (the loading program said: {err.decode()[-300:]})")
    last = (err.decode().strip().splitlines() or ["(no error)"])[-1]
    first = out.decode().split()[:1]
    size = f"{int(first[0]):,}" if first and first[0].isdigit() else "?"
    print(f"another program loading the whole TinyNet ({size} bytes): {last}")
    return loader.returncode, last


class TinyNet(nn.Module):
    """Our own copy of the saving program's TinyNet: same layers, so the same state_dict keys."""

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
    check("...as text in the pickle: module path and class name",
          b"torchvision.models.squeezenet" in pickled and b"SqueezeNet" in pickled)
    print(f"the pickle ({len(pickled):,} bytes) holds references, never source code: loading "
          f"it imports torchvision.models.squeezenet, so that code must exist where it loads")
    check("the state_dict file names no class: just names -> tensors", named_state == [])
    return dict(named_whole=sorted(named_whole), named_state=sorted(named_state))


def step_3_whole_model_trap(whole: Path, out_dir: Path, overwrite: bool,
                            device: torch.device) -> dict:
    # a. The class is importable here (torchvision), yet the safe default refuses the file.
    refused = check_raises("the default (weights_only=True) refuses the whole model although "
                           "its class is importable", pickle.UnpicklingError, torch.load, whole,
                           map_location=device, match="SqueezeNet")
    # b. A class defined in the saving script's __main__: another program cannot rebuild it.
    paths = [writable_file(out_dir / n, overwrite=overwrite)
             for n in ("tiny_state_dict.pth", "tiny_io.pth")]
    code, last = saver_to_loader(paths)
    check("...and another program fails on the missing class __main__.TinyNet, even with the "
          "full unpickler", code != 0 and last.startswith("AttributeError")
          and "TinyNet" in last and "__main__" in last)
    return dict(paths=paths, errors={"default": refused.splitlines()[0], "other_program": last})


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
    prepare_out_dir(args.out_dir)                 # a bad --out-dir stops us before any work
    saved = step_1_save_both_ways(args.out_dir, args.overwrite, device, cfg["batch"])
    named = step_2_what_the_files_name(saved["whole"], saved["state"])
    trap = step_3_whole_model_trap(saved["whole"], args.out_dir, args.overwrite, device)
    trap["output_error"] = step_4_fix_rebuild_the_class(*trap["paths"], device)
    print(f"summary: whole {saved['size_whole']:,} B vs state_dict {saved['size_state']:,} B; "
          f"prefer the state_dict. Files in {args.out_dir}")
    return dict(saved, **named, trap=trap)


if __name__ == "__main__":
    main()
