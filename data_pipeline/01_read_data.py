"""A custom Dataset over an image folder: ants and bees, one class per subfolder.

A ``torch.utils.data.Dataset`` needs two methods: ``__len__`` (how many items) and
``__getitem__(i)`` (item ``i``). Here an item is a ``(PIL image, label)`` pair read from
``hymenoptera_data/train/<label>/*.jpg``: the label is the name of the folder the file is in.
``os.listdir`` lists the files once, in ``__init__``; ``Image.open`` reads one when asked.

Claims proven:
  1. Our Dataset lists the same files, in the same order, with the same labels as
     ``torchvision.datasets.ImageFolder`` (the library's version of this class), once the
     names from ``os.listdir`` (arbitrary order) are sorted.
  2. Item for item it returns ImageFolder's picture: same size, same pixels.
  3. ``ants + bees`` is a ``ConcatDataset``: its length is the sum, and index
     ``len(ants) + k`` is ``bees[k]``.
  4. A wrong class folder fails at once, in ``__init__``, with an error naming the path.

Without the real photos (data/README.md says how to get them) a stand-in of real JPEG files
is written under --out-dir.

Run:  python data_pipeline/01_read_data.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import ImageFolder

from torchnotes import check, check_raises, make_parser, start
from torchnotes.datasets import add_data_args, data_source, hymenoptera, image_errors

FULL = dict(train_per_class=40, val_per_class=20)   # stand-in sizes (the real set is fixed)
SMOKE = dict(train_per_class=6, val_per_class=3)


class MyData(Dataset):
    """The images of one class, ``root_dir/label_dir/*.jpg``; each item's label is ``label_dir``."""

    def __init__(self, root_dir, label_dir: str):
        self.root_dir = root_dir
        self.label_dir = label_dir
        self.path = os.path.join(root_dir, label_dir)
        # os.listdir's order is whatever the file system gives: sort it, so item i is the same
        # file on every machine. Skip anything that is not a picture file (.DS_Store,
        # notes.txt, a folder named like an image), as ImageFolder does.
        self.img_path = sorted(name for name in os.listdir(self.path)
                               if name.lower().endswith((".jpg", ".jpeg", ".png"))
                               and os.path.isfile(os.path.join(self.path, name)))

    def __len__(self) -> int:
        return len(self.img_path)

    def __getitem__(self, idx: int) -> tuple[Image.Image, str]:
        img_name = self.img_path[idx]
        img_item_path = os.path.join(self.root_dir, self.label_dir, img_name)
        with image_errors(img_item_path):               # a broken file: one line naming it
            img = Image.open(img_item_path).convert("RGB")
        return img, self.label_dir


def step_1_same_files_as_imagefolder(root_dir) -> ImageFolder:
    ants, bees = MyData(root_dir, "ants"), MyData(root_dir, "bees")
    print(f"ants: {len(ants)} images, e.g. {ants.img_path[:2]}; bees: {len(bees)} images")
    reference = ImageFolder(str(root_dir))                  # labels are indices into .classes
    ours = [(os.path.join(ds.path, name), ds.label_dir)
            for ds in (ants, bees) for name in ds.img_path]
    theirs = [(path, reference.classes[k]) for path, k in reference.samples]
    print(f"ImageFolder: classes {reference.classes}, {len(reference)} samples")
    check("MyData lists the same (file, label) pairs as ImageFolder, in the same order",
          ours == theirs, detail=f"{len(ours)} pairs")
    return reference


def step_2_items_match_imagefolder(root_dir, reference: ImageFolder) -> int:
    train = MyData(root_dir, "ants") + MyData(root_dir, "bees")
    img, label = train[0]
    print(f"train[0] = ({img!r}, {label!r})")
    mismatches = 0
    for (img, label), (ref_img, k) in zip(train, reference, strict=True):
        mismatches += not (label == reference.classes[k] and img.size == ref_img.size
                           and np.array_equal(np.asarray(img), np.asarray(ref_img)))
    check("item i of MyData is ImageFolder's item i: same label, size and pixels",
          mismatches == 0, detail=f"{len(train)} items, {mismatches} differ")
    return len(train)


def step_3_concat_with_plus(root_dir) -> int:
    ants, bees = MyData(root_dir, "ants"), MyData(root_dir, "bees")
    train = ants + bees                                     # Dataset.__add__ -> ConcatDataset
    print(f"ants + bees -> {type(train).__name__} with {len(train)} items")
    check("len(ants + bees) == len(ants) + len(bees)",
          isinstance(train, ConcatDataset) and len(train) == len(ants) + len(bees),
          detail=f"{len(train)} == {len(ants)} + {len(bees)}")
    last_ant, first_bee = train[len(ants) - 1][1], train[len(ants)][1]
    print(f"labels either side of the boundary: {last_ant!r} | {first_bee!r}")
    same = np.array_equal(np.asarray(train[len(ants) + 1][0]), np.asarray(bees[1][0]))
    check("(ants + bees)[len(ants) + k] is bees[k] (the boundary maps across)",
          last_ant == "ants" and first_bee == "bees" and same)
    return len(train)


def step_4_wrong_folder_fails_early(root_dir) -> str:
    return check_raises("MyData(root, 'wasps') fails in __init__, naming the missing folder",
                        FileNotFoundError, MyData, root_dir, "wasps",
                        match=os.path.join(root_dir, "wasps"))


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                    # reading files uses the CPU only
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download, **cfg)
    root_dir = str(folder / "train")                       # train/ants/*.jpg, train/bees/*.jpg
    reference = step_1_same_files_as_imagefolder(root_dir)
    results = {
        "imagefolder_len": len(reference),
        "items_compared": step_2_items_match_imagefolder(root_dir, reference),
        "concat_len": step_3_concat_with_plus(root_dir),
        "error_message": step_4_wrong_folder_fails_early(root_dir),
    }
    print(f"summary: {results['concat_len']} training images read from {root_dir}")
    return results


if __name__ == "__main__":
    main()
