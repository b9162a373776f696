"""The data_pipeline notes: TensorBoard logs read back, bad input, and claims that can fail.

TensorBoard event files are read with TensorBoard's own reader (tests/tb_events.py). Each
"can fail" test breaks the thing a step teaches and expects ``ClaimError``.
"""

from __future__ import annotations

import contextlib
import io
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from tb_events import merged
from torchvision import transforms

from torchnotes import ClaimError, NoteError
from torchnotes.datasets import DATA_ENV_VAR, SyntheticCIFAR10, make_hymenoptera


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """05, 06 and 07 run once in smoke mode; tests read what they wrote."""
    from conftest import REPO_ROOT, import_note

    runs = {}
    for name in ("05_tensorboard_basics", "06_dataset_transform", "07_dataloader"):
        out = tmp_path_factory.mktemp(name)
        module = import_note(REPO_ROOT / "data_pipeline" / f"{name}.py")
        runs[name] = (out, quiet(module.main, ["--smoke", "--device", "cpu",
                                              "--out-dir", str(out)]))
    return runs


@pytest.fixture
def stand_in(tmp_path):
    """A small ants/bees stand-in: ``hymenoptera_data`` with 3 train, 1 val image per class."""
    return make_hymenoptera(tmp_path / "data", seed=0, train_per_class=3, val_per_class=1)


# --- TensorBoard: tags and step counts read back ---------------------------------------------
def test_05_scalars_and_images_read_back(smoke_runs):
    out, result = smoke_runs["05_tensorboard_basics"]
    logs = merged(out / "logs")
    assert logs["scalars"] == {"y=2x": list(range(10))}                  # SMOKE scalar_steps
    assert logs["images"] == {"ants_bees": [1, 2], "batch": [0]}
    with Image.open(out / "batch_grid.png") as grid:                     # 4 images of 32 px
        assert grid.size == (4 * 34 + 2, 34 + 2)
    assert result["scalar_steps"] == list(range(10))


def test_06_preview_reads_back(smoke_runs):
    out, result = smoke_runs["06_dataset_transform"]
    logs = merged(out / "logs")
    assert logs["images"] == {"test_set": [0, 1, 2, 3]} and logs["scalars"] == {}
    assert (out / "test_set_grid.png").is_file()
    assert result["splits"]["train"] == 256 and result["splits"]["test"] == 128


def test_07_epochs_read_back(smoke_runs):
    out, result = smoke_runs["07_dataloader"]
    logs = merged(out / "logs")
    per_epoch = 100 // 32                                                # drop_last=True
    assert logs["images"] == {"Epoch: 0": list(range(per_epoch)),
                              "Epoch: 1": list(range(per_epoch))}
    assert (out / "first_batch.png").is_file()
    assert all(rate > 0 for rate in result["images_per_s"].values())
    assert set(result["images_per_s"]) == {0, 2}


def test_rerun_replaces_logs_instead_of_piling_up(note, tmp_path):
    module = note("data_pipeline/05_tensorboard_basics.py")
    for _ in range(2):
        quiet(module.main, ["--smoke", "--out-dir", str(tmp_path)])
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1
    assert merged(tmp_path / "logs")["scalars"] == {"y=2x": list(range(10))}


# --- 01: the custom Dataset and bad input -------------------------------------------------
def test_01_mydata_reads_files_and_labels(note, stand_in):
    mod = note("data_pipeline/01_read_data.py")
    ants = mod.MyData(stand_in / "train", "ants")
    assert len(ants) == 3 and [p.name for p in ants.img_paths] == sorted(
        p.name for p in (stand_in / "train" / "ants").iterdir())
    img, label = ants[2]
    assert label == "ants" and img.size == Image.open(ants.img_paths[2]).size


def test_01_bad_input_names_the_path(note, stand_in, tmp_path):
    mod = note("data_pipeline/01_read_data.py")
    with pytest.raises(NoteError, match=str(stand_in / "train" / "wasps")):
        mod.MyData(stand_in / "train", "wasps")
    empty = tmp_path / "empty" / "ants"
    empty.mkdir(parents=True)
    with pytest.raises(NoteError, match=f"{empty} holds no images"):
        mod.MyData(empty.parent, "ants")
    bad = stand_in / "train" / "ants" / "000002.jpg"
    bad.write_bytes(b"not really a jpeg")
    ants = mod.MyData(stand_in / "train", "ants")
    with pytest.raises(NoteError, match=f"{bad} is not a readable image"):
        ants[1]


def test_01_runs_on_real_data_from_the_data_root(note, stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ENV_VAR, str(stand_in.parent))   # plays the unzipped real dataset
    mod = note("data_pipeline/01_read_data.py")
    result = mod.main(["--data", "real", "--out-dir", str(tmp_path / "out")])
    assert "real hymenoptera" in capsys.readouterr().out
    assert result["counts"] == {"ants": 3, "bees": 3} and result["imagefolder_len"] == 6
    assert not (tmp_path / "out" / "stand-in-data").exists()


def test_01_step_4_fails_if_a_file_is_not_listed(note, stand_in, monkeypatch):
    mod = note("data_pipeline/01_read_data.py")
    real_files = mod.image_files
    monkeypatch.setattr(mod, "image_files", lambda folder: real_files(folder)[:-1])
    with pytest.raises(ClaimError, match="same \\(file, label\\) pairs"):
        quiet(mod.step_4_same_as_imagefolder, stand_in / "train")


# --- 02: labels are written under --out-dir and read back ---------------------------------
def test_02_writes_only_under_out_dir(note, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(data))                 # no real data: the stand-in
    mod = note("data_pipeline/02_generate_labels.py")
    result = quiet(mod.main, ["--out-dir", str(tmp_path / "out")])   # full mode, auto data
    assert list(data.iterdir()) == []
    train = tmp_path / "out" / "labelled" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["ants_image", "ants_label",
                                                        "bees_image", "bees_label"]
    assert result["labels_read"] == 80 and (train / "bees_label" / "000041.txt").read_text() \
        == "bees"


def test_02_a_wrong_label_is_caught(note, stand_in, tmp_path):
    mod = note("data_pipeline/02_generate_labels.py")
    root_dir = tmp_path / "labelled"
    root_dir.mkdir()
    quiet(mod.step_1_copy_images, stand_in / "train", root_dir)
    quiet(mod.step_2_one_label_per_image, root_dir)
    first = sorted((root_dir / "ants_label").glob("*.txt"))[0]
    first.write_text("bees")                                     # a mislabelled image
    with pytest.raises(ClaimError, match="names the source folder"):
        quiet(mod.step_3_labels_read_back, stand_in / "train", root_dir)
    with pytest.raises(ClaimError, match="matches the original file"):
        quiet(mod.step_4_dataset_round_trip, stand_in / "train", root_dir)
    first.unlink()
    ds = mod.LabelledImages(root_dir, "ants_image", "ants_label")
    with pytest.raises(NoteError, match=f"{first} is missing"):
        ds[0]


# --- 03 / 04: the transforms' claims can fail ---------------------------------------------
def test_03_to_tensor_claims_can_fail(note, monkeypatch):
    mod = note("data_pipeline/03_to_tensor.py")
    img = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
    x = quiet(mod.step_1_to_tensor_vs_numpy, img)
    assert x.shape == (3, 2, 3) and torch.allclose(x[:, 1, 2], torch.tensor([15, 16, 17]) / 25.5)
    monkeypatch.setattr(mod.transforms, "ToTensor", transforms.PILToTensor)   # forgets to scale
    with pytest.raises(ClaimError, match=r"float32 in \[0, 1\]"):
        quiet(mod.step_1_to_tensor_vs_numpy, img)


def test_04_transform_claims_can_fail(note, monkeypatch):
    mod = note("data_pipeline/04_useful_transforms.py")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8))
    assert quiet(mod.step_2_resize_shapes, img, (20, 30), 25) == ((30, 20), (35, 25))
    monkeypatch.setattr(mod.transforms, "Normalize",
                        lambda mean, std: (lambda x: x - torch.tensor(mean)[:, None, None]))
    with pytest.raises(ClaimError, match=r"\(x - mean\) / std"):
        quiet(mod.step_1_normalize_by_hand, img)


def test_04_compose_claim_fails_without_the_seed(note, monkeypatch):
    mod = note("data_pipeline/04_useful_transforms.py")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 90, 3), np.uint8))
    quiet(mod.step_4_compose_is_the_steps_in_order, img, (60, 70), 20, 3)
    monkeypatch.setattr(mod.torch, "manual_seed", lambda seed: None)   # crops drawn apart
    with pytest.raises(ClaimError, match="one by one"):
        for _ in range(5):                       # two unseeded crops agree 1 time in ~1600
            quiet(mod.step_4_compose_is_the_steps_in_order, img, (60, 70), 20, 3)


# --- 05 / 06 / 07: the logging and loading claims can fail --------------------------------
def test_05_a_lost_scalar_is_caught(note, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    mod = note("data_pipeline/05_tensorboard_basics.py")

    class LossyWriter(SummaryWriter):
        def add_scalar(self, tag, value, step):
            if step != 3:                                        # drops one point
                super().add_scalar(tag, value, step)

    with LossyWriter(log_dir=str(tmp_path)) as writer, pytest.raises(ClaimError,
                                                                    match="steps 0..9"):
        quiet(mod.step_1_scalars, writer, tmp_path, 10)


def test_06_items_claim_catches_a_normalized_transform(note):
    mod = note("data_pipeline/06_dataset_transform.py")
    ds = SyntheticCIFAR10(False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]), size=4)
    with pytest.raises(ClaimError, match="raw bytes / 255"):
        quiet(mod.step_2_to_tensor_items, ds, 4)


def test_07_shape_claim_fails_for_wrong_items(note):
    mod = note("data_pipeline/07_dataloader.py")
    ds = SyntheticCIFAR10(False, transform=transforms.Compose(
        [transforms.Grayscale(), transforms.ToTensor()]), size=40)   # (1, 32, 32) items
    with pytest.raises(ClaimError, match=r"\(B, 3, 32, 32\)"):
        quiet(mod.step_1_batch_shapes, ds, 16)


def test_07_throughput_helper(note):
    mod = note("data_pipeline/07_dataloader.py")
    ds = SyntheticCIFAR10(False, transform=transforms.ToTensor(), size=70)
    seen, rate = mod.images_per_second(ds, 32, 0)
    assert seen == 70 and rate > 0


# --- --download without internet: a clean error from the script ------------------------------
def test_06_download_failure_is_a_clean_exit(note, monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    mod = note("data_pipeline/06_dataset_transform.py")
    with pytest.raises(NoteError, match=r"could not download CIFAR-10 .*no route to host"):
        quiet(mod.main, ["--download", "--data-root", str(tmp_path / "data"),
                         "--out-dir", str(tmp_path / "out")])
