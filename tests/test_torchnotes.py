"""Unit tests of the shared helper: device selection, flags, check(), curriculum, stand-in."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import torchnotes
from torchnotes import ClaimError, DeviceError, NoteError, check, get_device
from torchnotes.curriculum import REPO_ROOT, notes, summary_of
from torchnotes.datasets import SyntheticCIFAR10, make_shapes


# --- device -----------------------------------------------------------------------------------
def test_auto_and_cpu_resolve(monkeypatch):
    monkeypatch.delenv(torchnotes.ENV_VAR, raising=False)
    assert get_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert get_device().type == expected
    assert get_device(" AUTO ").type == expected


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv(torchnotes.ENV_VAR, "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv(torchnotes.ENV_VAR, "tpu9")
    with pytest.raises(DeviceError, match=r"TORCHNOTES_DEVICE='tpu9'.*Expected one of"):
        get_device()


def test_explicit_name_beats_env_var(monkeypatch):
    monkeypatch.setenv(torchnotes.ENV_VAR, "not-a-device")
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "xpu"])
def test_bad_names_are_clear_errors(name):
    with pytest.raises(DeviceError, match="Available here: cpu"):
        get_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the error path "
                    "for a missing GPU cannot be exercised here")
def test_missing_cuda_says_what_is_available():
    with pytest.raises(DeviceError, match=r"--device cuda: CUDA is not available.*Available here"):
        get_device("cuda")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        get_device("cuda:1")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_missing_mps_is_a_clear_error():
    with pytest.raises(DeviceError, match="MPS is not available"):
        get_device("mps")


# --- flags and seeding --------------------------------------------------------------------------
def test_parser_has_the_common_flags(tmp_path, capsys):
    parser = torchnotes.make_parser("autograd/99_demo.py", "Demo note.\n\nMore text.")
    assert parser.description == "Demo note."
    args, device = torchnotes.start(parser, ["--smoke", "--device", "cpu", "--seed", "7",
                                             "--out-dir", str(tmp_path)])
    assert (args.smoke, args.seed, args.out_dir, device.type) == (True, 7, tmp_path, "cpu")
    assert "device: cpu | seed: 7 | mode: smoke" in capsys.readouterr().out


def test_default_out_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHNOTES_RUNS", str(tmp_path))
    assert torchnotes.default_out_dir("x/autograd/02_a.py") == tmp_path / "autograd" / "02_a"
    monkeypatch.delenv("TORCHNOTES_RUNS")
    script = REPO_ROOT / "autograd" / "02_a.py"
    assert torchnotes.default_out_dir(script) == REPO_ROOT / "runs" / "autograd" / "02_a"
    monkeypatch.chdir(tmp_path)                   # the default does not follow the cwd
    assert torchnotes.default_out_dir(script) == REPO_ROOT / "runs" / "autograd" / "02_a"


def test_bad_device_flag_exits_with_usage_error(capsys):
    parser = torchnotes.make_parser("autograd/99_demo.py", "Demo.")
    with pytest.raises(SystemExit) as exc:
        torchnotes.start(parser, ["--device", "gpu"])
    assert exc.value.code == 2
    assert "--device gpu: not a device name" in capsys.readouterr().err


def test_seed_everything_covers_python_numpy_torch():
    import random

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    torchnotes.seed_everything(3)
    first = draw()
    torchnotes.seed_everything(3)
    assert draw() == first


def test_writable_file_never_overwrites_silently(tmp_path):
    target = tmp_path / "sub" / "model.pth"
    assert torchnotes.writable_file(target) == target and target.parent.is_dir()
    target.write_bytes(b"saved by an earlier run")
    with pytest.raises(NoteError, match=r"model\.pth already exists.*--overwrite"):
        torchnotes.writable_file(target)
    assert target.read_bytes() == b"saved by an earlier run"
    assert torchnotes.writable_file(target, overwrite=True) == target


def test_progress_is_silent_off_a_terminal():
    items = [1, 2, 3]
    assert torchnotes.progress(items, desc="x") is items


# --- check() --------------------------------------------------------------------------------------
def test_check_passes_and_prints_the_error(capsys):
    err = check("close enough", torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-7], atol=1e-6)
    assert 0 < err < 1e-6
    line = capsys.readouterr().out
    assert line.startswith("✓ close enough") and "max |error|" in line


def test_check_fails_loudly():
    with pytest.raises(ClaimError, match=r"too far: max \|error\| = 0\.1"):
        check("too far", 1.1, 1.0, atol=1e-3)
    with pytest.raises(ClaimError, match="does not hold"):
        check("false claim", False)
    with pytest.raises(ClaimError, match="shapes differ"):
        check("shape", torch.zeros(2), torch.zeros(3), atol=1)
    with pytest.raises(ClaimError):
        check("nan never passes", float("nan"), 0.0, atol=1e9)


def test_check_rejects_ambiguous_tensor_conditions():
    with pytest.raises(TypeError, match=r"\.all\(\)"):
        check("many values", torch.tensor([True, False]))


def test_check_uses_relative_tolerance():
    check("rtol scales with the expected value", 1001.0, 1000.0, rtol=2e-3)
    with pytest.raises(ClaimError):
        check("rtol scales with the expected value", 1003.0, 1000.0, rtol=2e-3)


def test_check_counts_claims():
    torchnotes.reset_claims()
    check("a", True)
    check("b", 1.0, 1.0)
    assert torchnotes.passed_claims() == ["a", "b"]


# --- curriculum ---------------------------------------------------------------------
def test_curriculum_lists_notes_in_order_with_summaries():
    found = notes()
    names = [n.name for n in found]
    assert "autograd/02_autograd_basics.py" in names
    autograd = [n for n in names if n.startswith("autograd/")]
    assert autograd == sorted(autograd)
    assert summary_of(REPO_ROOT / "autograd/02_autograd_basics.py").startswith("Autograd basics")


def test_curriculum_handles_missing_docstring(tmp_path):
    (tmp_path / "autograd").mkdir()
    (tmp_path / "autograd" / "01_x.py").write_text("x = 1\n")
    (tmp_path / "autograd" / "helper.py").write_text('"""Not a note."""\n')
    assert [(n.name, n.summary) for n in notes(tmp_path)] == [
        ("autograd/01_x.py", "(no docstring)")]


# --- CIFAR-shaped stand-in ------------------------------------------------------------
def test_stand_in_mirrors_the_cifar10_api():
    ds = SyntheticCIFAR10(train=True, size=50, seed=1)
    assert ds.data.shape == (50, 32, 32, 3) and ds.data.dtype == np.uint8
    assert len(ds) == 50 and len(ds.classes) == 10 and set(ds.targets) <= set(range(10))
    img, label = ds[0]
    assert img.size == (32, 32) and img.mode == "RGB" and isinstance(label, int)
    assert np.array_equal(np.asarray(img), ds.data[0]) and label == ds.targets[0]


def test_stand_in_is_deterministic_and_splits_differ():
    a, la = make_shapes(20, seed=5)
    b, lb = make_shapes(20, seed=5)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    train, test = SyntheticCIFAR10(True, size=20), SyntheticCIFAR10(False, size=20)
    assert not np.array_equal(train.data, test.data)


def test_stand_in_classes_are_all_present_and_distinct():
    x, y = make_shapes(2000, seed=0)
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 150                      # roughly balanced: 200 expected per class
    means = np.stack([x[y == k].reshape(-1, 32 * 32 * 3).mean(0) for k in range(10)])
    gaps = np.abs(means[:, None] - means[None]).mean(-1) + np.eye(10) * 1e9
    assert gaps.min() > 1.0                        # every pair of class means differs


def test_data_source_forces_stand_in_for_smoke(capsys):
    from torchnotes.datasets import data_source

    assert data_source(argparse.Namespace(smoke=True, data="real")) == "synthetic"
    assert "--data real is ignored" in capsys.readouterr().out
    assert data_source(argparse.Namespace(smoke=False, data="real")) == "real"
    assert data_source(argparse.Namespace(smoke=True, data="auto")) == "synthetic"
    assert capsys.readouterr().out == ""
    # --download in a smoke run once met "for the real photos add --download"
    assert data_source(argparse.Namespace(smoke=True, data="auto", download=True)) == "synthetic"
    assert "--smoke always uses the built-in stand-in; --download is ignored" in \
        capsys.readouterr().out
    data_source(argparse.Namespace(smoke=True, data="real", download=True))
    assert "--data real and --download are ignored" in capsys.readouterr().out


def test_check_raises_proves_an_error_and_fails_without_one(capsys):
    message = torchnotes.check_raises("int() of text raises", ValueError, int, "abc",
                                      match="invalid literal")
    assert "invalid literal" in message
    assert capsys.readouterr().out.startswith("✓ int() of text raises  (ValueError: invalid")
    with pytest.raises(ClaimError, match="no ValueError was raised"):
        torchnotes.check_raises("int('1') raises", ValueError, int, "1")
    with pytest.raises(ClaimError, match="lacks 'other words'"):
        torchnotes.check_raises("wrong message", ValueError, int, "abc", match="other words")


def test_float64_device_avoids_mps():
    assert torchnotes.float64_device(torch.device("cpu")) == torch.device("cpu")
    assert torchnotes.float64_device(torch.device("mps")) == torch.device("cpu")
    assert torchnotes.float64_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_check_never_passes_by_an_infinity():
    """A closed form mistyped as infinite (3 / x**2 at x = 0) must not pass: inf tolerance."""
    x = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(ClaimError, match="non-finite"):
        check("derivative", x * 0 + 3.0, 3 / x**2 + 2)          # expected holds +inf at 0
    with pytest.raises(ClaimError, match="non-finite"):
        check("derivative", 3 / x**2, x * 0 + 3.0, rtol=1e-6)    # actual holds +inf
    with pytest.raises(ClaimError, match="non-finite"):
        check("nan", torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]), atol=1e9)
    with pytest.raises(ClaimError, match="non-finite"):
        check("signs", torch.tensor([float("inf")]), torch.tensor([float("-inf")]))


def test_check_accepts_the_same_non_finite_value_in_the_same_place(capsys):
    inf, nan = float("inf"), float("nan")
    check("same", torch.tensor([inf, -inf, nan, 1.0]), torch.tensor([inf, -inf, nan, 1.0 + 1e-9]),
          atol=1e-6)
    assert "✓ same" in capsys.readouterr().out
    with pytest.raises(ClaimError):
        check("finite part still compared", torch.tensor([inf, 1.0]), torch.tensor([inf, 2.0]))


def test_notes_under_advanced_subtopics_are_found_and_write_under_runs(tmp_path, monkeypatch):
    from torchnotes.cli import default_out_dir
    from torchnotes.curriculum import notes, repo_relative

    for rel in ("autograd/01_a.py", "advanced/peft/01_lora.py", "advanced/loss_functions/02_b.py",
                "advanced/generative_models/01_c.py", "advanced/zzz_new/01_d.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('"""Summary line."""\n')
    names = [n.name for n in notes(tmp_path)]
    assert names == ["autograd/01_a.py", "advanced/loss_functions/02_b.py",
                     "advanced/peft/01_lora.py", "advanced/generative_models/01_c.py",
                     "advanced/zzz_new/01_d.py"]
    lora = tmp_path / "advanced/peft/01_lora.py"
    assert repo_relative(lora) == "advanced/peft/01_lora.py"
    monkeypatch.delenv("TORCHNOTES_RUNS", raising=False)
    assert default_out_dir(lora) == tmp_path.resolve() / "runs/advanced/peft/01_lora"
    first = tmp_path / "autograd/01_a.py"
    assert default_out_dir(first) == tmp_path.resolve() / "runs/autograd/01_a"
