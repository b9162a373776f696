"""transforms.ToTensor: from a picture (H, W, C) of bytes to a tensor (C, H, W) of floats in [0, 1].

Models want float tensors with channels first; images on disk are bytes with channels last.
``ToTensor`` does both conversions in one call. The modern ``torchvision.transforms.v2`` API
splits it into two explicit steps: ``ToImage`` (layout) and ``ToDtype(scale=True)`` (values).

Claims proven:
  1. ``ToTensor()(PIL image)`` is ``(3, H, W)`` float32 in [0, 1] and equals
     ``np.asarray(img).transpose(2, 0, 1) / 255`` element-wise (NumPy is the oracle).
  2. ``ToTensor`` also takes a NumPy ``(H, W, 3)`` uint8 array, the layout ``cv2.imread``
     returns; but OpenCV stores BGR, so such an array gives the channels reversed
     (``ToTensor(bgr) == ToTensor(img).flip(0)``) until converted to RGB first with
     ``cv2.cvtColor(a, cv2.COLOR_BGR2RGB)`` or ``a[..., ::-1].copy()``.
  3. ``v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])`` gives the same
     tensor (within one float32 rounding), while ``v2.ToImage()`` alone keeps uint8 values.
  4. The pitfall: ``ToTensor`` divides by 255 only for uint8 input; a float array stays as is.
  5. ``ToPILImage`` undoes ``ToTensor``: the round trip gives back the same bytes.
  6. ...but only with no arithmetic in between: ``ToPILImage`` truncates ``x * 255`` to bytes,
     so after ``Normalize`` and its inverse some of the 256 grey levels (63 on a CPU) come
     back one lower; rounding first (``(x * 255).round().byte()``) gives every level back.

The tensor is also logged with ``SummaryWriter.add_image`` (view it in TensorBoard).

Run:  python data_pipeline/03_to_tensor.py        (about 1 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/03_to_tensor/logs
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

FULL = dict(train_per_class=40, val_per_class=20)   # stand-in sizes (the real set is fixed)
SMOKE = dict(train_per_class=2, val_per_class=1)


def step_1_to_tensor_vs_numpy(img: Image.Image) -> torch.Tensor:
    tensor_img = transforms.ToTensor()(img)                       # (3, H, W) float32
    w, h = img.size                                               # PIL says (width, height)
    by_hand = np.asarray(img).transpose(2, 0, 1).astype(np.float32) / 255   # (3, H, W)
    print(f"PIL image: size {img.size}, mode {img.mode}")
    print(f"ToTensor:  shape {tuple(tensor_img.shape)}, dtype {tensor_img.dtype}, "
          f"range [{tensor_img.min():.3f}, {tensor_img.max():.3f}]")
    check("ToTensor gives (3, H, W) float32 in [0, 1]",
          tensor_img.shape == (3, h, w) and tensor_img.dtype == torch.float32
          and 0 <= tensor_img.min() and tensor_img.max() <= 1)
    # Both sides divide the same byte by 255 in float32: at most one rounding apart.
    check("ToTensor == HWC->CHW transpose / 255 in NumPy", tensor_img, by_hand, atol=1e-7)
    return tensor_img


def step_2_numpy_array_input(img: Image.Image, tensor_img: torch.Tensor) -> torch.Tensor:
    rgb = np.array(img)                                  # (H, W, 3) uint8, channels R, G, B
    bgr = rgb[..., ::-1].copy()      # what cv2.imread would give for this file: B, G, R
    from_bgr = transforms.ToTensor()(bgr)                # (3, H, W), channel 0 is blue
    # The fix: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), or in NumPy a reversed (copied) last axis.
    from_converted = transforms.ToTensor()(bgr[..., ::-1].copy())
    print(f"BGR array: shape {bgr.shape}, dtype {bgr.dtype} -> tensor {tuple(from_bgr.shape)}; "
          f"max |BGR tensor - RGB tensor| = {(from_bgr - tensor_img).abs().max():.3f}")
    check("ToTensor(BGR HWC uint8 array) has the channels reversed: == ToTensor(img).flip(0)",
          from_bgr, tensor_img.flip(0))
    check("converted to RGB first, the array gives exactly ToTensor(PIL image)",
          from_converted, tensor_img)
    return from_converted


def step_3_v2_api(img: Image.Image, tensor_img: torch.Tensor) -> torch.Tensor:
    layout_only = v2.ToImage()(img)                      # (3, H, W) uint8 tv_tensors.Image
    to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    modern = to_float(img)
    print(f"v2.ToImage:              {type(layout_only).__name__} {layout_only.dtype}, "
          f"max {layout_only.max().item()}")
    print(f"v2.ToImage + v2.ToDtype: {modern.dtype}, max {modern.max().item():.3f}")
    chw_bytes = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)   # (3, H, W) uint8
    check("v2.ToImage alone only moves channels first: same uint8 values, no scaling",
          layout_only.dtype == torch.uint8 and torch.equal(layout_only, chw_bytes))
    # ToDtype multiplies by 1/255 where ToTensor divides by 255: one float32 rounding apart.
    check("v2.ToImage + v2.ToDtype(float32, scale=True) == ToTensor", modern, tensor_img,
          atol=1e-7)
    return modern


def step_4_float_input_is_not_scaled(img: Image.Image) -> float:
    as_float = np.asarray(img).astype(np.float32)                # values 0..255, but float
    out = transforms.ToTensor()(as_float)
    print(f"ToTensor(float32 array): max {out.max().item():.1f} (not divided by 255)")
    check("ToTensor leaves float input unscaled: max stays the array's max",
          out.max().item(), float(as_float.max()))
    return out.max().item()


def step_5_round_trip(img: Image.Image, tensor_img: torch.Tensor) -> bool:
    back = transforms.ToPILImage()(tensor_img)
    same = np.array_equal(np.asarray(back), np.asarray(img))
    print(f"ToPILImage(ToTensor(img)): mode {back.mode}, size {back.size}")
    return check("ToPILImage(ToTensor(img)) gives back the same bytes", same)


def step_6_arithmetic_breaks_the_round_trip() -> dict:
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    x = levels.float() / 255                                     # every byte value, (3, 16, 16)
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)(x)         # (x - 0.5) / 0.5
    back = norm * 0.5 + 0.5                                      # the inverse: x again, in theory
    truncated = torch.from_numpy(np.array(transforms.ToPILImage()(back))).permute(2, 0, 1)
    lost = (levels.int() - truncated.int())[0]                   # levels that came back lower
    rounded = (back * 255).round().to(torch.uint8)
    print(f"Normalize then un-normalize: max |x - back| = {(back - x).abs().max():.1e}; "
          f"ToPILImage gives {int((lost != 0).sum())} of 256 levels back one lower")
    check("ToPILImage after arithmetic truncates: some levels come back exactly one lower",
          lost.max().item() == 1 and lost.min().item() == 0 and (lost != 0).sum().item() > 0,
          detail=f"{int((lost != 0).sum())} levels")
    check("rounding before the cast gives every level back", rounded, levels)
    return {"levels_lost": int((lost != 0).sum())}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # transforms run on the CPU
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download, **cfg)
    img_path = image_files(folder / "train" / "ants")[0]
    img = load_image(img_path)
    print(f"image: {img_path}")
    tensor_img = step_1_to_tensor_vs_numpy(img)
    results = {
        "shape": tuple(tensor_img.shape),
        "from_array": step_2_numpy_array_input(img, tensor_img),
        "v2": step_3_v2_api(img, tensor_img),
        "float_max": step_4_float_input_is_not_scaled(img),
        "round_trip": step_5_round_trip(img, tensor_img),
        "truncation": step_6_arithmetic_breaks_the_round_trip(),
    }
    log_dir = fresh_folder(args.out_dir / "logs")              # replaces an earlier run's logs
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_image("Tensor_img", tensor_img)              # (3, H, W) float in [0, 1]
    results["log_dir"] = log_dir
    print(f"summary: {img.size[0]}x{img.size[1]} RGB image -> tensor {results['shape']} "
          f"float32 in [0, 1]")
    return results


if __name__ == "__main__":
    main()
