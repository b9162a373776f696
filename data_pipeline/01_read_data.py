"""A custom Dataset over an image folder: ants and bees, one class per subfolder.

A ``torch.utils.data.Dataset`` needs two methods: ``__len__`` (how many items) and
``__getitem__(i)`` (item ``i``). Here an item is a ``(PIL image, label)`` pair read from
``hymenoptera_data/train/<label>/*.jpg``: the label is the name of the folder the file is in.

Claims proven:
  1. ``len()`` of each class's Dataset equals the number of image files in its folder on disk.
  2. ``dataset[i]`` is the i-th file's picture (same size and pixels as opening the file
     directly) with the folder name as its label.
  3. ``ants + bees`` is a ``ConcatDataset``: its length is the sum, and index
     ``len(ants) + k`` is ``bees[k]``.
  4. Our Dataset finds the same files, in the same order, with the same labels as
     ``torchvision.datasets.ImageFolder`` (the library's version of this class).
  5. A wrong class folder is a clear error naming the path, not a traceback from deep inside.

Without the real photos (data/README.md says how to get them) a stand-in of real JPEG files
is written under --out-dir.

Run:  python data_pipeline/01_read_data.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import ImageFolder

from torchnotes import NoteError, check, check_raises, make_parser, start
from torchnotes.datasets import (
    add_data_args,
    data_source,
    hymenoptera,
    image_files,
    load_image,
)

FULL = dict(train_per_class=40, val_per_class=20, items_to_compare=20)   # stand-in sizes
SMOKE = dict(train_per_class=6, val_per_class=3, items_to_compare=3)


class MyData(Dataset):
    """The images of one class, ``root_dir/label_dir/*.jpg``; each item's label is ``label_dir``."""

    def __init__(self, root_dir: str | Path, label_dir: str):
        self.root_dir = Path(root_dir)
        self.label_dir = label_dir
        # image_files() sorts the names (os.listdir's order is arbitrary) and raises a clear
        # NoteError for a missing or empty folder.
        self.img_paths = image_files(self.root_dir / label_dir)

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, idx: int) -> tuple[Image.Image, str]:
        return load_image(self.img_paths[idx]), self.label_dir   # NoteError if not an image


def step_1_len_matches_disk(root_dir: Path) -> dict:
    counts = {}
    for label in ("ants", "bees"):
        ds = MyData(root_dir, label)
        on_disk = [n for n in os.listdir(root_dir / label) if n.lower().endswith(".jpg")]
        print(f"{label}: len(dataset) = {len(ds)}, .jpg files in {root_dir / label}: "
              f"{len(on_disk)}")
        check(f"len(MyData(root, {label!r})) == number of files on disk",
              len(ds) == len(on_disk), detail=f"{len(ds)} == {len(on_disk)}")
        counts[label] = len(ds)
    return counts


def step_2_getitem_reads_the_file(root_dir: Path, n: int) -> int:
    ds = MyData(root_dir, "ants")
    img, label = ds[0]
    print(f"ants[0] = ({img!r}, {label!r})")
    compared = 0
    for i in list(range(min(n, len(ds)))) + [len(ds) - 1]:   # the first few and the last
        img, label = ds[i]
        with Image.open(ds.img_paths[i]) as direct:           # the file, opened by hand
            same = img.size == direct.size and np.array_equal(np.asarray(img),
                                                             np.asarray(direct.convert("RGB")))
        if not (same and label == ds.img_paths[i].parent.name):
            break
        compared += 1
    check("dataset[i] has the file's size, pixels and folder name as label",
          compared == min(n, len(ds)) + 1, detail=f"{compared} items compared")
    return compared


def step_3_concat_with_plus(root_dir: Path) -> int:
    ants, bees = MyData(root_dir, "ants"), MyData(root_dir, "bees")
    train = ants + bees                                       # Dataset.__add__ -> ConcatDataset
    print(f"ants + bees -> {type(train).__name__} with {len(train)} items")
    check("ants + bees is a ConcatDataset", isinstance(train, ConcatDataset))
    check("len(ants + bees) == len(ants) + len(bees)", len(train) == len(ants) + len(bees),
          detail=f"{len(train)} == {len(ants)} + {len(bees)}")
    last_ant, first_bee = train[len(ants) - 1][1], train[len(ants)][1]
    print(f"labels either side of the boundary: {last_ant!r} | {first_bee!r}")
    same = np.array_equal(np.asarray(train[len(ants) + 1][0]), np.asarray(bees[1][0]))
    check("(ants + bees)[len(ants) + k] is bees[k] (the boundary maps across)",
          last_ant == "ants" and first_bee == "bees" and same)
    return len(train)


def step_4_same_as_imagefolder(root_dir: Path) -> int:
    reference = ImageFolder(str(root_dir))                    # labels are indices into .classes
    ours = [(str(path), label) for label in ("ants", "bees")
            for path in MyData(root_dir, label).img_paths]
    theirs = [(path, reference.classes[k]) for path, k in reference.samples]
    print(f"ImageFolder: classes {reference.classes}, {len(reference)} samples")
    check("MyData lists the same (file, label) pairs as torchvision's ImageFolder",
          ours == theirs, detail=f"{len(ours)} pairs")
    return len(theirs)


def step_5_wrong_folder_is_a_clear_error(root_dir: Path) -> str:
    return check_raises("a missing class folder raises NoteError naming the path", NoteError,
                        MyData, root_dir, "wasps", match=str(root_dir / "wasps"))


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # reading files uses the CPU only
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download,
                         train_per_class=cfg["train_per_class"],
                         val_per_class=cfg["val_per_class"])
    root_dir = folder / "train"
    results = {
        "counts": step_1_len_matches_disk(root_dir),
        "items_compared": step_2_getitem_reads_the_file(root_dir, cfg["items_to_compare"]),
        "concat_len": step_3_concat_with_plus(root_dir),
        "imagefolder_len": step_4_same_as_imagefolder(root_dir),
        "error_message": step_5_wrong_folder_is_a_clear_error(root_dir),
    }
    print(f"summary: {results['counts']['ants']} ants + {results['counts']['bees']} bees "
          f"= {results['concat_len']} training images read from {root_dir}")
    return results


if __name__ == "__main__":
    main()
