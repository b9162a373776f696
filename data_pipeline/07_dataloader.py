"""DataLoader: batches, drop_last, shuffling, worker processes and their seeds, pin_memory.

A ``DataLoader`` turns a Dataset of single items into batches: it draws indices (in order, or
shuffled by a random generator), fetches the items (in this process, or in ``num_workers``
worker processes) and stacks them into tensors. A dataset that returns its own index shows
the order; CIFAR-10 (or its built-in stand-in) shows the batches a model would eat.

Claims proven:
  1. Batches are ``(B, 3, 32, 32)`` images and ``(B,)`` labels; an epoch has ``ceil(N / B)``
     batches, the last one short; ``drop_last=True`` gives ``floor(N / B)`` full batches.
  2. ``shuffle=False`` yields indices 0..N-1 in order; ``shuffle=True`` visits every index
     exactly once in a new order.
  3. With a seeded ``torch.Generator`` shuffling is reproducible: the same seed gives the same
     order; the next epoch (the generator moved on) gives a new one.
  4. Worker processes: ``num_workers=2`` delivers the indices in the order ``num_workers=0``
     does; worker ``k``'s torch seed is ``base_seed + k`` (one ``base_seed`` per epoch, drawn
     from the loader's generator), and ``seed_worker`` seeds NumPy and ``random`` from it: so
     the workers draw different torch, NumPy and ``random`` numbers, the same generator seed
     draws them again exactly, and another seed draws others.
  5. ``pin_memory=True`` puts batches in page-locked memory when CUDA is there (so
     ``.to("cuda", non_blocking=True)`` can overlap); without an accelerator it only warns.

Several epochs of batches are logged with ``add_images("Epoch: e", imgs, step)``, as the
spec's note does, and the loader's throughput is measured with and without workers.

Run:  python data_pipeline/07_dataloader.py        (about 5 s on a laptop CPU)
      tensorboard --logdir runs/data_pipeline/07_dataloader/logs
"""

from __future__ import annotations

import math
import random
import time
import warnings

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms

from torchnotes import check, make_parser, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    fresh_folder,
    torchvision_errors,
    use_real,
)

FULL = dict(size=1000, batch_size=64, epochs=2, workers=2, timed_epochs=5)
SMOKE = dict(size=100, batch_size=32, epochs=2, workers=2, timed_epochs=1)
# size: the first 1000 test images (the stand-in makes just those; real CIFAR-10 is cut).


class IndexDataset(Dataset):
    """Item i is ``(i, t, n, p, base, w)``: its index; a random number from torch, NumPy and
    ``random`` each (standing for random augmentations); the process's torch seed minus its
    worker id; and the id of the worker process that loaded it (-1: the main process)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        info = get_worker_info()                        # None in the main process
        w = info.id if info is not None else -1
        return (i, torch.rand(()), np.random.rand(), random.random(),
                torch.initial_seed() - max(w, 0), w)


def seed_worker(worker_id: int) -> None:
    """PyTorch's reproducibility recipe: each worker seeds other libraries from its torch seed.

    PyTorch already seeds torch, ``random`` and NumPy in every worker; ``worker_init_fn`` is the
    hook for anything else (here the same seeding, written out).
    """
    worker_seed = torch.initial_seed() % 2**32          # base_seed + worker_id
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def epoch(loader: DataLoader) -> list[torch.Tensor]:
    """One pass over ``loader``, each field of the batches concatenated in order."""
    return [torch.cat(field) for field in zip(*loader, strict=True)]


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


def step_2_shuffle(n: int, batch_size: int) -> list:
    ds = IndexDataset(n)
    in_order = epoch(DataLoader(ds, batch_size=batch_size, shuffle=False))[0]
    shuffled = epoch(DataLoader(ds, batch_size=batch_size, shuffle=True))[0]
    print(f"shuffle=False visits {in_order[:8].tolist()}...; shuffle=True visits "
          f"{shuffled[:8].tolist()}... (of {n})")
    check("shuffle=False yields indices 0..N-1 in order", torch.equal(in_order, torch.arange(n)))
    check("shuffle=True visits every index exactly once, in a new order",
          torch.equal(shuffled.sort().values, torch.arange(n))
          and not torch.equal(shuffled, torch.arange(n)))
    return shuffled.tolist()


def step_3_seeded_shuffling(n: int, batch_size: int, seed: int) -> list:
    def loader(s):
        return DataLoader(IndexDataset(n), batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(s))

    first = loader(seed)
    a, b = epoch(first)[0], epoch(loader(seed))[0]
    check("two loaders with the same generator seed visit the same order", torch.equal(a, b))
    c = epoch(first)[0]                                  # epoch 2: the generator has moved on
    print(f"seed {seed}: epoch 1 {a[:6].tolist()}..., epoch 2 {c[:6].tolist()}...")
    check("the next epoch is a new order of the same indices",
          not torch.equal(a, c) and torch.equal(a.sort().values, c.sort().values))
    return a.tolist()


def step_4_workers(n: int, batch_size: int, seed: int, workers: int) -> dict:
    def run(num_workers, s):
        idx, *drawn, base, w = epoch(DataLoader(
            IndexDataset(n), batch_size=batch_size, shuffle=True, num_workers=num_workers,
            worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(s)))
        return idx, torch.stack(drawn), base, w         # drawn: (3, N) torch, NumPy, random

    (idx0, *_), (idx, drawn, base, w) = run(0, seed), run(workers, seed)
    firsts = torch.stack([drawn[:, w == k][:, 0] for k in range(workers)])   # (workers, 3)
    print(f"num_workers={workers}: batches loaded by workers {w[::batch_size].tolist()}; "
          f"torch seed - worker id: {sorted(set(base.tolist()))}; first (torch, NumPy, random) "
          f"drawn: " + ", ".join(f"worker {k}: {np.round(firsts[k].numpy(), 4).tolist()}"
                                  for k in range(workers)))
    check(f"num_workers={workers} delivers the indices in the order num_workers=0 does",
          torch.equal(idx, idx0))
    check("every worker's torch seed is base_seed + worker_id (one base_seed for all)",
          len(set(base.tolist())) == 1 and sorted(set(w.tolist())) == list(range(workers)),
          detail=f"base_seed {base[0]}")
    streams = [drawn[:, w == k][:, :batch_size] for k in range(workers)]
    check("each worker is seeded differently: its torch, NumPy and random numbers all differ",
          all((streams[0] != s).all() for s in streams[1:]))
    (_, again, *_), (_, other, *_) = run(workers, seed), run(workers, seed + 1)
    check("the same generator seed draws the same numbers again (all 3), another seed others",
          torch.equal(drawn, again) and bool((drawn != other).all()))
    # seed_worker seeded NumPy and random with base_seed + k: their first draws, recomputed.
    seeds = [(int(base[0]) + k) % 2**32 for k in range(workers)]
    check("seed_worker: worker k's first NumPy / random draw is the one seed base_seed + k gives",
          firsts[:, 1:], [[np.random.RandomState(s).rand(), random.Random(s).random()]
                          for s in seeds])
    return {"workers_seen": sorted(set(w.tolist())), "base_seed": int(base[0])}


def step_5_pin_memory(ds, batch_size: int, device: torch.device) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs, _ = next(iter(DataLoader(ds, batch_size=batch_size, pin_memory=True)))
    said = [str(w.message) for w in caught if "pin_memory" in str(w.message)]
    print(f"pin_memory=True: is_pinned() = {imgs.is_pinned()}; warnings: {said[:1]}")
    if not torch.accelerator.is_available():
        return check("without an accelerator, pin_memory=True only warns: the batch stays in "
                     "ordinary memory", bool(said) and not imgs.is_pinned())
    check("pin_memory=True: the batch is in page-locked memory", imgs.is_pinned())
    if device.type != "cpu":
        on_device = imgs.to(device, non_blocking=True)   # the copy can overlap other work
        check(f"the non_blocking copy on {device} equals the batch", on_device.cpu(), imgs)
    return True


def epochs_to_tensorboard(ds, batch_size: int, epochs: int, seed: int, log_dir) -> int:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for e in range(epochs):
            for step, (imgs, _targets) in enumerate(loader):
                writer.add_images(f"Epoch: {e}", imgs, step)    # one tiled picture per batch
    print(f"TensorBoard: tags 'Epoch: 0'..'Epoch: {epochs - 1}', {len(loader)} steps each, "
          f"in {log_dir}")
    return len(loader)


def images_per_second(ds, batch_size: int, num_workers: int, epochs: int = 1) -> tuple:
    """Images/s over ``epochs`` epochs, after a warm-up epoch that starts the workers."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0)   # keep workers between epochs
    for _ in loader:                                     # warm-up epoch (starts the workers)
        pass
    t0 = time.perf_counter()
    seen = sum(len(targets) for _ in range(epochs) for _, targets in loader)
    return seen, seen / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)                 # loading runs on the CPU
    cfg = SMOKE if args.smoke else FULL
    root, tf = args.data_root or data_root(), transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        with torchvision_errors("CIFAR-10", root, args.download):
            ds = torchvision.datasets.CIFAR10(root, train=False, transform=tf,
                                              download=args.download)
        ds.data, ds.targets = ds.data[:cfg["size"]], ds.targets[:cfg["size"]]
    else:
        ds = SyntheticCIFAR10(train=False, transform=tf, size=cfg["size"], seed=args.seed)
    bs, seed = cfg["batch_size"], args.seed
    results = {
        "shapes": step_1_batch_shapes(ds, bs),
        "shuffle": step_2_shuffle(len(ds), bs),
        "seeded": step_3_seeded_shuffling(len(ds), bs, seed),
        "workers": step_4_workers(len(ds), bs, seed, cfg["workers"]),
        "pinned": step_5_pin_memory(ds, bs, device),
        "steps_per_epoch": epochs_to_tensorboard(ds, bs, cfg["epochs"], seed,
                                                 fresh_folder(args.out_dir / "logs")),
        "images_per_s": {},
    }
    for w in sorted({0, cfg["workers"]}):
        # Workers pay off when __getitem__ is slow (decoding JPEGs, augmenting); for small
        # in-memory images, shipping each batch between processes can cost more than it saves.
        seen, rate = images_per_second(ds, bs, w, cfg["timed_epochs"])
        print(f"DataLoader, ToTensor, batch {bs}, num_workers={w}: {rate:,.0f} images/s")
        results["images_per_s"][w] = rate
    print(f"summary: {len(ds)} images in batches of {bs}; loader on CPU, model device {device}")
    return results


if __name__ == "__main__":
    main()
