"""Useful transforms: Normalize, Resize, RandomCrop and Compose, classic and v2 side by side.

A transform is a callable that takes an image and returns an image (or a tensor). ``Compose``
chains them. ``torchvision.transforms.v2`` is the modern API: the same names, accepting PIL
images and tensors alike (and boxes and masks, which the classic API cannot transform).

Claims proven:
  1. ``Normalize(mean, std)`` equals ``(x - mean) / std`` per channel, by hand.
  2. ``Resize((h, w))`` gives exactly ``h x w``; ``Resize(s)`` makes the shorter side ``s``
     and keeps the aspect ratio (long side ``int(s * long / short)``).
  3. ``RandomCrop(s)`` gives ``s x s`` and ``RandomCrop((h, w))`` gives ``h x w``: each draw a
     window of the input at the offset ``get_params`` draws, a new one each call; under the
     same ``torch.manual_seed`` the crop is the same.
  4. ``Compose([...])`` equals applying its steps one after another.
  5. v2 beside classic: the same Normalize, PIL Resize and seeded RandomCrop results; on
     uint8 tensors v2's faster Resize kernel may differ by one grey level (1/255).

Every transform's output is logged with ``add_image`` (one tag each; the crops as steps), so
TensorBoard shows what each one did to the picture.

Run:  python data_pipeline/04_useful_transforms.py        (about 1 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/04_useful_transforms/logs
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from torchvision.transforms import v2

from torchnotes import check, make_parser, start
from torchnotes.datasets import (
    add_data_args,
    data_source,
    fresh_folder,
    hymenoptera,
    image_files,
    load_image,
)

FULL = dict(train_per_class=40, val_per_class=20, resize=(48, 64), short_side=40, crop=32,
            crop_hw=(24, 48), draws=5)
SMOKE = dict(train_per_class=2, val_per_class=1, resize=(48, 64), short_side=40, crop=32,
             crop_hw=(24, 48), draws=3)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]     # a common choice: maps [0, 1] to [-1, 1]
to_tensor = transforms.ToTensor()


def step_1_normalize_by_hand(img: Image.Image, writer: SummaryWriter) -> float:
    x = to_tensor(img)                                             # (3, H, W) in [0, 1]
    out = transforms.Normalize(MEAN, STD)(x)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    print(f"pixel [0,0,0]: {x[0, 0, 0]:.4f} -> Normalize -> {out[0, 0, 0]:.4f}; range "
          f"[{out.min():.2f}, {out.max():.2f}]")
    writer.add_image("ToTensor", x)
    writer.add_image("Normalize", out)           # TensorBoard clips values below 0 to black
    return check("Normalize(mean, std) == (x - mean) / std", out, (x - mean) / std, atol=1e-6)


def step_2_resize_shapes(img: Image.Image, resize: tuple, short_side: int,
                        writer: SummaryWriter) -> tuple:
    fixed = transforms.Resize(resize)(img)                         # (h, w) -> PIL size (w, h)
    scaled = transforms.Resize(short_side)(img)
    w, h = img.size
    long_expected = int(short_side * max(w, h) / min(w, h))
    expected = (short_side, long_expected) if w <= h else (long_expected, short_side)
    print(f"original {img.size} -> Resize({resize}) {fixed.size} -> Resize({short_side}) "
          f"{scaled.size}")
    writer.add_image("Resize", to_tensor(fixed))
    writer.add_image("Resize_short_side", to_tensor(scaled))
    check(f"Resize({resize}) gives exactly height {resize[0]}, width {resize[1]}",
          fixed.size == (resize[1], resize[0]))
    check(f"Resize({short_side}) makes the shorter side {short_side}, keeping the aspect ratio",
          scaled.size == expected, detail=f"{scaled.size} == {expected}")
    return fixed.size, scaled.size


def step_3_random_crops(img: Image.Image, crop: int, crop_hw: tuple, draws: int, seed: int,
                        writer: SummaryWriter) -> list:
    offsets = []
    for tag, size in (("RandomCrop", (crop, crop)), ("RandomCropHW", crop_hw)):
        random_crop = transforms.RandomCrop(size)                  # (h, w), or s for s x s
        for i in range(draws):
            torch.manual_seed(seed + i)
            top, left, h, w = transforms.RandomCrop.get_params(img, size)   # the draw it makes
            torch.manual_seed(seed + i)
            cropped = random_crop(img)
            window = np.asarray(img)[top:top + h, left:left + w]
            if not (np.asarray(cropped).shape[:2] == size and np.array_equal(cropped, window)):
                break
            writer.add_image(tag, to_tensor(cropped), i)
            offsets.append((tag, top, left))
        print(f"{tag}{size}: offsets (top, left) "
              f"{[(t, le) for g, t, le in offsets if g == tag]}")
        check(f"{draws} draws of {tag}{size} are each {size[0]}x{size[1]}, the input's window "
              f"at the drawn offset", len([o for o in offsets if o[0] == tag]) == draws)
    check("the draws land at different offsets",
          len({o[1:] for o in offsets if o[0] == "RandomCrop"}) > 1)
    torch.manual_seed(seed)
    first = np.asarray(transforms.RandomCrop(crop)(img))
    torch.manual_seed(seed)
    check("the same seed gives the same crop",
          np.array_equal(np.asarray(transforms.RandomCrop(crop)(img)), first))
    return offsets


def step_4_compose_is_the_steps_in_order(img: Image.Image, resize: tuple, crop: int,
                                         seed: int, writer: SummaryWriter) -> float:
    steps = [transforms.Resize(resize), transforms.RandomCrop(crop), transforms.ToTensor(),
             transforms.Normalize(MEAN, STD)]
    torch.manual_seed(seed)
    composed = transforms.Compose(steps)(img)
    torch.manual_seed(seed)                                        # same draw for RandomCrop
    x = img
    for step in steps:
        x = step(x)
    print(f"Compose output: shape {tuple(composed.shape)}, range [{composed.min():.2f}, "
          f"{composed.max():.2f}]")
    writer.add_image("Compose", composed)
    return check("Compose(steps)(img) == applying the steps one by one", composed, x)


def step_5_v2_beside_classic(img: Image.Image, resize: tuple, crop: int, seed: int) -> dict:
    x = to_tensor(img)
    check("v2.Normalize == transforms.Normalize",
          v2.Normalize(MEAN, STD)(x), transforms.Normalize(MEAN, STD)(x))
    check("v2.Resize on a PIL image == transforms.Resize (both call Pillow)",
          np.array(v2.Resize(resize)(img)), np.array(transforms.Resize(resize)(img)))
    torch.manual_seed(seed)
    new = v2.RandomCrop(crop)(img)
    torch.manual_seed(seed)
    old = transforms.RandomCrop(crop)(img)
    check("v2.RandomCrop == transforms.RandomCrop under the same seed",
          np.array(new), np.array(old))
    as_bytes = v2.ToImage()(img)                                   # (3, H, W) uint8 tensor
    new_t, old_t = v2.Resize(resize)(as_bytes), transforms.Resize(resize)(as_bytes)
    levels = (new_t.int() - old_t.int()).abs().max().item()
    print(f"Resize on a uint8 tensor, v2 vs classic: max difference {levels} grey level(s)")
    # v2 has its own uint8 kernel; its rounding may differ from the classic path by 1 level.
    check("v2.Resize on a uint8 tensor == classic within one grey level", new_t, old_t, atol=1)
    pipeline = v2.Compose([v2.Resize(resize), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(MEAN, STD)])
    classic = transforms.Compose([transforms.Resize(resize), transforms.ToTensor(),
                                  transforms.Normalize(MEAN, STD)])
    # ToDtype multiplies by 1/255 where ToTensor divides: one rounding, times 1/std = 2.
    err = check("v2 pipeline == classic pipeline (Resize, to float, Normalize)",
                pipeline(img), classic(img), atol=3e-7)
    return {"uint8_resize_levels": levels, "pipeline_error": err}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # transforms run on the CPU
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download,
                         train_per_class=cfg["train_per_class"],
                         val_per_class=cfg["val_per_class"])
    img_path = image_files(folder / "train" / "bees")[0]
    img = load_image(img_path)
    print(f"image: {img_path} ({img.size[0]}x{img.size[1]})")
    resize, crop, seed = cfg["resize"], cfg["crop"], args.seed
    log_dir = fresh_folder(args.out_dir / "logs")              # replaces an earlier run's logs
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        results = {
            "normalize_error": step_1_normalize_by_hand(img, writer),
            "resized": step_2_resize_shapes(img, resize, cfg["short_side"], writer),
            "crop_offsets": step_3_random_crops(img, crop, cfg["crop_hw"], cfg["draws"], seed,
                                                writer),
            "compose_error": step_4_compose_is_the_steps_in_order(img, resize, crop, seed,
                                                                  writer),
            "v2": step_5_v2_beside_classic(img, resize, crop, seed),
        }
    results["log_dir"] = log_dir
    print(f"summary: Resize{resize} -> RandomCrop({crop}) -> ToTensor -> Normalize checked, "
          f"classic and v2; every output in TensorBoard: tensorboard --logdir {log_dir}")
    return results


if __name__ == "__main__":
    main()
