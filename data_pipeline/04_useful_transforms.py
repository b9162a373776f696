"""Useful transforms: Normalize, Resize, RandomCrop and Compose, classic and v2 side by side.

A transform is a callable that takes an image and returns an image (or a tensor). ``Compose``
chains them. ``torchvision.transforms.v2`` is the modern API: the same names, accepting PIL
images and tensors alike (and boxes and masks, which the classic API cannot transform).

Claims proven:
  1. ``Normalize(mean, std)`` equals ``(x - mean) / std`` per channel, by hand; normalising
     with the image's own channel statistics gives mean 0 and std 1.
  2. ``Resize((h, w))`` gives exactly ``h x w``; ``Resize(s)`` makes the shorter side ``s``
     and keeps the aspect ratio (long side ``int(s * long / short)``).
  3. ``RandomCrop(s)`` gives ``s x s``, a window of the input at the offset its
     ``get_params`` draws; under the same ``torch.manual_seed`` the crop is the same.
  4. ``Compose([...])`` equals applying its steps one after another.
  5. v2 beside classic: the same Normalize, PIL Resize and seeded RandomCrop results; on
     uint8 tensors v2's faster Resize kernel may differ by one grey level (1/255).

Run:  python data_pipeline/04_useful_transforms.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, data_source, hymenoptera, image_files, load_image

FULL = dict(train_per_class=40, val_per_class=20, resize=(48, 64), short_side=40, crop=32)
SMOKE = dict(train_per_class=2, val_per_class=1, resize=(48, 64), short_side=40, crop=32)
MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]     # the spec's choice: maps [0, 1] to [-1, 1]


def step_1_normalize_by_hand(img: Image.Image) -> float:
    x = transforms.ToTensor()(img)                                 # (3, H, W) in [0, 1]
    out = transforms.Normalize(MEAN, STD)(x)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    print(f"pixel [0,0,0]: {x[0, 0, 0]:.4f} -> Normalize -> {out[0, 0, 0]:.4f}")
    err = check("Normalize(mean, std) == (x - mean) / std", out, (x - mean) / std, atol=1e-6)
    m, s = x.mean(dim=(1, 2)), x.std(dim=(1, 2))                   # the image's own statistics
    z = transforms.Normalize(m.tolist(), s.tolist())(x)
    # float32 sums over ~10^4 pixels: mean and std accurate to about 1e-5.
    check("normalised with its own channel mean/std: each channel has mean 0, std 1",
          torch.stack([z.mean(dim=(1, 2)), z.std(dim=(1, 2))]),
          torch.tensor([[0.0] * 3, [1.0] * 3]), atol=1e-4)
    return err


def step_2_resize_shapes(img: Image.Image, resize: tuple, short_side: int) -> tuple:
    fixed = transforms.Resize(resize)(img)                         # (h, w) -> PIL size (w, h)
    scaled = transforms.Resize(short_side)(img)
    w, h = img.size
    long_expected = int(short_side * max(w, h) / min(w, h))
    expected = (short_side, long_expected) if w <= h else (long_expected, short_side)
    print(f"original {img.size} -> Resize({resize}) {fixed.size} -> Resize({short_side}) "
          f"{scaled.size}")
    check(f"Resize({resize}) gives exactly height {resize[0]}, width {resize[1]}",
          fixed.size == (resize[1], resize[0]))
    check(f"Resize({short_side}) makes the shorter side {short_side}, keeping the aspect ratio",
          scaled.size == expected, detail=f"{scaled.size} == {expected}")
    return fixed.size, scaled.size


def step_3_random_crop(img: Image.Image, crop: int, seed: int) -> tuple:
    torch.manual_seed(seed)
    top, left, h, w = transforms.RandomCrop.get_params(img, (crop, crop))   # the draw it makes
    torch.manual_seed(seed)
    cropped = transforms.RandomCrop(crop)(img)
    window = np.asarray(img)[top:top + h, left:left + w]
    print(f"RandomCrop({crop}) under seed {seed}: window at top={top}, left={left}")
    check(f"RandomCrop({crop}) gives {crop}x{crop}, the input's window at the drawn offset",
          cropped.size == (crop, crop) and np.array_equal(np.asarray(cropped), window))
    torch.manual_seed(seed)
    again = transforms.RandomCrop(crop)(img)
    check("the same seed gives the same crop", np.array_equal(np.asarray(again),
                                                               np.asarray(cropped)))
    return top, left


def step_4_compose_is_the_steps_in_order(img: Image.Image, resize: tuple, crop: int,
                                         seed: int) -> float:
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
    return check("Compose(steps)(img) == applying the steps one by one", composed, x)


def step_5_v2_beside_classic(img: Image.Image, resize: tuple, crop: int, seed: int) -> dict:
    x = transforms.ToTensor()(img)
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
    resize, crop = cfg["resize"], cfg["crop"]
    results = {
        "normalize_error": step_1_normalize_by_hand(img),
        "resized": step_2_resize_shapes(img, resize, cfg["short_side"]),
        "crop_offset": step_3_random_crop(img, crop, args.seed),
        "compose_error": step_4_compose_is_the_steps_in_order(img, resize, crop, args.seed),
        "v2": step_5_v2_beside_classic(img, resize, crop, args.seed),
    }
    print(f"summary: Resize{resize} -> RandomCrop({crop}) -> ToTensor -> Normalize "
          f"checked, classic and v2")
    return results


if __name__ == "__main__":
    main()
