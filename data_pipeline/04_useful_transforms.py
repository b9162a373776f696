"""Useful transforms: Normalize, Resize, RandomCrop and Compose, classic and v2 side by side.

A transform is a callable that takes an image and returns an image (or a tensor). ``Compose``
chains them. ``torchvision.transforms.v2`` is the modern API: the same names, accepting PIL
images and tensors alike (and boxes and masks, which the classic API cannot transform).

Claims proven:
  1. ``Normalize(mean, std)`` maps a constant image ``v`` to ``(v - mean[c]) / std[c]`` in
     channel ``c``, and any image ``x`` to ``(x - mean) / std``, by hand.
  2. ``Resize((h, w))`` gives exactly ``h x w``; ``Resize(s)`` makes the shorter side ``s``
     and keeps the aspect ratio (long side ``int(s * long / short)``, truncated, not rounded).
  3. ``RandomCrop(s)`` gives ``s x s`` and ``RandomCrop((h, w))`` gives ``h x w``: each draw a
     window of the input at the offset ``get_params`` draws, a new one each call; under the
     same ``torch.manual_seed`` the crop is the same.
  4. ``Compose([Resize, RandomCrop, ToTensor, Normalize])`` gives a ``(3, s, s)`` tensor: the
     normalised window of the RESIZED image at the seeded crop offset (order matters).
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

FULL = dict(train_per_class=40, val_per_class=20, resize=(48, 64), short_side=43, crop=32,
            crop_hw=(24, 48), draws=5)
SMOKE = dict(train_per_class=2, val_per_class=1, resize=(48, 64), short_side=43, crop=32,
             crop_hw=(24, 48), draws=3)
# ImageNet's channel statistics (what torchvision's pretrained models expect). Three different
# means and stds: a swapped (mean, std) or a channel mix-up changes the result.
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
to_tensor = transforms.ToTensor()


def step_1_normalize_by_hand(img: Image.Image, writer: SummaryWriter) -> float:
    normalize = transforms.Normalize(MEAN, STD)
    v = 0.8                                                        # a grey image, 204 / 255
    grey = normalize(torch.full((3, 4, 4), v))                     # (3, 4, 4)
    closed = (v - torch.tensor(MEAN).double()) / torch.tensor(STD).double()   # (3,) float64
    print(f"constant {v} -> Normalize -> channels {grey[:, 0, 0].tolist()}")
    # float32 vs float64: results of ~1.6, a few roundings of ~1e-7 each.
    check("a constant image v gives (v - mean[c]) / std[c] in channel c", grey,
          closed[:, None, None].expand(3, 4, 4), atol=1e-6)
    x = to_tensor(img)                                             # (3, H, W) in [0, 1]
    out = normalize(x)
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
    exact = short_side * max(w, h) / min(w, h)
    long_expected = int(exact)                                     # truncated, as documented
    expected = (short_side, long_expected) if w <= h else (long_expected, short_side)
    print(f"original {img.size} -> Resize({resize}) {fixed.size} -> Resize({short_side}) "
          f"{scaled.size}")
    writer.add_image("Resize", to_tensor(fixed))
    writer.add_image("Resize_short_side", to_tensor(scaled))
    check(f"Resize({resize}) gives exactly height {resize[0]}, width {resize[1]}",
          fixed.size == (resize[1], resize[0]))
    check(f"Resize({short_side}) makes the shorter side {short_side}, keeping the aspect ratio",
          scaled.size == expected, detail=f"{scaled.size} == {expected}: "
          f"{short_side} * {max(w, h)} / {min(w, h)} = {exact:.2f}, truncated")
    return fixed.size, scaled.size


def step_3_random_crops(img: Image.Image, crop: int, crop_hw: tuple, draws: int, seed: int,
                        writer: SummaryWriter) -> list:
    offsets = []
    for tag, size, hw in (("RandomCrop", crop, (crop, crop)), ("RandomCropHW", crop_hw, crop_hw)):
        random_crop = transforms.RandomCrop(size)                  # s for s x s, or (h, w)
        for i in range(draws):
            torch.manual_seed(seed + i)
            top, left, h, w = transforms.RandomCrop.get_params(img, hw)   # the draw it makes
            torch.manual_seed(seed + i)
            cropped = random_crop(img)
            window = np.asarray(img)[top:top + h, left:left + w]
            if not (np.asarray(cropped).shape[:2] == hw and np.array_equal(cropped, window)):
                break
            writer.add_image(tag, to_tensor(cropped), i)
            offsets.append((tag, top, left))
        print(f"RandomCrop({size!r}): offsets (top, left) "
              f"{[(t, le) for g, t, le in offsets if g == tag]}")
        check(f"{draws} draws of RandomCrop({size!r}) are each {hw[0]}x{hw[1]}, the input's "
              f"window at the drawn offset", len([o for o in offsets if o[0] == tag]) == draws)
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
    pipeline = transforms.Compose([transforms.Resize(resize), transforms.RandomCrop(crop),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    torch.manual_seed(seed)
    composed = pipeline(img)                                       # (3, crop, crop)
    resized = transforms.Resize(resize)(img)                       # PIL, (w, h) = resize[::-1]
    torch.manual_seed(seed)                                        # the draw RandomCrop made
    top, left, h, w = transforms.RandomCrop.get_params(resized, (crop, crop))
    window = np.array(resized)[top:top + h, left:left + w]         # (crop, crop, 3) uint8
    expected = transforms.Normalize(MEAN, STD)(to_tensor(window))
    torch.manual_seed(seed)
    swapped = transforms.Compose([transforms.RandomCrop(crop), transforms.Resize(resize)])(img)
    print(f"Compose output: shape {tuple(composed.shape)}, range [{composed.min():.2f}, "
          f"{composed.max():.2f}]; RandomCrop before Resize would give {swapped.size[::-1]}")
    writer.add_image("Compose", composed)
    check(f"Compose output is (3, {crop}, {crop})", tuple(composed.shape) == (3, crop, crop),
          detail=f"{tuple(composed.shape)}")
    return check("Compose output == Normalize(ToTensor(the window of Resize(img) at the seeded "
                 "RandomCrop offset))", composed, expected)


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
    # ToDtype multiplies by 1/255 where ToTensor divides: one rounding of x (<= 6e-8), times
    # 1/std (up to 4.4), plus one rounding of results up to ~2.6 (2.4e-7): below 1e-6.
    err = check("v2 pipeline == classic pipeline (Resize, to float, Normalize)",
                pipeline(img), classic(img), atol=1e-6)
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
