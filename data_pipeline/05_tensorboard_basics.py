"""TensorBoard basics: log scalars and images, then read the event files back to prove it.

``SummaryWriter`` appends records to an event file; ``tensorboard --logdir DIR`` draws them.
Each record has a tag (the chart's name) and a step (its x axis). Here the note reads its own
event file back with TensorBoard's ``EventAccumulator``, the same reader the dashboard uses.
For readers without TensorBoard, ``torchvision.utils.save_image`` writes a batch as a PNG grid.

Claims proven:
  1. ``add_scalar("y=2x", 2 * i, i)`` for ``i < N`` reads back as N points, steps 0..N-1,
     values ``2 * step``.
  2. ``add_image(tag, array, step, dataformats="HWC")`` with uint8 pixels reads back as the
     same pixels (images are stored as lossless PNG) at the steps given.
  3. ``add_images`` tiles a batch ``(N, 3, H, W)`` into one picture of ``min(N, 8)`` columns;
     its first tile is the first picture's bytes within one grey level (TensorBoard truncates
     ``x * 255`` to bytes).
  4. ``save_image(batch, nrow=8, padding=2)`` writes a PNG of width ``cols * (W + 2) + 2``;
     its first tile is exactly the first picture's bytes (``save_image`` rounds).

Run:  python data_pipeline/05_tensorboard_basics.py        (about 2 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/05_tensorboard_basics/logs
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from torchvision.utils import save_image

from torchnotes import check, make_parser, output_file, start
from torchnotes.datasets import (
    add_data_args,
    data_source,
    fresh_folder,
    hymenoptera,
    image_files,
    load_image,
)

FULL = dict(scalar_steps=100, n_images=10, image_size=64, train_per_class=40, val_per_class=20)
SMOKE = dict(scalar_steps=10, n_images=4, image_size=32, train_per_class=2, val_per_class=1)


def read_back(log_dir: Path):
    """Load every record under ``log_dir`` with TensorBoard's own reader (0 = keep all)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def decode(event) -> np.ndarray:
    """An image record's PNG bytes -> ``(H, W, 3)`` uint8 array."""
    return np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def step_1_scalars(writer: SummaryWriter, log_dir: Path, n: int) -> list:
    for i in range(n):
        writer.add_scalar("y=2x", 2 * i, i)          # tag, value (y axis), step (x axis)
    writer.flush()                                   # records reach the file on flush/close
    points = read_back(log_dir).Scalars("y=2x")
    steps, values = [p.step for p in points], [p.value for p in points]
    print(f"scalar 'y=2x': {len(points)} points, first {values[:3]}, last {values[-1]}")
    check(f"'y=2x' reads back as {n} points at steps 0..{n - 1}", steps == list(range(n)))
    check("each value read back is 2 * step", values, [2.0 * s for s in steps])
    return steps


def step_2_images(writer: SummaryWriter, log_dir: Path, pictures: list) -> list:
    arrays = [np.array(p) for p in pictures[:2]]     # (H, W, 3) uint8, channels last
    for step, array in enumerate(arrays, start=1):  # two pictures, at steps 1 and 2
        writer.add_image("ants_bees", array, step, dataformats="HWC")
    writer.flush()
    events = read_back(log_dir).Images("ants_bees")
    print(f"image 'ants_bees': steps {[e.step for e in events]}, sizes "
          f"{[(e.width, e.height) for e in events]}")
    check("'ants_bees' reads back at steps [1, 2]", [e.step for e in events] == [1, 2])
    same = all(np.array_equal(decode(e), a) for e, a in zip(events, arrays, strict=True))
    check("the pixels read back equal the uint8 pixels logged (lossless PNG)", same)
    return [e.step for e in events]


def step_3_batch_grid(writer: SummaryWriter, log_dir: Path, batch: torch.Tensor,
                      first: np.ndarray) -> tuple:
    n, _, h, w = batch.shape                                       # (N, 3, H, W) in [0, 1]
    writer.add_images("batch", batch, 0)
    writer.flush()
    (event,) = read_back(log_dir).Images("batch")
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    print(f"add_images of {n} images {h}x{w}: one picture {event.width}x{event.height}")
    check(f"the batch is tiled {rows} x {cols}: {cols * w}x{rows * h} pixels",
          (event.width, event.height) == (cols * w, rows * h))
    check("the first tile is the first picture's bytes (within one grey level)",
          decode(event)[:h, :w], first, atol=1)
    return event.width, event.height


def step_4_png_grid(batch: torch.Tensor, path: Path, first: np.ndarray) -> tuple:
    n, _, h, w = batch.shape
    save_image(batch, path, nrow=8, padding=2)
    grid = np.array(Image.open(path).convert("RGB"))              # (rows*(h+2)+2, ..., 3)
    cols, rows = min(n, 8), math.ceil(n / 8)
    expected = (rows * (h + 2) + 2, cols * (w + 2) + 2)
    print(f"save_image: {path.name} is {grid.shape[1]}x{grid.shape[0]} pixels")
    check("the PNG grid is cols * (W + 2) + 2 wide, rows * (H + 2) + 2 high",
          grid.shape[:2] == expected, detail=f"{grid.shape[:2]} == {expected}")
    check("the first tile (after the 2-pixel border) is exactly the first picture's bytes",
          grid[2:2 + h, 2:2 + w], first)
    return grid.shape


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, _device = start(parser, argv)                      # logging happens on the CPU
    cfg = SMOKE if args.smoke else FULL
    folder = hymenoptera(data_source(args), out_dir=args.out_dir, root=args.data_root,
                         seed=args.seed, download=args.download,
                         train_per_class=cfg["train_per_class"],
                         val_per_class=cfg["val_per_class"])
    paths = [p for kind in ("ants", "bees") for p in image_files(folder / "train" / kind)]
    pictures = [load_image(p) for p in paths[::max(1, len(paths) // cfg["n_images"])]]
    pictures = pictures[:cfg["n_images"]]
    size = cfg["image_size"]
    small = [transforms.Resize((size, size))(p) for p in pictures]
    batch = torch.stack([transforms.ToTensor()(p) for p in small])   # (N, 3, S, S) in [0, 1]
    first = np.array(small[0])                                    # (S, S, 3) uint8: the bytes

    grid_path = output_file(args.out_dir, "batch_grid.png")    # a preview: replaced each run
    log_dir = fresh_folder(args.out_dir / "logs")              # replaces an earlier run's logs
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        results = {
            "scalar_steps": step_1_scalars(writer, log_dir, cfg["scalar_steps"]),
            "image_steps": step_2_images(writer, log_dir, pictures),
            "tensorboard_grid": step_3_batch_grid(writer, log_dir, batch, first),
        }
    results["png_grid"] = step_4_png_grid(batch, grid_path, first)
    results["log_dir"] = log_dir
    print(f"summary: logs in {log_dir} (view: tensorboard --logdir {log_dir}); "
          f"PNG grid {grid_path}")
    return results


if __name__ == "__main__":
    main()
