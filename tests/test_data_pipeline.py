"""The data_pipeline notes: TensorBoard logs read back, bad input, and claims that can fail.

TensorBoard event files are read with TensorBoard's own reader (tests/tb_events.py): the notes
log, the tests verify. Each "can fail" test breaks the thing a step teaches (a missing sort, a
re-encoded copy, a swapped Resize, statistics from the test split, a loader that ignores its
seed, ...) and expects ``ClaimError``: every claim family of every note is covered.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from tb_events import image_sizes, merged
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms

from torchnotes import ClaimError, NoteError
from torchnotes.datasets import DATA_ENV_VAR, SyntheticCIFAR10, make_hymenoptera


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """03-07 run once in smoke mode; tests read what they wrote."""
    from conftest import REPO_ROOT, import_note

    runs = {}
    for name in ("03_to_tensor", "04_useful_transforms", "05_tensorboard_basics",
                 "06_dataset_transform", "07_dataloader"):
        out = tmp_path_factory.mktemp(name)
        module = import_note(REPO_ROOT / "data_pipeline" / f"{name}.py")
        runs[name] = (out, quiet(module.main, ["--smoke", "--device", "cpu",
                                              "--out-dir", str(out)]))
    return runs


@pytest.fixture
def stand_in(tmp_path):
    """A small ants/bees stand-in: ``hymenoptera_data`` with 3 train, 1 val image per class."""
    return make_hymenoptera(tmp_path / "data", seed=0, train_per_class=3, val_per_class=1)


def colour_image(h=40, w=50, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def forcing(**forced):
    """A DataLoader that overrides some arguments (a loader that ignores what it was told)."""
    def make(*args, **kwargs):
        kwargs.update(forced)
        return DataLoader(*args, **kwargs)
    return make


# --- TensorBoard: what the notes logged, read back --------------------------------------------
def test_03_logs_the_tensor(smoke_runs):
    out, result = smoke_runs["03_to_tensor"]
    _, h, w = result["shape"]
    assert image_sizes(out / "logs") == {"Tensor_img": [(w, h)]}


def test_04_logs_every_transform(smoke_runs):
    out, result = smoke_runs["04_useful_transforms"]
    sizes = image_sizes(out / "logs")
    assert sorted(sizes) == ["Compose", "Normalize", "RandomCrop", "RandomCropHW", "Resize",
                             "Resize_short_side", "ToTensor"]
    assert merged(out / "logs")["images"]["RandomCrop"] == [0, 1, 2]       # SMOKE draws
    assert sizes["RandomCrop"] == [(32, 32)] * 3 and sizes["RandomCropHW"] == [(48, 24)] * 3
    assert sizes["Resize"] == [(64, 48)] and sizes["Compose"] == [(32, 32)]
    assert sizes["Normalize"] == sizes["ToTensor"]


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
    assert image_sizes(out / "logs")["test_set"] == [(32, 32)] * 4
    assert result["sizes"] == (256, 128)


def test_07_epochs_read_back(smoke_runs):
    out, result = smoke_runs["07_dataloader"]
    per_epoch = 100 // 32                                                # drop_last=True
    assert merged(out / "logs")["images"] == {"Epoch: 0": list(range(per_epoch)),
                                              "Epoch: 1": list(range(per_epoch))}
    assert image_sizes(out / "logs")["Epoch: 0"] == [(8 * 32, 4 * 32)] * per_epoch  # 8 columns
    assert set(result["images_per_s"]) == {0, 2} and result["workers"]["workers_seen"] == [0, 1]


def test_rerun_replaces_logs_instead_of_piling_up(note, tmp_path):
    module = note("data_pipeline/05_tensorboard_basics.py")
    for _ in range(2):
        quiet(module.main, ["--smoke", "--out-dir", str(tmp_path)])
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1
    assert merged(tmp_path / "logs")["scalars"] == {"y=2x": list(range(10))}


# --- 01: the custom Dataset -------------------------------------------------------------------
def test_01_mydata_reads_files_and_labels(note, stand_in):
    mod = note("data_pipeline/01_read_data.py")
    ants = mod.MyData(str(stand_in / "train"), "ants")
    assert len(ants) == 3 and ants.img_path == sorted(
        p.name for p in (stand_in / "train" / "ants").iterdir())
    img, label = ants[2]
    assert label == "ants"
    assert img.size == Image.open(stand_in / "train" / "ants" / ants.img_path[2]).size


def test_01_skips_what_is_not_a_picture_file_as_imagefolder_does(note, stand_in):
    """A folder named like an image once made MyData list 7 items against ImageFolder's 6."""
    mod = note("data_pipeline/01_read_data.py")
    (stand_in / "train" / "ants" / "album.jpg").mkdir()
    (stand_in / "train" / "ants" / "notes.txt").write_text("not a picture")
    ants = mod.MyData(str(stand_in / "train"), "ants")
    assert "album.jpg" not in ants.img_path and "notes.txt" not in ants.img_path
    mod.step_1_same_files_as_imagefolder(str(stand_in / "train"))    # the claim holds


def test_01_bad_input(note, stand_in):
    mod = note("data_pipeline/01_read_data.py")
    with pytest.raises(FileNotFoundError, match=str(stand_in / "train" / "wasps")):
        mod.MyData(str(stand_in / "train"), "wasps")
    bad = stand_in / "train" / "ants" / "000002.jpg"
    bad.write_bytes(b"not really a jpeg")
    with pytest.raises(NoteError, match=f"{bad} is not a readable image"):
        mod.MyData(str(stand_in / "train"), "ants")[1]


def test_01_runs_on_real_data_from_the_data_root(note, stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ENV_VAR, str(stand_in.parent))   # plays the unzipped real dataset
    mod = note("data_pipeline/01_read_data.py")
    result = mod.main(["--data", "real", "--out-dir", str(tmp_path / "out")])
    assert "real hymenoptera" in capsys.readouterr().out
    assert result["imagefolder_len"] == 6 and result["concat_len"] == 6
    assert not (tmp_path / "out" / "stand-in-data").exists()


def test_01_claims_can_fail(note, stand_in, monkeypatch):
    mod = note("data_pipeline/01_read_data.py")
    root = str(stand_in / "train")
    reference = quiet(mod.step_1_same_files_as_imagefolder, root)
    with monkeypatch.context() as m:                         # forgot to sort os.listdir
        m.setattr(mod, "sorted", lambda names: list(names)[::-1], raising=False)
        with pytest.raises(ClaimError, match="same order"):
            quiet(mod.step_1_same_files_as_imagefolder, root)
    original = mod.MyData.__getitem__
    with monkeypatch.context() as m:                         # a mirrored picture
        m.setattr(mod.MyData, "__getitem__", lambda self, i: (
            original(self, i)[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT), self.label_dir))
        with pytest.raises(ClaimError, match="same label, size and pixels"):
            quiet(mod.step_2_items_match_imagefolder, root, reference)
    with monkeypatch.context() as m:                         # + that puts the other one first
        m.setattr(mod.MyData, "__add__", lambda self, other: mod.ConcatDataset([other, self]))
        with pytest.raises(ClaimError, match="boundary maps across"):
            quiet(mod.step_3_concat_with_plus, root)
    with monkeypatch.context() as m:                         # lists lazily: no early error
        m.setattr(mod.os, "listdir", lambda path: [])
        with pytest.raises(ClaimError, match="no FileNotFoundError"):
            quiet(mod.step_4_wrong_folder_fails_early, root)


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


def test_02_a_broken_source_is_named_not_its_copy(note, stand_in, tmp_path):
    mod = note("data_pipeline/02_generate_labels.py")
    bad = stand_in / "train" / "bees" / sorted(p.name for p in
                                               (stand_in / "train" / "bees").iterdir())[1]
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    root_dir = tmp_path / "labelled"
    root_dir.mkdir()
    with pytest.raises(NoteError, match=f"^error: {bad} is not a readable image"):
        quiet(mod.step_1_copy_images, stand_in / "train", root_dir)


def test_02_claims_can_fail(note, stand_in, tmp_path, monkeypatch):
    mod = note("data_pipeline/02_generate_labels.py")
    root_dir = tmp_path / "labelled"
    root_dir.mkdir()
    with monkeypatch.context() as m:                         # a copy that re-encodes the JPEG
        m.setattr(mod.shutil, "copy2", lambda src, dst: Image.open(src).save(dst, quality=50)
                  or dst)
        with pytest.raises(ClaimError, match="byte-identical"):
            quiet(mod.step_1_copy_images, stand_in / "train", root_dir)
    shutil.rmtree(root_dir)
    root_dir.mkdir()
    quiet(mod.step_1_copy_images, stand_in / "train", root_dir)
    original = mod.generate_labels

    def forgets_one(root, target):                           # no label for the last image
        written = original(root, target)
        written[-1].unlink()
        return written[:-1]

    with monkeypatch.context() as m:
        m.setattr(mod, "generate_labels", forgets_one)
        with pytest.raises(ClaimError, match="exactly one .txt per image"):
            quiet(mod.step_2_one_label_per_image, root_dir)
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
    real, real_dtype, real_pil = transforms.ToTensor, mod.v2.ToDtype, transforms.ToPILImage
    breaks = {  # what a wrong ToTensor / ToDtype / ToPILImage would do -> the claim it breaks
        "float32 in \\[0, 1\\]": ("step_1", mod.transforms, "ToTensor", transforms.PILToTensor),
        "channels reversed": ("step_2", mod.transforms, "ToTensor", lambda: lambda a: real()(
            a[..., ::-1].copy() if isinstance(a, np.ndarray) else a)),   # "fixes" BGR itself
        "== ToTensor": ("step_3", mod.v2, "ToDtype", lambda dtype, scale: real_dtype(dtype)),
        "unscaled": ("step_4", mod.transforms, "ToTensor",
                     lambda: lambda a: real()(a / 255 if a.dtype == np.float32 else a)),
        "same bytes": ("step_5", mod.transforms, "ToPILImage", lambda: lambda t:
                       real_pil()(t * 0.999)),
        "truncates": ("step_6", mod.transforms, "ToPILImage", lambda: lambda t:
                      real_pil()((t * 255).round().to(torch.uint8))),
    }
    steps = {"step_1": lambda: mod.step_1_to_tensor_vs_numpy(img),
             "step_2": lambda: mod.step_2_numpy_array_input(img, x),
             "step_3": lambda: mod.step_3_v2_api(img, x),
             "step_4": lambda: mod.step_4_float_input_is_not_scaled(img),
             "step_5": lambda: mod.step_5_round_trip(img, x),
             "step_6": mod.step_6_arithmetic_breaks_the_round_trip}
    for claim, (step, where, name, wrong) in breaks.items():
        quiet(steps[step])                                       # holds as written
        with monkeypatch.context() as m, pytest.raises(ClaimError, match=claim):
            m.setattr(where, name, wrong)
            quiet(steps[step])


def test_04_transform_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note("data_pipeline/04_useful_transforms.py")
    img, resize, normalize = colour_image(50, 70), transforms.Resize, transforms.Normalize
    with SummaryWriter(log_dir=str(tmp_path)) as w:
        assert quiet(mod.step_2_resize_shapes, img, (20, 30), 25, w) == ((30, 20), (35, 25))
        quiet(mod.step_1_normalize_by_hand, img, w)
        for claim, wrong in [                          # a wrong Normalize -> the claim it breaks
                ("constant image", lambda mean, std: (
                    lambda x: x - torch.tensor(mean)[:, None, None])),      # forgets the std
                ("constant image", lambda mean, std: normalize(std, mean)),  # mean, std swapped
                ("constant image", lambda mean, std: normalize(mean[::-1], std)),   # RGB as BGR
                (r"\(x - mean\) / std", lambda mean, std: (            # swaps H and W: right
                    lambda x: normalize(mean, std)(x).transpose(1, 2)))]:  # on a square constant
            with monkeypatch.context() as m, pytest.raises(ClaimError, match=claim):
                m.setattr(mod.transforms, "Normalize", wrong)
                quiet(mod.step_1_normalize_by_hand, img, w)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="height 20, width 30"):
            m.setattr(mod.transforms, "Resize", lambda size: resize(
                size[::-1] if isinstance(size, tuple) else size))    # (h, w) read as (w, h)
            quiet(mod.step_2_resize_shapes, img, (20, 30), 25, w)
        wide = colour_image(63, 104)                 # 43 * 104 / 63 = 70.98: int 70, round 71
        assert quiet(mod.step_2_resize_shapes, wide, (20, 30), 43, w)[1] == (70, 43)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="shorter side 43"):
            m.setattr(mod.transforms, "Resize", lambda size: resize(size) if isinstance(
                size, tuple) else lambda im: resize((size, round(size * im.width / im.height)))(
                im))                                   # rounds the long side instead
            quiet(mod.step_2_resize_shapes, wide, (20, 30), 43, w)

        class SquareCrop(transforms.RandomCrop):                   # ignores a non-square size
            def __init__(self, size):
                super().__init__(min(size) if isinstance(size, tuple) else size)

        quiet(mod.step_3_random_crops, img, 16, (12, 24), 3, 0, w)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="are each 12x24"):
            m.setattr(mod.transforms, "RandomCrop", SquareCrop)
            quiet(mod.step_3_random_crops, img, 16, (12, 24), 3, 0, w)

        class HalfWidthCrop(transforms.RandomCrop):                # reads s as (s, s // 2)
            def __init__(self, size):
                super().__init__(size if isinstance(size, tuple) else (size, size // 2))

        with monkeypatch.context() as m, pytest.raises(ClaimError, match="are each 16x16"):
            m.setattr(mod.transforms, "RandomCrop", HalfWidthCrop)
            quiet(mod.step_3_random_crops, img, 16, (12, 24), 3, 0, w)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="v2.Normalize"):
            m.setattr(mod.v2, "Normalize", lambda mean, std: lambda x: x - 0.5)
            quiet(mod.step_5_v2_beside_classic, img, (20, 30), 16, 0)


def test_04_compose_claims_can_fail(note, monkeypatch, tmp_path):
    mod = note("data_pipeline/04_useful_transforms.py")
    img, compose = colour_image(80, 90, seed=1), transforms.Compose
    step = mod.step_4_compose_is_the_steps_in_order
    with SummaryWriter(log_dir=str(tmp_path)) as w:
        quiet(step, img, (60, 70), 20, 3, w)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match=r"is \(3, 20, 20\)"):
            m.setattr(mod.transforms, "Compose", lambda steps: compose(   # RandomCrop first:
                [steps[1], steps[0], *steps[2:]]))                         # (3, 60, 70)
            quiet(step, img, (60, 70), 20, 3, w)
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="seeded RandomCrop"):
            m.setattr(mod.transforms, "Compose", lambda steps: compose(steps[:-1]))  # no Normalize
            quiet(step, img, (60, 70), 20, 3, w)
        monkeypatch.setattr(mod.torch, "manual_seed", lambda seed: None)   # crops drawn apart
        with pytest.raises(ClaimError, match="seeded RandomCrop"):
            for _ in range(5):                   # two unseeded crops agree 1 time in ~1600
                quiet(step, img, (60, 70), 20, 3, w)


# --- 05: logging claims can fail ------------------------------------------------------------
def test_05_claims_can_fail(note, tmp_path, monkeypatch):
    mod = note("data_pipeline/05_tensorboard_basics.py")
    pictures = [colour_image(20, 30, seed=k) for k in range(2)]
    batch = torch.stack([transforms.ToTensor()(p.resize((16, 16))) for p in pictures * 2])
    first = np.array(pictures[0].resize((16, 16)))

    class Lossy(SummaryWriter):                    # drops a scalar, darkens pictures, one tile
        def add_scalar(self, tag, value, step):
            if step != 3:
                super().add_scalar(tag, value, step)

        def add_image(self, tag, img, step, dataformats="CHW"):
            super().add_image(tag, img // 2, step, dataformats=dataformats)

        def add_images(self, tag, imgs, step):
            super().add_images(tag, imgs[:1], step)

    for k, (step, claim) in enumerate([
            (lambda w, d: mod.step_1_scalars(w, d, 10), "steps 0..9"),
            (lambda w, d: mod.step_2_images(w, d, pictures), "the pixels read back"),
            (lambda w, d: mod.step_3_batch_grid(w, d, batch, first), "tiled 1 x 4")]):
        log_dir = tmp_path / str(k)
        with Lossy(log_dir=str(log_dir)) as w, pytest.raises(ClaimError, match=claim):
            quiet(step, w, log_dir)
    quiet(mod.step_4_png_grid, batch, tmp_path / "grid.png", first)
    monkeypatch.setattr(mod, "save_image", lambda b, path, nrow, padding:
                        torchvision.utils.save_image(b, path, nrow=nrow, padding=padding + 1))
    with pytest.raises(ClaimError, match=r"cols \* \(W \+ 2\) \+ 2 wide"):
        quiet(mod.step_4_png_grid, batch, tmp_path / "grid.png", first)


# --- 06: dataset + transform claims can fail ------------------------------------------------
def test_06_claims_can_fail(note, tmp_path, monkeypatch):
    mod = note("data_pipeline/06_dataset_transform.py")
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    with pytest.raises(ClaimError, match="raw bytes"):           # a transform that normalises
        quiet(mod.step_1_to_tensor_items, SyntheticCIFAR10(False, transform=norm, size=4), 4)
    gray = transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])
    with pytest.raises(ClaimError, match="float32 \\(3, 32, 32\\)"):
        quiet(mod.step_1_to_tensor_items, SyntheticCIFAR10(False, transform=gray, size=4), 4)
    test_set = SyntheticCIFAR10(False, transform=transforms.ToTensor(), size=64)
    with monkeypatch.context() as m, pytest.raises(ClaimError, match="image k's bytes"):
        m.setattr(mod, "save_image", lambda b, p, nrow, padding: torchvision.utils.save_image(
            b.flip(0), p, nrow=nrow, padding=padding))                # tiles in the wrong order
        quiet(mod.step_2_preview, test_set, tmp_path / "logs", tmp_path / "g.png", 4)
    train_set = SyntheticCIFAR10(True, size=256)
    quiet(mod.step_3_normalize_with_train_statistics, train_set, test_set, 8)
    real_stats = mod.channel_stats
    with monkeypatch.context() as m, pytest.raises(ClaimError, match="through a DataLoader"):
        m.setattr(mod, "channel_stats", lambda images: real_stats(      # train + test together
            np.concatenate([images, test_set.data])))
        quiet(mod.step_3_normalize_with_train_statistics, train_set, test_set, 8)
    with pytest.raises(ClaimError, match="not exactly 0"):        # statistics from the test set
        quiet(mod.step_3_normalize_with_train_statistics, test_set, test_set, 8)
    with monkeypatch.context() as m, pytest.raises(ClaimError, match="train mean"):
        m.setattr(mod.transforms, "Normalize", lambda mean, std: lambda x: x - 0.5)
        quiet(mod.step_3_normalize_with_train_statistics, train_set, test_set, 8)


def test_06_download_failure_is_a_clean_exit(note, monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    mod = note("data_pipeline/06_dataset_transform.py")
    with pytest.raises(NoteError, match=r"could not download CIFAR-10 .*no route to host"):
        quiet(mod.main, ["--download", "--data-root", str(tmp_path / "data"),
                         "--out-dir", str(tmp_path / "out")])


# --- 07: loading claims can fail ------------------------------------------------------------
def test_07_claims_can_fail(note, monkeypatch):
    mod = note("data_pipeline/07_dataloader.py")
    gray = transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])
    with pytest.raises(ClaimError, match=r"\(B, 3, 32, 32\)"):       # (1, 32, 32) items
        quiet(mod.step_1_batch_shapes, SyntheticCIFAR10(False, transform=gray, size=40), 16)
    with monkeypatch.context() as m, pytest.raises(ClaimError, match="in a new order"):
        m.setattr(mod, "DataLoader", forcing(shuffle=False))          # ignores shuffle=True
        quiet(mod.step_2_shuffle, 40, 8)
    with monkeypatch.context() as m, pytest.raises(ClaimError, match="same order"):
        m.setattr(mod, "DataLoader", forcing(generator=None))         # ignores the generator
        quiet(mod.step_3_seeded_shuffling, 40, 8, 0)
    quiet(mod.step_4_workers, 24, 4, 0, 2)

    def seeding(np_seed, random_seed):                  # a worker_init_fn seeding NumPy, random
        return lambda worker_id: (np.random.seed(np_seed(worker_id)),
                                  random.seed(random_seed(worker_id)))

    same = seeding(lambda k: 0, lambda k: 0)             # every worker repeats the same draws
    unseeded = seeding(lambda k: None, lambda k: None)   # seeds from the OS: not reproducible
    twice = seeding(lambda k: (torch.initial_seed() + k) % 2**32,    # adds the worker id again
                    lambda k: torch.initial_seed() + k)
    for claim, wrong in [(r"base_seed \+ worker_id", lambda worker_id: torch.manual_seed(0)),
                         ("seeded differently", same), ("same numbers again", unseeded),
                         ("first NumPy / random draw", twice)]:
        with monkeypatch.context() as m, pytest.raises(ClaimError, match=claim):
            m.setattr(mod, "seed_worker", wrong)
            quiet(mod.step_4_workers, 24, 4, 0, 2)
    ds = SyntheticCIFAR10(False, transform=transforms.ToTensor(), size=8)
    if not torch.accelerator.is_available():
        with monkeypatch.context() as m, pytest.raises(ClaimError, match="only warns"):
            m.setattr(mod, "DataLoader", forcing(pin_memory=False))   # never asked to pin
            quiet(mod.step_5_pin_memory, ds, 4, torch.device("cpu"))


def test_07_throughput_helper(note):
    mod = note("data_pipeline/07_dataloader.py")
    ds = SyntheticCIFAR10(False, transform=transforms.ToTensor(), size=70)
    seen, rate = mod.images_per_second(ds, 32, 0)
    assert seen == 70 and rate > 0
