"""checkpointing/01-03: save/load round trips, the weights_only default, safe_globals, VGG16 heads.

The smoke suite runs each note once; these tests pin the pieces and prove the claims can fail.
"""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from torchnotes import ClaimError, NoteError

CPU = torch.device("cpu")


@pytest.fixture
def save(note):
    return note("checkpointing/01_model_save.py")


@pytest.fixture
def load(note):
    return note("checkpointing/02_model_load.py")


def _skip_trap(mod, monkeypatch):
    # Step 3 starts two Python subprocesses (~3 s); the smoke run of 01 runs them for real.
    monkeypatch.setattr(mod, "step_3_whole_model_trap",
                        lambda *a, **k: {"errors": {}, "paths": [None] * 2})
    monkeypatch.setattr(mod, "step_4_fix_rebuild_the_class", lambda *a, **k: 0.0)


def test_finding_2_01s_children_import_nothing_planted(save, tmp_path, monkeypatch):
    # A module planted in --out-dir, the current folder or on PYTHONPATH is never imported.
    sentinel = tmp_path / "SENTINEL"
    planted = f"open({str(sentinel)!r}, 'w').close()\n"
    out_dir, elsewhere = tmp_path / "out", tmp_path / "pythonpath"
    for folder in (out_dir, elsewhere):
        folder.mkdir()
        (folder / "planted.py").write_text(planted)
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))
    monkeypatch.chdir(out_dir)
    monkeypatch.setattr(save, "SAVER", "import planted")                 # both programs try
    monkeypatch.setattr(save, "LOADER", "import sys; sys.stdin.read(); import planted")
    with pytest.raises(NoteError, match="(?s)saving program failed: .*No module named 'planted'"
                                        ".*loading program said: .*No module named 'planted'"):
        save.saver_to_loader([out_dir / "state.pth", out_dir / "io.pth"])
    assert not sentinel.exists()
    control = subprocess.run([sys.executable, "-c", "import planted"], cwd=out_dir)
    assert control.returncode == 0 and sentinel.exists()    # without -I it would have run


def test_01_claim_fails_when_the_other_program_can_load_it(save, tmp_path, monkeypatch):
    # two programs without torch (fast): the loading one reads the bytes and does not fail
    monkeypatch.setattr(save, "SAVER", "import sys; sys.stdout.buffer.write(bytes(100))")
    monkeypatch.setattr(save, "LOADER", "import sys; print(len(sys.stdin.buffer.read()))")
    whole = tmp_path / "whole.pth"
    torch.save(save.build_model(), whole)
    with pytest.raises(ClaimError, match="another program fails on the missing class"):
        save.step_3_whole_model_trap(whole, tmp_path, False, CPU)


def test_01_claim_fails_when_the_default_loads_the_whole_model(save, tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(save.build_model().state_dict(), whole)        # a file the default accepts
    with pytest.raises(ClaimError, match="refuses the whole model although"):
        save.step_3_whole_model_trap(whole, tmp_path, False, CPU)


def test_01_then_02_uses_01s_files(save, load, tmp_path, monkeypatch, capsys):
    _skip_trap(save, monkeypatch)
    saved = save.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    loaded = load.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert loaded["whole"] == saved["whole"] and loaded["state"] == saved["state"]
    assert "loading the files checkpointing/01_model_save.py saved" in capsys.readouterr().out
    assert not (tmp_path / "made_by_02").exists()


def test_02_names_a_cut_short_or_foreign_file_of_01s(load, tmp_path):
    """A kill in the middle of 01's torch.save, a flipped byte, another model's weights: each
    is named with the fix, not a miniz or load_state_dict traceback."""
    model = load.build_model()
    whole, state = tmp_path / load.WHOLE_FILE, tmp_path / load.STATE_FILE
    torch.save(model, whole)
    torch.save(model.state_dict(), state)
    argv = ["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)]
    good = state.read_bytes()
    state.write_bytes(good[:100_000])                            # cut short
    with pytest.raises(NoteError, match=r"squeezenet_state_dict.pth is not a complete "
                                        r"torch.save file \(not a zip archive.*--overwrite"):
        load.main(argv)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF                              # one byte inside a tensor
    state.write_bytes(bytes(flipped))
    with pytest.raises(NoteError, match=r"its member .* fails its CRC check"):
        load.main(argv)
    torch.save(nn.Linear(3, 4).state_dict(), state)              # a whole, foreign file
    with pytest.raises(NoteError, match=r"does not fit this SqueezeNet \(Error\(s\) in loading "
                                        r"state_dict .*Missing key"):
        load.main(argv)


def test_02_then_01_in_a_fresh_dir(save, load, tmp_path, monkeypatch, capsys):
    _skip_trap(save, monkeypatch)
    first = load.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert first["whole"].parent == tmp_path / "made_by_02"
    assert "01's files are not in" in capsys.readouterr().out
    again = load.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])  # reuses them
    assert again["whole"] == first["whole"]
    saved = save.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert saved["whole"] == tmp_path / "squeezenet_whole.pth"
    assert load.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])["whole"] == \
        saved["whole"]


def test_01_refuses_to_overwrite_unless_asked(save, tmp_path, monkeypatch):
    _skip_trap(save, monkeypatch)
    argv = ["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)]
    save.main(argv)
    before = (tmp_path / "squeezenet_state_dict.pth").read_bytes()
    with pytest.raises(NoteError, match="already exists.*--overwrite"):
        save.main(argv)
    assert (tmp_path / "squeezenet_state_dict.pth").read_bytes() == before
    save.main([*argv, "--overwrite", "--seed", "1"])     # another seed, other weights
    assert (tmp_path / "squeezenet_state_dict.pth").read_bytes() != before


def test_state_dict_round_trip_is_exact(load, tmp_path):
    model = load.build_model()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    back = torch.load(tmp_path / "sd.pth", map_location=CPU)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_default_refuses_whole_model_and_safe_globals_fixes_it(load, tmp_path):
    model = load.build_model().eval()
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(tmp_path / "whole.pth", map_location=CPU)
    assert load.step_1_default_refuses_whole_model(tmp_path / "whole.pth", CPU) == \
        "torchvision.models.squeezenet.SqueezeNet"
    assert load.step_3_safe_globals(tmp_path / "whole.pth", model, CPU, batch=1) == 0.0


def test_claim_fails_when_the_allowlist_misses_a_class(load, tmp_path, monkeypatch):
    model = load.build_model().eval()
    torch.save(model, tmp_path / "whole.pth")
    monkeypatch.setattr(load, "TRUSTED", [c for c in load.TRUSTED if c is not nn.Dropout])
    with pytest.raises(ClaimError, match="allowlist is exactly"):
        load.step_3_safe_globals(tmp_path / "whole.pth", model, CPU, batch=1)


def test_claim_fails_when_the_files_hold_different_weights(load, tmp_path):
    torch.manual_seed(0)
    torch.save(load.build_model(), tmp_path / "whole.pth")
    torch.save(load.build_model().state_dict(), tmp_path / "state.pth")   # another model
    with pytest.raises(ClaimError, match="same weights"):
        load.step_2_state_dict_way(tmp_path / "whole.pth", tmp_path / "state.pth", CPU)


def test_claim_fails_when_the_whole_file_has_an_extra_tensor(load, tmp_path):
    torch.manual_seed(0)
    model = load.build_model()
    torch.save(model.state_dict(), tmp_path / "state.pth")
    model.register_buffer("extra", torch.zeros(1))          # same weights plus one more key
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(ClaimError, match="same weights"):
        load.step_2_state_dict_way(tmp_path / "whole.pth", tmp_path / "state.pth", CPU)


def test_01_same_weights_claim_fails_when_the_files_differ(save, tmp_path, monkeypatch):
    real_save = torch.save

    def save_other_whole(obj, f, *args, **kwargs):       # the whole file gets other weights
        if isinstance(obj, nn.Module):
            obj = copy.deepcopy(obj)
            with torch.no_grad():
                next(obj.parameters()).add_(1.0)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_other_whole)
    with pytest.raises(ClaimError, match="both files hold the same weights"):
        save.step_1_save_both_ways(tmp_path, False, CPU, batch=1)


def test_02_map_location_includes_meta_even_on_cpu(load, capsys):
    placed = load.step_5_map_location(load.build_model(), CPU)
    assert placed == ["cpu", "meta"]
    assert "map_location='meta' put every tensor on meta" in capsys.readouterr().out


def test_the_strangers_code_runs_only_under_the_full_unpickler(load, tmp_path, capsys):
    model = load.build_model()
    torch.save(model, tmp_path / "whole.pth")
    out = load.step_4_full_unpickler_runs_code(model, CPU)
    assert out["refused"] == "print"
    assert out["printed"].startswith(">> printed by code inside the checkpoint")
    buffer = io.BytesIO()
    torch.save(load.StrangersPayload(), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL print"):
        torch.load(buffer, map_location=CPU)


def test_claim_fails_when_the_payload_is_not_what_the_note_says(load, tmp_path, monkeypatch):
    monkeypatch.setattr(load.StrangersPayload, "__reduce__", lambda self: (len, ([],)))
    with pytest.raises(ClaimError, match="names the function print"):
        load.step_4_full_unpickler_runs_code(load.build_model(), CPU)


def _empty_hub(tmp_path, monkeypatch) -> tuple:
    """torch hub's cache -> an empty tmp folder; the download function records, never fetches."""
    hub, calls = tmp_path / "hub", []
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub, calls


def test_03_heads_have_10_outputs_and_frozen_params_get_no_grad(note, tmp_path, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    hub, calls = _empty_hub(tmp_path, monkeypatch)
    out_dir = tmp_path / "out"
    out = mod.main(["--smoke", "--device", "cpu", "--out-dir", str(out_dir)])
    assert out["pretrained"] is False                       # empty cache, no --download
    assert out["add_module_shape"] == (2, 10) and out["replaced_shape"] == (2, 10)
    assert out["trainable"] == 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert out["frozen"] == 14_714_688                      # VGG16's 13 conv layers
    assert calls == []                                      # no download was attempted
    assert not hub.exists() or list(hub.rglob("*.pth")) == []   # no checkpoint in the cache
    assert sorted(p.name for p in out_dir.iterdir()) == [
        ".lock", "planted-vgg16-397923af.pth"]             # one run at a time; step 5's file


def test_03_failed_download_is_a_note_error(note, tmp_path, monkeypatch, capsys):
    mod = note("checkpointing/03_model_pretrained.py")
    hub, calls = _empty_hub(tmp_path, monkeypatch)
    with pytest.raises(NoteError, match="could not download.*no network in the tests") as err:
        mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path / "out"),
                  "--download"])
    message = str(err.value)
    assert "run again with --download" in message and "without --download" in message
    assert "\n" not in message                              # a one-line reason
    assert calls == [mod.WEIGHTS.url]
    assert str(hub / "checkpoints" / "vgg16-397923af.pth") in capsys.readouterr().out
    assert list(hub.rglob("*.pth")) == []                   # no partial checkpoint left behind


def test_03_claim_fails_when_features_are_not_frozen(note, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    small = nn.Module()
    small.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    small.classifier = nn.Linear(4, 10)
    small.forward = lambda x: small.classifier(small.features(x))
    monkeypatch.setattr(small.features, "requires_grad_", lambda flag: small.features)  # no-op
    with pytest.raises(ClaimError, match="frozen parameter has no gradient"):
        mod.step_4_freeze_features(small, torch.rand(2, 3, 8, 8))


def test_03_looks_for_weights_in_torch_hub_cache(note, tmp_path, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert mod.cached_weights_file() == tmp_path / "checkpoints" / "vgg16-397923af.pth"


@pytest.fixture(scope="module")
def random_vgg16():
    """One randomly initialised VGG16 for the tests that change a copy (138 M parameters take
    about a second to initialise; a copy a fifth of that)."""
    from conftest import REPO_ROOT, import_note

    return import_note(REPO_ROOT / "checkpointing/03_model_pretrained.py").vgg16(weights=None)


def test_03_claim_fails_when_the_optimiser_gets_every_parameter(note, monkeypatch, random_vgg16):
    mod = note("checkpointing/03_model_pretrained.py")
    vgg = copy.deepcopy(random_vgg16)
    vgg.classifier[6] = nn.Linear(4096, 10)
    monkeypatch.setattr(mod, "filter", lambda keep, params: params, raising=False)
    with pytest.raises(ClaimError, match="optimiser holds exactly the classifier's"):
        mod.step_4_freeze_features(vgg, torch.rand(1, 3, 32, 32))


def test_03_claim_fails_when_the_head_is_not_at_index_6(note, random_vgg16):
    mod = note("checkpointing/03_model_pretrained.py")
    vgg = copy.deepcopy(random_vgg16)
    vgg.classifier.append(nn.Identity())                  # one more layer after the head
    with pytest.raises(ClaimError, match="head is classifier\\[6\\]"):
        mod.step_2_add_module(vgg, torch.rand(1, 3, 32, 32))


def test_03_claim_fails_without_the_hash_check(note, tmp_path, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(mod, "load_cached_weights",
                        lambda path: torch.load(path, map_location=CPU))   # no hash check
    with pytest.raises(ClaimError, match="does not match is refused"):
        mod.step_5_refuse_a_planted_file(tmp_path)


def test_03_claim_fails_when_the_file_is_read_before_its_hash(note, tmp_path, monkeypatch):
    mod = note("checkpointing/03_model_pretrained.py")
    checked = mod.load_cached_weights

    def read_first(path):                           # the mistake: unpickle, then check the hash
        torch.load(path, map_location=CPU, weights_only=True)
        return checked(path)

    monkeypatch.setattr(mod, "load_cached_weights", read_first)
    with pytest.raises(ClaimError, match="does not match is refused, unread.*lacks 'not loaded'"):
        mod.step_5_refuse_a_planted_file(tmp_path)


def _resize_crop(size: int = 256, crop: int = 224) -> list:
    return [v2.Resize(size), v2.CenterCrop(crop)]


@pytest.mark.parametrize("transforms", [
    v2.Compose([*_resize_crop(), v2.ToDtype(torch.float32, scale=True)]),         # no Normalize
    v2.Compose([*_resize_crop(), v2.ToDtype(torch.float32, scale=False),           # 0..255
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
    v2.Compose([*_resize_crop(), v2.ToDtype(torch.float32, scale=True),            # BGR order
                v2.Normalize([0.406, 0.456, 0.485], [0.225, 0.224, 0.229])]),
    v2.Compose([*_resize_crop(crop=256), v2.ToDtype(torch.float32, scale=True),    # 256x256
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
], ids=["no-normalize", "unscaled", "bgr-mean-std", "crop-256"])
def test_03_claim_fails_when_the_preprocessing_is_not_imagenets(note, tmp_path, monkeypatch,
                                                                 random_vgg16, transforms):
    mod = note("checkpointing/03_model_pretrained.py")
    _empty_hub(tmp_path, monkeypatch)
    monkeypatch.setattr(mod, "vgg16", lambda weights=None: random_vgg16)      # not modified
    monkeypatch.setattr(mod, "WEIGHTS", SimpleNamespace(meta=mod.WEIGHTS.meta,
                                                        transforms=lambda: transforms))
    with pytest.raises(ClaimError, match="weights.transforms\\(\\): gray 300x400"):
        mod.step_1_build(False, CPU, 32, 2)


def test_03_cached_weights_reach_the_model_and_the_claim_fails_if_not(note, tmp_path,
                                                                       monkeypatch, random_vgg16):
    mod = note("checkpointing/03_model_pretrained.py")
    _empty_hub(tmp_path, monkeypatch)
    cached = mod.cached_weights_file()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"present; load_cached_weights is replaced below")
    state = random_vgg16.state_dict()                 # as if the file passed its hash check
    monkeypatch.setattr(mod, "load_cached_weights", lambda path: state)
    vgg = copy.deepcopy(random_vgg16)
    monkeypatch.setattr(mod, "vgg16", lambda weights=None: vgg)
    with torch.no_grad():
        vgg.classifier[6].weight.zero_()              # the model differs from the file
    assert mod.step_1_build(False, CPU, 32, 2)[1] is True
    assert torch.equal(vgg.classifier[6].weight, state["classifier.6.weight"])
    with torch.no_grad():
        vgg.features[0].weight.zero_()               # (VGG16 starts its biases at 0)
    # the mistake: the file's tensors never reach this model (strict=False on renamed keys,
    # or loaded into another instance)
    monkeypatch.setattr(vgg, "load_state_dict", lambda sd, strict=True: None)
    with pytest.raises(ClaimError, match="load_state_dict put every tensor of the file"):
        mod.step_1_build(False, CPU, 32, 2)
