"""The datasets helper: learnable stand-ins, choosers, downloads and clear errors for bad input.

No test touches the network: an autouse fixture makes any socket connection fail loudly, and
the download paths are exercised by replacing torchvision's downloaders with ones that fail.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
import torchvision.datasets.utils as tv_utils
from conftest import BACKGROUND, FORK, ForkedJob, background
from PIL import Image
from torch import nn

from torchnotes import NoteError
from torchnotes.datasets import (
    DATA_ENV_VAR,
    GENERATED_MARKER,
    MNIST_CLASSES,
    SyntheticCIFAR10,
    SyntheticMNIST,
    data_root,
    fresh_folder,
    hymenoptera,
    image_files,
    load_image,
    make_digits,
    make_hymenoptera,
    torchvision_errors,
    use_real,
)


def as_tensors(ds):
    """All images of a stand-in as float (N, C, H, W) in [0, 1] and labels (N,), no transform."""
    x = torch.from_numpy(np.asarray(ds.data))
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]              # CIFAR HWC, MNIST HW
    return x.float() / 255, torch.as_tensor(ds.targets)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test instead of reaching the internet."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def one_thread():
    """Train on one CPU thread: on a busy 2-core machine (tests running side by side) two
    threads spinning for each other make these small convolutions 3-5x slower; on an idle one
    a second thread saves little. The result (accuracy) does not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the acceptance figure: a small CNN learns the CIFAR-shaped stand-in in one epoch ---------
def _one_epoch_of_moli(result: Path) -> None:
    """Moli CNN, Adam lr 1e-3, batch 64, ONE epoch over 10000 stand-in images (one intra-op
    thread); the held-out accuracy and the timings go to ``result`` as JSON."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train, test = SyntheticCIFAR10(True, size=10_000), SyntheticCIFAR10(False, size=2_000)
    x, y = as_tensors(train)                                        # (N, 3, 32, 32) in [0, 1]
    xt, yt = as_tensors(test)
    made = time.perf_counter() - t0
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    x, xt = (x - mean) / std, (xt - mean) / std                   # Normalize, train statistics
    model = nn.Sequential(                                        # the spec's Moli
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    for i in range(0, len(x), 64):
        idx = order[i:i + 64]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = time.perf_counter() - t1
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    result.write_text(json.dumps(dict(accuracy=accuracy, made=made, trained=trained)))


def _start_moli_epoch(folder):
    """A background job (tests/conftest.py): the epoch trains in a fork beside the other tests."""
    job = ForkedJob(lambda: _one_epoch_of_moli(folder / "result.json"), folder / "log")
    return dict(job=job, result=folder / "result.json"), [job]


if FORK:
    BACKGROUND["moli_epoch"] = _start_moli_epoch


@pytest.fixture(scope="module")
def moli_epoch(tmp_path_factory):
    if not FORK:                                                  # here, on one thread
        result, threads = tmp_path_factory.mktemp("moli") / "result.json", torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _one_epoch_of_moli(result)
        finally:
            torch.set_num_threads(threads)
        return json.loads(result.read_text())
    started = background("moli_epoch")
    assert started["job"].wait(timeout=600) == 0, started["job"].log.read_text()
    return json.loads(started["result"].read_text())


def test_moli_cnn_one_epoch_reaches_80_percent(moli_epoch, capsys):
    """Moli CNN, Adam lr 1e-3, batch 64, ONE epoch over 10000 stand-in images -> >= 80%."""
    with capsys.disabled():
        print(f"\n[moli] stand-in 12000 images made in {moli_epoch['made']:.2f} s; one epoch in "
              f"{moli_epoch['trained']:.2f} s; held-out accuracy {moli_epoch['accuracy']:.1%}")
    assert moli_epoch["accuracy"] >= 0.80, f"one epoch reached only {moli_epoch['accuracy']:.1%}"


# --- MNIST-shaped stand-in --------------------------------------------------------------------
def test_mnist_stand_in_mirrors_the_torchvision_api():
    ds = SyntheticMNIST(train=True, size=64, seed=3)
    assert ds.data.shape == (64, 28, 28) and ds.data.dtype == torch.uint8
    assert isinstance(ds.targets, torch.Tensor) and ds.targets.dtype == torch.int64
    assert ds.targets.shape == (64,) and 0 <= ds.targets.min() and ds.targets.max() <= 9
    assert ds.classes == list(MNIST_CLASSES) == torchvision.datasets.MNIST.classes
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert label == int(ds.targets[0]) and isinstance(label, int)
    x, y = as_tensors(ds)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert torch.equal(y, ds.targets)
    # Digits are white ink on black, mostly inside the central 20x20 box, like MNIST.
    ink = x.sum(dim=(0, 1))
    assert ink[4:24, 4:24].sum() > 0.9 * ink.sum() and ink[0].sum() == ink[:, 0].sum() == 0


def test_mnist_stand_in_is_deterministic_and_splits_differ():
    a, la = make_digits(30, seed=4)
    b, lb = make_digits(30, seed=4)
    c, _ = make_digits(30, seed=5)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert not torch.equal(SyntheticMNIST(True, size=30).data, SyntheticMNIST(False, size=30).data)


def test_mnist_stand_in_is_learnable(one_thread):
    """A linear classifier trained for 3 short epochs on 3000 digits beats 80% on held-out ones."""
    torch.manual_seed(0)
    x, y = as_tensors(SyntheticMNIST(True, size=3000))
    xt, yt = as_tensors(SyntheticMNIST(False, size=1000))
    model = nn.Linear(784, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(128):
            loss = nn.functional.cross_entropy(model(x[idx].flatten(1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    accuracy = (model(xt.flatten(1)).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.80, accuracy


def _args(tmp_path, data="auto", download=False, smoke=False):
    import argparse

    return argparse.Namespace(data=data, data_root=tmp_path, download=download, smoke=smoke)


@pytest.mark.parametrize("name, marker", [("CIFAR-10", "cifar-10-batches-py/batches.meta"),
                                          ("MNIST", "MNIST/raw/t10k-labels-idx1-ubyte")])
def test_use_real_decides_and_says_so(tmp_path, capsys, name, marker):
    assert not use_real(_args(tmp_path), name)                       # nothing on disk
    assert f"built-in {name}-shaped stand-in" in capsys.readouterr().out
    assert use_real(_args(tmp_path, download=True), name)            # auto + --download
    with pytest.raises(NoteError, match=rf"--data real: {name} is not under .*--download"):
        use_real(_args(tmp_path, data="real"), name)
    (tmp_path / marker).parent.mkdir(parents=True)
    (tmp_path / marker).write_bytes(b"")
    capsys.readouterr()
    assert use_real(_args(tmp_path), name) and f"real {name} from" in capsys.readouterr().out
    assert not use_real(_args(tmp_path, data="synthetic"), name)
    assert not use_real(_args(tmp_path, data="real", smoke=True), name)
    assert "--data real is ignored" in capsys.readouterr().out


# --- downloads: a failure says why and what to do; the socket timeout is bounded -----------
class _Unreachable:
    """Stands in for a torchvision dataset class whose download cannot reach the server."""

    timeouts: list = []

    def __init__(self, root, train=True, transform=None, download=False):
        _Unreachable.timeouts.append(socket.getdefaulttimeout())
        raise URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("attr, name", [("CIFAR10", "CIFAR-10"), ("MNIST", "MNIST")])
def test_failed_download_is_a_clear_error(monkeypatch, tmp_path, attr, name):
    monkeypatch.setattr(torchvision.datasets, attr, _Unreachable)
    _Unreachable.timeouts = []
    before = socket.getdefaulttimeout()
    with pytest.raises(NoteError) as err, torchvision_errors(name, tmp_path, True, timeout=7.5):
        getattr(torchvision.datasets, attr)(str(tmp_path), download=True)
    message = str(err.value)
    assert f"could not download {name} into {tmp_path}" in message
    assert "Temporary failure in name resolution" in message            # why
    assert "internet" in message and "--data synthetic" in message      # what to do
    assert "data/README.md" in message
    assert _Unreachable.timeouts == [7.5]                     # bounded while downloading
    assert socket.getdefaulttimeout() == before               # and restored afterwards


def test_failed_hymenoptera_download_is_a_clear_error(monkeypatch, tmp_path):
    def unreachable(url, download_root, **kwargs):
        raise URLError("timed out")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", unreachable)
    with pytest.raises(NoteError, match=r"could not download hymenoptera into .*timed out"):
        hymenoptera("auto", out_dir=tmp_path / "out", root=tmp_path / "data", download=True)


def test_corrupt_real_cifar10_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(b"not a pickle")          # looks present, is broken
    (tmp_path / "MNIST").mkdir()          # the root holds another dataset: the fix names
                                          # CIFAR-10's own folder, not the root
    with pytest.raises(NoteError, match=rf"could not read CIFAR-10 from .*delete {folder} and "
                                        rf"fetch it again"), \
            torchvision_errors("CIFAR-10", tmp_path, download=False):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True)


def test_data_root_follows_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv(DATA_ENV_VAR)
    assert data_root().name == "data"


# --- image folders: bad input gives NoteError naming the path, the layout and the fix -------
def test_missing_folder(tmp_path):
    with pytest.raises(NoteError) as err:
        image_files(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and "does not exist" in str(err.value)
    assert "Expected" in str(err.value) and "data/README.md" in str(err.value)


def test_empty_folder_and_folder_without_images(tmp_path):
    with pytest.raises(NoteError) as err:
        image_files(tmp_path)
    assert f"{tmp_path} holds no images" in str(err.value) and "Fix:" in str(err.value)
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(NoteError, match=r"holds no images \(only: \['notes.txt'\]\)"):
        image_files(tmp_path)


def test_a_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "ants").write_text("oops")
    with pytest.raises(NoteError, match="is a file, not a folder"):
        image_files(tmp_path / "ants")


@pytest.mark.parametrize("content", [b"", b"this is text, not a JPEG",
                                     b"\xff\xd8\xff\xe0" + b"\x00" * 20])   # truncated JPEG
def test_corrupt_or_non_image_file(tmp_path, content):
    bad = tmp_path / "ants" / "0001.jpg"
    bad.parent.mkdir()
    bad.write_bytes(content)
    assert image_files(bad.parent) == [bad]                  # it looks like an image by name
    with pytest.raises(NoteError) as err:
        load_image(bad)
    message = str(err.value)
    assert f"{bad} is not a readable image" in message
    assert "Expected a JPEG or PNG" in message and "delete or replace" in message


def test_a_decompression_bomb_is_named_not_decoded(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    bomb = tmp_path / "bomb.png"                        # 45 bytes that claim 20,000 x 20,000
    header = struct.pack(">IIBBBBB", 20_000, 20_000, 1, 0, 0, 0, 0)     # 1-bit grey
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(NoteError, match="bomb.png is not a readable image "
                                        r"\(DecompressionBombError: Image size \(400000000"):
        load_image(bomb)


def test_truncated_real_jpeg_is_caught(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(NoteError, match="cut.jpg is not a readable image"):
        load_image(cut)
    assert load_image(good).size == (64, 64)


def test_hidden_files_and_other_extensions_are_skipped(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "b.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "labels.txt").write_text("x")
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG"]


# --- hymenoptera stand-in: real JPEG files in the real layout -------------------------------
def test_hymenoptera_stand_in_layout_and_real_jpegs(tmp_path):
    root = make_hymenoptera(tmp_path, seed=0, train_per_class=4, val_per_class=2)
    assert root == tmp_path / "hymenoptera_data"
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == ["ants", "bees"]
        for kind in ("ants", "bees"):
            files = image_files(root / split / kind)
            assert len(files) == n and all(p.suffix == ".jpg" for p in files)
            for p in files:
                with Image.open(p) as img:
                    assert img.format == "JPEG" and img.mode == "RGB"
                    assert 64 <= img.size[0] <= 104 and 48 <= img.size[1] <= 80
    names = [p.name for p in root.rglob("*.jpg")]
    assert len(names) == len(set(names)) == 12               # unique names, no label in them


def test_hymenoptera_stand_in_is_deterministic_in_the_seed(tmp_path):
    def files(seed, where):
        root = make_hymenoptera(tmp_path / where, seed=seed, train_per_class=3, val_per_class=1)
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}

    a, b, c = files(0, "a"), files(0, "b"), files(1, "c")
    assert a == b                                            # same seed, same bytes
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def _colour_histograms(root, split):
    """(N, 64) square-rooted 4x4x4 RGB histograms and (N,) labels (ants 0, bees 1)."""
    feats, labels = [], []
    for k, kind in enumerate(("ants", "bees")):
        for p in image_files(root / split / kind):
            a = np.asarray(load_image(p)) // 64
            idx = (a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel()
            feats.append(np.sqrt(np.bincount(idx, minlength=64) / idx.size))
            labels.append(k)
    return torch.tensor(np.array(feats), dtype=torch.float32), torch.tensor(labels)


def test_hymenoptera_stand_in_is_learnable(tmp_path, one_thread):
    """Colour alone (bees yellow, ants dark) separates the classes on the held-out split."""
    root = make_hymenoptera(tmp_path, seed=1, train_per_class=30, val_per_class=20)
    x, y = _colour_histograms(root, "train")
    xv, yv = _colour_histograms(root, "val")
    torch.manual_seed(0)
    model = nn.Linear(64, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    assert accuracy >= 0.9, accuracy


def test_hymenoptera_chooser_writes_the_stand_in_under_out_dir(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    folder = hymenoptera("auto", out_dir=tmp_path / "out", root=data, train_per_class=2,
                         val_per_class=1)
    assert folder == tmp_path / "out" / "stand-in-data" / "hymenoptera_data"
    assert list(data.iterdir()) == []                         # nothing written into data/
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "stand-in" in lines[0] and "data/README.md" in lines[0]
    # A rerun replaces the earlier stand-in (its marker says torchnotes made it).
    first = sorted(folder.rglob("*.jpg"))
    again = hymenoptera("synthetic", out_dir=tmp_path / "out", root=data, train_per_class=1,
                        val_per_class=1, verbose=False)
    assert again == folder and len(first) == 6 and len(list(folder.rglob("*.jpg"))) == 4


def test_hymenoptera_chooser_finds_real_data(tmp_path, capsys):
    data = tmp_path / "data"
    make_hymenoptera(data, train_per_class=2, val_per_class=1)     # plays the real download
    folder = hymenoptera("auto", out_dir=tmp_path / "out", root=data)
    assert folder == data / "hymenoptera_data" and not (tmp_path / "out").exists()
    assert "real hymenoptera" in capsys.readouterr().out
    assert hymenoptera("real", out_dir=tmp_path / "out", root=data, verbose=False) == folder


def test_hymenoptera_chooser_errors(tmp_path):
    with pytest.raises(NoteError, match=r"--data real: hymenoptera is not under .*--download"):
        hymenoptera("real", out_dir=tmp_path / "out", root=tmp_path)
    with pytest.raises(NoteError, match="inside the data folder"):
        hymenoptera("synthetic", out_dir=tmp_path / "runs", root=tmp_path)
    broken = tmp_path / "broken"
    (broken / "hymenoptera_data" / "train" / "ants").mkdir(parents=True)
    with pytest.raises(NoteError, match=r"train/ants holds no images"):
        hymenoptera("auto", out_dir=tmp_path / "out", root=broken)
    Image.new("RGB", (4, 4)).save(broken / "hymenoptera_data" / "train" / "ants" / "a.jpg")
    with pytest.raises(NoteError, match=r"train/bees does not exist"):
        hymenoptera("real", out_dir=tmp_path / "out", root=broken)


def test_fresh_folder_never_deletes_what_it_did_not_make(tmp_path):
    mine = fresh_folder(tmp_path / "gen")
    (mine / "old.txt").write_text("from an earlier run")
    assert (mine / GENERATED_MARKER).is_file()
    assert list(fresh_folder(tmp_path / "gen").iterdir()) == [mine / GENERATED_MARKER]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("keep me")
    with pytest.raises(NoteError, match="was not generated by these notes"):
        fresh_folder(theirs)
    assert (theirs / "precious.txt").read_text() == "keep me"


def test_fresh_folder_killed_while_replacing_is_finished_by_the_next_run(tmp_path, monkeypatch):
    """Deleting an earlier run's folder once went straight through it: a kill halfway could
    take its marker and leave the rest, which every later run refused to replace."""
    from torchnotes import cli

    gen = fresh_folder(tmp_path / "logs")
    for name in ("a", "b", "c"):
        (gen / name).mkdir()
        (gen / name / "events").write_text("x")
    real, calls = cli.shutil.rmtree, []

    def killed(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt                  # the run dies in the middle
        real(path, *args, **kwargs)

    monkeypatch.setattr(cli.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        fresh_folder(tmp_path / "logs")
    (leftover,) = tmp_path.glob(".logs.old-*")       # set aside, still marked
    assert (leftover / GENERATED_MARKER).is_file() and not (tmp_path / "logs").exists()
    monkeypatch.setattr(cli.shutil, "rmtree", real)
    again = fresh_folder(tmp_path / "logs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert list(again.iterdir()) == [again / GENERATED_MARKER]
