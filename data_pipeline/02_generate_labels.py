"""Write one label .txt per image, then read images and labels back as a Dataset.

Some datasets keep labels in files next to the images instead of in folder names. This note
builds that layout from the ants/bees folder: ``train/ants_image/<name>.jpg`` gets a partner
``train/ants_label/<name>.txt`` holding the word ``ants`` (the same for bees), then reads it back.

Claims proven:
  1. ``ants_image`` and ``bees_image`` hold byte-identical copies of the source images (each
     source is read first, so a broken one is reported by its own path, not its copy's).
  2. Every image has exactly one label file with the same name, and no label file is left over.
  3. Each label file reads back as the class folder its image came from.
  4. A Dataset reading (image, label from .txt) returns, item for item, the pixels of the
     original file and the label its source folder gives it.

Everything is written under --out-dir (``labelled/``), never into data/: a rerun replaces the
folder an earlier run made.

Run:  python data_pipeline/02_generate_labels.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from torchnotes import NoteError, check, make_parser, start
from torchnotes.datasets import (
    add_data_args,
    data_source,
    fresh_folder,
    hymenoptera,
    image_files,
    load_image,
)

FULL = dict(train_per_class=40, val_per_class=20)   # stand-in sizes (the real set is fixed)
SMOKE = dict(train_per_class=6, val_per_class=3)
CLASSES = ("ants", "bees")


def generate_labels(root_dir: Path, target_dir: str) -> list[Path]:
    """For each image in ``root_dir/<class>_image`` write ``root_dir/<class>_label/<stem>.txt``."""
    label = target_dir.split("_")[0]                   # "ants_image" -> "ants"
    out_dir = root_dir / f"{label}_label"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name in sorted(os.listdir(root_dir / target_dir)):
        stem, ext = os.path.splitext(name)             # "0013035.jpg" -> "0013035", ".jpg"
        if ext.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        txt = out_dir / f"{stem}.txt"
        txt.write_text(label, encoding="utf-8")
        written.append(txt)
    return written


class LabelledImages(Dataset):
    """Images from ``root/<image_dir>``, each labelled by ``root/<label_dir>/<stem>.txt``."""

    def __init__(self, root_dir: Path, image_dir: str, label_dir: str):
        self.img_paths = image_files(root_dir / image_dir)
        self.label_dir = root_dir / label_dir

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, idx: int) -> tuple[Image.Image, str]:
        img_path = self.img_paths[idx]
        txt = self.label_dir / f"{img_path.stem}.txt"
        if not txt.is_file():
            raise NoteError(f"{txt} is missing: every image in {img_path.parent} needs a label "
                            f"file of the same name in {self.label_dir}. Fix: run this note "
                            f"again to regenerate the labels.")
        return load_image(img_path), txt.read_text(encoding="utf-8").strip()


def step_1_copy_images(source: Path, root_dir: Path) -> int:
    copied = 0
    same = True
    for label in CLASSES:
        target = root_dir / f"{label}_image"
        target.mkdir()
        for src in image_files(source / label):
            load_image(src)                              # unreadable: NoteError names src
            dst = Path(shutil.copy2(src, target / src.name))
            same = same and dst.read_bytes() == src.read_bytes()
            copied += 1
    print(f"copied {copied} images from {source} into {root_dir}/{{ants,bees}}_image")
    check("the *_image folders hold byte-identical copies of the source images", same,
          detail=f"{copied} files")
    return copied


def step_2_one_label_per_image(root_dir: Path) -> dict:
    counts = {}
    for label in CLASSES:
        written = generate_labels(root_dir, f"{label}_image")
        images = {p.stem for p in image_files(root_dir / f"{label}_image")}
        labels = {p.stem for p in (root_dir / f"{label}_label").glob("*.txt")}
        print(f"{label}: {len(images)} images, {len(written)} label files written, "
              f"e.g. {written[0].name} -> {written[0].read_text()!r}")
        check(f"{label}_label has exactly one .txt per image in {label}_image",
              images == labels and len(written) == len(images), detail=f"{len(labels)} files")
        counts[label] = len(labels)
    return counts


def step_3_labels_read_back(source: Path, root_dir: Path) -> int:
    total, wrong = 0, []
    for label in CLASSES:
        for img_path in image_files(root_dir / f"{label}_image"):
            said = (root_dir / f"{label}_label" / f"{img_path.stem}.txt").read_text("utf-8")
            # The label must name the source folder that holds this very image.
            origin = source / said / img_path.name
            if not (origin.is_file() and origin.read_bytes() == img_path.read_bytes()):
                wrong.append(img_path.name)
            total += 1
    check("each label read back names the source folder its image came from", not wrong,
          detail=f"{total} labels read, {len(wrong)} wrong")
    return total


def step_4_dataset_round_trip(source: Path, root_dir: Path) -> int:
    train = (LabelledImages(root_dir, "ants_image", "ants_label")
             + LabelledImages(root_dir, "bees_image", "bees_label"))
    originals = [(p, label) for label in CLASSES for p in image_files(source / label)]
    mismatches = 0
    for (img, label), (path, folder_label) in zip(train, originals, strict=True):
        with Image.open(path) as direct:
            pixels_ok = np.array_equal(np.asarray(img), np.asarray(direct.convert("RGB")))
        mismatches += not (pixels_ok and label == folder_label)
    img, label = train[0]
    print(f"train[0] = ({img.size[0]}x{img.size[1]} image, {label!r}); {len(train)} items")
    check("(image, label from .txt) matches the original file and its source folder",
          mismatches == 0 and len(train) == len(originals),
          detail=f"{len(train)} items, {mismatches} mismatches")
    return len(train)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # file work: the CPU only
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download, **cfg)
    source = folder / "train"                                # train/ants/*.jpg, train/bees/*.jpg
    root_dir = fresh_folder(args.out_dir / "labelled") / "train"
    root_dir.mkdir()
    results = {
        "copied": step_1_copy_images(source, root_dir),
        "label_files": step_2_one_label_per_image(root_dir),
        "labels_read": step_3_labels_read_back(source, root_dir),
        "dataset_len": step_4_dataset_round_trip(source, root_dir),
    }
    print(f"summary: {results['labels_read']} label files under {root_dir}")
    return results


if __name__ == "__main__":
    main()
