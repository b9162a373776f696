"""Loading a model both ways, why ``torch.load`` is safe by default, and ``map_location``.

Since PyTorch 2.6 ``torch.load`` defaults to ``weights_only=True``: it rebuilds tensors, numbers,
strings and plain containers, and refuses any other class or function a file names. A
pickle is a small program for rebuilding objects, and turning that default off lets the file
call anything importable: loading a file you did not make that way runs a stranger's program.

Claims proven:
  1. Loading a whole-model file with the default fails (``UnpicklingError``) and names the
     class it refused.
  2. The state_dict way needs no trust: build the model from code, ``load_state_dict``; the
     tensors equal the file's exactly, and both of 01's files hold the same weights.
  3. ``torch.serialization.safe_globals`` with exactly the classes the file names (read with
     ``get_unsafe_globals_in_checkpoint``; your own classes go in the same list) loads the
     whole model under the safe default; it computes the same outputs as the state_dict way.
  4. The full unpickler runs what the file says: it rebuilds our own whole model, but a
     "checkpoint" made by a stranger runs its own code (here: a harmless ``print``), which the
     default refuses to do. Both are bytes this note made in memory: the one place in these
     notes that turns ``weights_only`` off, and never on a file read from disk.
  5. ``map_location`` puts every tensor on the device you ask for, whatever it was saved from;
     pass it every time, so a file saved on a GPU loads on a CPU-only machine. Shown for the
     CPU, the selected device, and ``"meta"`` (shapes and dtypes only, no data: a way to
     inspect a checkpoint without allocating its memory), so it moves tensors even on a CPU.

Files: it loads what ``checkpointing/01_model_save.py`` saved in the same --out-dir (the same
default folder); if they are not there it makes its own in ``<out-dir>/made_by_02``.

Run:  python checkpointing/02_model_load.py      (4 s measured on a 2-core CPU)
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.squeezenet import Fire, SqueezeNet

from torchnotes import NoteError, check, default_out_dir, make_parser, start, writable_file

FULL = dict(batch=8)
SMOKE = dict(batch=2)
WHOLE_FILE, STATE_FILE = "squeezenet_whole.pth", "squeezenet_state_dict.pth"   # 01's names
# Every class squeezenet_whole.pth names: the allowlist for safe_globals (checked in step 3).
TRUSTED = [SqueezeNet, Fire, nn.Sequential, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout,
           nn.AdaptiveAvgPool2d]


def build_model() -> nn.Module:
    return torchvision.models.squeezenet1_1(weights=None, num_classes=10)


def load_trusting(source, device: torch.device):
    """The full unpickler. Only for files you made yourself: it runs whatever they name."""
    return torch.load(source, map_location=device, weights_only=False)


class StrangersPayload:
    """What a malicious file can hold: pickle rebuilds it by calling the function it names."""

    def __reduce__(self):
        return (print, ("  >> printed by code inside the checkpoint: it could run anything",))


def refused_by_default(source, device: torch.device) -> str:
    """What ``torch.load``'s default refuses in ``source``: the global its error names."""
    try:
        torch.load(source, map_location=device)         # the default: weights_only=True
    except pickle.UnpicklingError as err:               # "Unsupported global: GLOBAL <name> ..."
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        return found.group(1) if found else f"(another error: {str(err)[:80]})"
    return "(nothing: it loaded)"


def complete_archive(path: Path, out_dir: Path) -> None:
    """torch.save writes a zip archive; a save cut short (a killed run) leaves one whose
    directory or CRCs are missing. Checked here so that it is named, not a miniz traceback."""
    try:
        with zipfile.ZipFile(path) as archive:
            first_bad = archive.testzip()               # reads every member, checks its CRC
        bad = None if first_bad is None else f"its member {first_bad} fails its CRC check"
    except (zipfile.BadZipFile, OSError) as err:
        bad = f"not a zip archive: {err}"
    if bad is not None:
        raise NoteError(f"{path} is not a complete torch.save file ({bad}): a save was cut "
                        f"short, or the file was changed. Fix: run python "
                        f"checkpointing/01_model_save.py --out-dir {out_dir} --overwrite, or "
                        f"pass another --out-dir.")


def find_checkpoints(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    whole, state = out_dir / WHOLE_FILE, out_dir / STATE_FILE
    if whole.is_file() and state.is_file():
        print(f"loading the files checkpointing/01_model_save.py saved in {out_dir}")
        for path in (whole, state):
            complete_archive(path, out_dir)
        return whole, state
    own = out_dir / "made_by_02"
    whole, state = own / WHOLE_FILE, own / STATE_FILE
    if not (whole.is_file() and state.is_file()):
        model = build_model()
        torch.save(model, writable_file(whole, overwrite=overwrite))
        torch.save(model.state_dict(), writable_file(state, overwrite=overwrite))
    print(f"01's files are not in {out_dir}: using this note's own, in {own} "
          f"(run 01_model_save.py --out-dir {out_dir} first to load its files)")
    return whole, state


def step_1_default_refuses_whole_model(whole: Path, device: torch.device) -> str:
    refused = refused_by_default(whole, device)
    print(f"torch.load({whole.name}) -> UnpicklingError: Unsupported global: {refused}")
    check("the default refuses the whole-model file, naming the class it refused",
          refused == "torchvision.models.squeezenet.SqueezeNet")
    return refused


def step_2_state_dict_way(whole: Path, state: Path, device: torch.device) -> nn.Module:
    tensors = torch.load(state, map_location=device)    # default weights_only=True: fine here
    model = build_model().to(device).eval()             # the code builds the model...
    try:
        model.load_state_dict(tensors)                  # ...the file only fills in numbers
    except RuntimeError as err:     # strict: a missing, extra or reshaped tensor is an error
        reason = " ".join(str(err).split())[:200]
        raise NoteError(f"{state} does not fit this SqueezeNet ({reason} ...): it is not the "
                        f"state_dict 01 saved. Fix: run python checkpointing/01_model_save.py "
                        f"--out-dir {state.parent} --overwrite, or pass another --out-dir.") \
            from None
    mine = model.state_dict()
    print(f"state_dict: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values()):,} "
          f"numbers")
    check("load_state_dict copied every tensor exactly",
          all(torch.equal(mine[k], tensors[k]) for k in tensors) and mine.keys() == tensors.keys())
    with torch.serialization.safe_globals(TRUSTED):     # only to compare the two files
        other = torch.load(whole, map_location=device).state_dict()
    # Key sets first: a missing or extra tensor fails the claim (and `and` stops before [k]).
    check("the whole-model file holds the same weights as the state_dict file",
          other.keys() == tensors.keys()
          and all(torch.equal(other[k], tensors[k]) for k in tensors),
          detail=f"{len(other)} vs {len(tensors)} tensors")
    return model


def step_3_safe_globals(whole: Path, reference: nn.Module, device: torch.device,
                        batch: int) -> float:
    named = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(whole))
    allowed = sorted(f"{c.__module__}.{c.__qualname__}" for c in TRUSTED)
    print(f"{whole.name} needs {len(named)} classes beyond tensors: {', '.join(named)}")
    check("our allowlist is exactly the classes the file names", named == allowed)
    with torch.serialization.safe_globals(TRUSTED):     # still weights_only=True
        model = torch.load(whole, map_location=device).eval()
    x = torch.randn(batch, 3, 64, 64, device=device)
    with torch.no_grad():
        # Same weights, same device, same input: the same arithmetic on the CPU; a GPU may
        # pick another convolution algorithm per model, hence a float32-sized tolerance.
        return check("whole model via safe_globals == state_dict way (same outputs)",
                     model(x), reference(x), atol=0.0 if device.type == "cpu" else 1e-5)


def step_4_full_unpickler_runs_code(model: nn.Module, device: torch.device) -> dict:
    # Only on bytes made here, in memory: a file read back from a folder could hold anything.
    ours = io.BytesIO()
    torch.save(model, ours)
    ours.seek(0)
    check("the full unpickler loads our own whole model (bytes we just made)",
          isinstance(load_trusting(ours, device), SqueezeNet))
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(3), "extra": StrangersPayload()}, buffer)
    buffer.seek(0)
    refused = refused_by_default(buffer, device)
    print(f"default torch.load on the stranger's file -> Unsupported global: {refused}")
    check("the default refuses the stranger's file: it names the function print",
          refused == "print")
    buffer.seek(0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        load_trusting(buffer, device)                   # what the file says, runs
    print(printed.getvalue().rstrip())
    check("the full unpickler ran the stranger's code while loading",
          "printed by code inside the checkpoint" in printed.getvalue())
    return dict(refused=refused, printed=printed.getvalue().strip())


def step_5_map_location(model: nn.Module, device: torch.device) -> list[str]:
    buffer = io.BytesIO()
    saved = model.state_dict()
    torch.save(saved, buffer)                           # saved from `device`
    placed = []
    # "meta" holds no data, so it moves every tensor off `device` even on a CPU-only machine.
    targets = ["cpu", "meta"] if device.type == "cpu" else ["cpu", device, "meta"]
    if device.type == "cpu":
        print("(no GPU selected: with --device cuda this also saves from the GPU and loads there)")
    for target in targets:
        buffer.seek(0)
        loaded = torch.load(buffer, map_location=target)
        where = sorted({str(t.device) for t in loaded.values()})
        placed.append(",".join(where))
        print(f"saved from {device}, map_location={str(target)!r}: tensors on {where}")
        same_keys = loaded.keys() == saved.keys()
        if str(target) == "meta":                       # no values to compare: only shapes
            check("map_location='meta' put every tensor on meta, shapes and dtypes unchanged",
                  where == ["meta"] and same_keys
                  and all(loaded[k].shape == v.shape and loaded[k].dtype == v.dtype
                          for k, v in saved.items()))
        elif str(target) != str(device):                # a real move (on a CPU: none to check)
            check(f"map_location={str(target)!r} moved every tensor there, values unchanged",
                  where == [str(torch.empty(0, device=target).device)] and same_keys
                  and all(torch.equal(loaded[k].cpu(), v.cpu()) for k, v in saved.items()))
    return placed


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    # 02 reads what 01 saved, so by default both use 01's folder.
    parser.set_defaults(out_dir=default_out_dir(Path(__file__).with_name("01_model_save.py")))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    whole, state = find_checkpoints(args.out_dir, args.overwrite)
    refused = step_1_default_refuses_whole_model(whole, device)
    model = step_2_state_dict_way(whole, state, device)
    err = step_3_safe_globals(whole, model, device, cfg["batch"])
    stranger = step_4_full_unpickler_runs_code(model, device)
    placed = step_5_map_location(model, device)
    print("summary: prefer state_dict + load_state_dict; allowlist your own classes with "
          "safe_globals; never turn weights_only off for a file you did not make")
    return dict(whole=whole, state=state, refused=refused, safe_globals_error=err,
                stranger=stranger, placed=placed)


if __name__ == "__main__":
    main()
