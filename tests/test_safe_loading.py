"""Safe loading: malicious checkpoints never run, whichever loader the notes teach.

Each crafted file would create a sentinel file if it were unpickled by the full unpickler
(``exec`` of one line). Every loader must refuse it, and the sentinel must never appear.
Also: no ``weights_only=False`` outside the one lesson, ``strict=False`` only through
``load_weights(may_differ=...)``, and issue 9's findings 1 and 2.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from torchnotes import ClaimError, NoteError
from torchnotes.checkpoint import CheckpointError, load_checkpoint, sidecar

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


class Payload:
    """Unpickled by the full unpickler, this runs ``exec(...)``, which creates ``sentinel``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


class PayloadModule(nn.Module):
    """A 'whole pickled model' whose unpickling builds a Payload on the way."""

    def __init__(self, sentinel: Path):
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.extra = Payload(sentinel)


def _variants(sentinel: Path) -> dict:
    return {
        "top-level object": Payload(sentinel),
        "nested in a state_dict": {"model": {"w": torch.zeros(2), "bias": Payload(sentinel)},
                                   "epoch": 1, "step": 1},
        "a whole pickled model": PayloadModule(sentinel),
    }


def _craft(tmp_path: Path, name: str, obj, *, legacy: bool = False) -> Path:
    path = tmp_path / name
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar(path).write_text(f"{digest}  {path.name}\n")     # an attacker can write this too
    return path


@pytest.fixture
def crafted(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    files = {}
    for i, (kind, obj) in enumerate(_variants(sentinel).items()):
        files[kind] = _craft(tmp_path, f"evil_{i}.pth", obj)
        files[f"{kind}, legacy format"] = _craft(tmp_path, f"evil_{i}_legacy.pth", obj,
                                                 legacy=True)
    return sentinel, files


def test_the_payload_is_real(tmp_path):
    """Sanity: the full unpickler does run it (so the refusals below mean something)."""
    sentinel = tmp_path / "SENTINEL"
    pickle.loads(pickle.dumps(Payload(sentinel)))
    assert sentinel.exists()


def test_every_loader_the_notes_teach_refuses_every_variant(crafted, note, monkeypatch):
    sentinel, files = crafted
    load = note("checkpointing/02_model_load.py")
    pretrained = note("checkpointing/03_model_pretrained.py")
    loaders = {
        "torch.load default": lambda p: torch.load(p, map_location=CPU),
        "torch.load weights_only=True": lambda p: torch.load(p, map_location=CPU,
                                                             weights_only=True),
        "02 safe_globals(TRUSTED)": lambda p: _with_trusted(load, p),
        "torchnotes load_checkpoint": load_checkpoint,
        "03 cached weights (hash prefix matched)": lambda p: _cached(pretrained, monkeypatch, p),
    }
    outcomes = []
    for kind, path in files.items():
        for name, loader in loaders.items():
            with pytest.raises((pickle.UnpicklingError, CheckpointError, NoteError)):
                loader(path)
            outcomes.append(f"{name} refused {kind}")
            assert not sentinel.exists(), f"{name} ran the payload of {kind}"
        refused = load.refused_by_default(path, CPU)            # 02's reporting helper
        assert "exec" in refused or "Payload" in refused, refused   # names what it refused
    assert len(outcomes) == 6 * 5 and not sentinel.exists()


def _with_trusted(load, path):
    with torch.serialization.safe_globals(load.TRUSTED):
        return torch.load(path, map_location=CPU)


def _cached(pretrained, monkeypatch, path):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained, "hash_prefix", lambda weights=None: digest[:8])
    return pretrained.load_cached_weights(path)


def test_training_resume_refuses_a_planted_checkpoint(crafted, note, tmp_path, capsys):
    sentinel, files = crafted
    out = tmp_path / "run"
    out.mkdir()
    evil = files["nested in a state_dict"]
    for name in (evil.name, sidecar(evil).name):
        (out / name.replace("evil_1", "moli_epoch_1")).write_bytes((tmp_path / name).read_bytes())
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        note("training/01_train.py").main(["--smoke", "--device", "cpu", "--out-dir", str(out),
                                           "--resume"])
    assert "moli_epoch_1.pth: corrupt (names code to run (" in capsys.readouterr().out
    assert not sentinel.exists()


def test_finding_1_a_planted_vgg16_cache_file_never_runs(note, tmp_path, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    sentinel = tmp_path / "SENTINEL"
    planted = mod.cached_weights_file()
    planted.parent.mkdir(parents=True)
    torch.save({"features.0.weight": Payload(sentinel)}, planted)
    with pytest.raises(NoteError, match="SHA-256 starts .* not 397923af as published.*not loaded"):
        mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    assert not sentinel.exists()
    # Even a file whose hash prefix matched would be read with weights_only=True only.
    with pytest.raises(NoteError, match="could not read the cached weights"):
        _cached(mod, monkeypatch, planted)
    assert not sentinel.exists()


def test_finding_2_02_never_unpickles_a_whole_model_file_from_disk(note, tmp_path):
    """A reused out-dir can hold anything: 02's full-unpickler demo uses only its own bytes."""
    load = note("checkpointing/02_model_load.py")
    sentinel = tmp_path / "SENTINEL"
    torch.save(PayloadModule(sentinel), tmp_path / "squeezenet_whole.pth")
    torch.save(load.build_model().state_dict(), tmp_path / "squeezenet_state_dict.pth")
    with pytest.raises(ClaimError, match="the default refuses the whole-model file"):
        load.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    load.step_4_full_unpickler_runs_code(load.build_model(), CPU)   # the demo on its own bytes
    assert not sentinel.exists()


def _project_python_files() -> list[Path]:
    skip = {".git", "runs", "data", ".venv", "venv", "build"}
    return [p for p in REPO_ROOT.rglob("*.py")
            if not skip & set(p.relative_to(REPO_ROOT).parts)]


def test_no_weights_only_false_outside_the_lesson():
    call = re.compile(r"weights_only\s*=\s*False\s*[,)]")
    found = {}
    for path in _project_python_files():
        hits = call.findall(path.read_text(encoding="utf-8", errors="replace"))
        if hits:
            found[path.relative_to(REPO_ROOT).as_posix()] = len(hits)
    # 02's load_trusting: the lesson that shows the danger (on bytes it made in memory); 01's
    # second program reuses it on bytes piped from its own first program.
    assert found == {"checkpointing/02_model_load.py": 1}, found


def test_strict_false_only_through_an_explicit_list():
    call = re.compile(r"load_state_dict\([^()]*(\([^()]*\)[^()]*)*strict\s*=\s*False", re.S)
    found = [p.relative_to(REPO_ROOT).as_posix() for p in _project_python_files()
             if call.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert found == ["torchnotes/checkpoint.py"], (
        f"{found}: use torchnotes.checkpoint.load_weights(model, state, may_differ=[...])")
