"""DataLoader: batches, drop_last, shuffling, seeds and worker processes, logged per epoch.

A ``DataLoader`` turns a Dataset of single items into batches: it draws indices (in order, or
shuffled by a random generator), fetches the items (in this process, or in ``num_workers``
worker processes) and stacks them into tensors.

Claims proven:
  1. Batches are ``(B, 3, 32, 32)`` images and ``(B,)`` labels; an epoch has ``ceil(N / B)``
     batches, the last one short; ``drop_last=True`` gives ``floor(N / B)`` full batches.
  2. ``shuffle=False`` yields the dataset in order; ``shuffle=True`` visits every item
     exactly once in a new order: it is a ``RandomSampler``, which draws ``torch.randperm(N)``.
  3. With a seeded ``torch.Generator`` shuffling is reproducible: the same seed gives the same
     batches; the next epoch (the generator moved on) gives a new order.
  4. ``num_workers > 0`` gives exactly the batches of ``num_workers=0`` under the same seed.
  5. Logging ``add_images("Epoch: e", imgs, step)`` for every batch of several epochs (as the
     spec does) reads back one tag per epoch with steps 0..batches-1; a PNG grid of one batch.
  6. Throughput through the loader (ToTensor, batch 64) in images/s, with 0 and with worker
     processes, measured over a whole epoch; also how long the dataset took to make or read.

Run:  python data_pipeline/07_dataloader.py        (about 5 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/07_dataloader/logs
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from torchvision.utils import save_image

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10, data_source, fresh_folder

FULL = dict(size=1000, batch_size=64, epochs=2, workers=2, timed_epochs=5)
SMOKE = dict(size=100, batch_size=32, epochs=2, workers=2, timed_epochs=1)
# size: the first 1000 test images. Without TensorFlow, TensorBoard's reader checks each
# record's CRC in pure Python: all 156 batches of the 10000 real test images, logged twice,
# would take it about half a minute to read back.


def epoch(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``loader``: all images ``(N, 3, 32, 32)`` and labels ``(N,)``, in order."""
    imgs, targets = zip(*loader, strict=True)
    return torch.cat(imgs), torch.cat(targets)


def digest(img: torch.Tensor) -> bytes:
    """A short fingerprint of an image's exact values (to find it again after shuffling)."""
    return hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest()


def step_1_batch_shapes(ds, batch_size: int) -> dict:
    n = len(ds)
    batches = list(DataLoader(ds, batch_size=batch_size))
    imgs, targets = batches[0]
    print(f"N = {n}, batch_size = {batch_size}: {len(batches)} batches; first: imgs "
          f"{tuple(imgs.shape)} {imgs.dtype}, targets {tuple(targets.shape)} {targets.dtype}")
    check("a batch is (B, 3, 32, 32) float32 images and (B,) int64 labels",
          imgs.shape == (batch_size, 3, 32, 32) and imgs.dtype == torch.float32
          and targets.shape == (batch_size,) and targets.dtype == torch.int64)
    sizes = [len(t) for _, t in batches]
    expected = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    check(f"an epoch is ceil(N / B) = {math.ceil(n / batch_size)} batches, the last holding "
          f"the rest", sizes == expected, detail=f"last batch {sizes[-1]}")
    dropped = [len(t) for _, t in DataLoader(ds, batch_size=batch_size, drop_last=True)]
    check(f"drop_last=True: floor(N / B) = {n // batch_size} batches, all full",
          dropped == [batch_size] * (n // batch_size), detail=f"{len(dropped)} batches")
    return {"batches": len(batches), "drop_last_batches": len(dropped)}


def step_2_shuffle(ds, batch_size: int, seed: int) -> list:
    in_order, labels = epoch(DataLoader(ds, batch_size=batch_size, shuffle=False))
    check("shuffle=False yields the dataset in its own order",
          torch.equal(labels, torch.as_tensor(ds.targets)))
    shuffled, _ = epoch(DataLoader(ds, batch_size=batch_size, shuffle=True))
    where = {}                                          # image digest -> its indices in order
    for i, img in enumerate(in_order):
        where.setdefault(digest(img), []).append(i)
    order = []                                          # where each shuffled image came from
    for img in shuffled:
        found = where.get(digest(img))
        order.append(found.pop() if found else -1)      # -1: an image not in the dataset
    print(f"shuffle=True visits items {order[:8]}... (of {len(order)})")
    check("shuffle=True visits every item exactly once, in a new order",
          sorted(order) == list(range(len(ds))) and order != list(range(len(ds))))
    # shuffle=True means sampler=RandomSampler(ds); a seeded one draws torch.randperm(N).
    chosen = DataLoader(ds, batch_size=batch_size, shuffle=True).sampler
    check("DataLoader(shuffle=True) picks a RandomSampler as its sampler",
          isinstance(chosen, RandomSampler), detail=f"sampler: {type(chosen).__name__}")
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    drawn, _ = epoch(DataLoader(ds, batch_size=batch_size, sampler=sampler))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    check("a RandomSampler seeded with s yields the items in torch.randperm(N) order (seed s)",
          torch.equal(drawn, in_order[perm]))
    return order


def step_3_seeded_shuffling(ds, batch_size: int, seed: int) -> int:
    def loader(s):
        return DataLoader(ds, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(s))

    first, second = loader(seed), loader(seed)
    a, b = epoch(first), epoch(second)
    check("two loaders with the same generator seed give identical batches",
          torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
    c = epoch(first)                                    # epoch 2: the generator has moved on
    check("the next epoch is a new order of the same items",
          not torch.equal(a[0], c[0]) and torch.equal(a[1].sort().values, c[1].sort().values))
    return len(a[1])


def step_4_workers_same_batches(ds, batch_size: int, seed: int, workers: int) -> bool:
    def run(num_workers):
        return epoch(DataLoader(ds, batch_size=batch_size, shuffle=True,
                                num_workers=num_workers,
                                generator=torch.Generator().manual_seed(seed)))

    single, multi = run(0), run(workers)
    print(f"num_workers=0 vs num_workers={workers}: {len(single[1])} items each")
    return check(f"num_workers={workers} gives exactly the batches of num_workers=0 "
                 f"(same seed)", torch.equal(single[0], multi[0])
                 and torch.equal(single[1], multi[1]))


def step_5_epochs_to_tensorboard(ds, batch_size: int, epochs: int, seed: int,
                                 log_dir: Path, grid_path: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for e in range(epochs):
            for step, (imgs, _targets) in enumerate(loader):
                writer.add_images(f"Epoch: {e}", imgs, step)    # one tiled picture per batch
                if e == 0 and step == 0:
                    save_image(imgs, grid_path, nrow=8, padding=2)
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})   # 0 = keep them all
    acc.Reload()
    steps = {tag: [ev.step for ev in acc.Images(tag)] for tag in acc.Tags()["images"]}
    per_epoch = len(ds) // batch_size
    print(f"TensorBoard image tags: {sorted(steps)}, {per_epoch} steps each")
    check(f"one tag per epoch, each with steps 0..{per_epoch - 1}",
          steps == {f"Epoch: {e}": list(range(per_epoch)) for e in range(epochs)})
    with Image.open(grid_path) as grid:
        rows = math.ceil(batch_size / 8)
        check("the PNG grid of the first batch is 8 columns of 32 + 2 px",
              grid.size == (8 * 34 + 2, rows * 34 + 2), detail=f"{grid.size}")
    return steps


def images_per_second(ds, batch_size: int, num_workers: int, epochs: int = 1) -> tuple:
    """Images/s over ``epochs`` epochs, after a warm-up epoch that starts the workers."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0)   # keep workers between epochs
    for _ in loader:                                     # warm-up epoch (starts the workers)
        pass
    t0 = time.perf_counter()
    seen = sum(len(targets) for _ in range(epochs) for _, targets in loader)
    return seen, seen / (time.perf_counter() - t0)


def step_6_throughput(ds, batch_size: int, workers: int, epochs: int) -> dict:
    rates = {}
    for w in sorted({0, workers}):
        seen, rate = images_per_second(ds, batch_size, w, epochs)
        print(f"DataLoader, ToTensor, batch {batch_size}, num_workers={w}: "
              f"{rate:,.0f} images/s")
        check(f"num_workers={w}: {epochs} timed epoch(s) delivered all {epochs * len(ds)} "
              f"images", seen == epochs * len(ds), detail=f"{rate:,.0f} images/s")
        rates[w] = rate
    # Workers pay off when __getitem__ is slow (decoding JPEGs, augmenting); for small
    # in-memory images, shipping each batch between processes can cost more than it saves.
    return rates


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)                 # loading runs on the CPU
    cfg = SMOKE if args.smoke else FULL
    t0 = time.perf_counter()
    ds = cifar10(train=False, transform=transforms.ToTensor(), size=cfg["size"],
                 source=data_source(args), root=args.data_root, seed=args.seed,
                 download=args.download)
    made = time.perf_counter() - t0
    # Only the time is printed: real CIFAR-10 reads the whole split even when `size` keeps
    # fewer images, so len(ds) / made would not be a rate of anything.
    print(f"dataset ready: {len(ds)} images in {made:.2f} s (generated or read from disk)")
    bs, seed = cfg["batch_size"], args.seed
    results = {
        "shapes": step_1_batch_shapes(ds, bs),
        "shuffle": step_2_shuffle(ds, bs, seed),
        "seeded": step_3_seeded_shuffling(ds, bs, seed),
        "workers_match": step_4_workers_same_batches(ds, bs, seed, cfg["workers"]),
        "tensorboard": step_5_epochs_to_tensorboard(
            ds, bs, cfg["epochs"], seed, fresh_folder(args.out_dir / "logs"),
            args.out_dir / "first_batch.png"),
        "images_per_s": step_6_throughput(ds, bs, cfg["workers"], cfg["timed_epochs"]),
        "dataset_seconds": made,
    }
    # On a GPU, a training loop would now move each batch: imgs.to(device, non_blocking=True),
    # with DataLoader(pin_memory=True) so the copy can overlap the next batch's loading.
    print(f"summary: {len(ds)} images in batches of {bs}; loader on CPU, model device {device}")
    return results


if __name__ == "__main__":
    main()
