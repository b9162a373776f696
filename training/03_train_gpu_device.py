"""GPU training the ``.to(device)`` way: one ``device`` variable decides where everything runs.

``device = torch.device("cuda")`` (or ``"cpu"``, ``"mps"``), then ``model.to(device)`` and
``imgs.to(device)``: the same code runs anywhere, and ``--device`` switches it. This is the
recommended style; the loop is ``train_one_epoch`` in ``training/model.py``, shared with
``01_train.py``. A device changes the speed, not the results beyond float32 rounding.

Claims proven:
  1. Same seed, same data -> the same run: two runs' first steps give bit-identical losses on
     the CPU (on a GPU, within rtol 1e-3: some CUDA kernels add in a varying order).
  2. The selected device computes what the CPU computes: the first steps' losses agree within
     rtol 5e-3. For this comparison TF32 (on by default for cuDNN convolutions, about 1e-3
     relative error per op) is switched off: Adam's first steps move every weight by about
     ``lr`` whatever the size of its gradient, so they amplify small differences. With the
     CPU selected there is no second device: it compares the float32 run with a float64 run
     of the same steps (same seed, same batches) within the same rtol instead.
  3. Training on the device learns (the loss goes down, test accuracy is far above chance);
     each epoch is timed, waiting for queued GPU work before reading the clock.

Run:  python training/03_train_gpu_device.py --device cuda    (on a GPU)
      python training/03_train_gpu_device.py                  (about 13 s on a 2-core CPU)
"""

from __future__ import annotations

import itertools
import time

import torch
from model import Moli, cifar_loaders, evaluate, train_one_epoch
from torch import nn

from torchnotes import check, make_parser, start, synchronize
from torchnotes.datasets import add_data_args

# None = the whole split: 10,000 train / 2,000 test images of the stand-in.
FULL = dict(train_size=None, test_size=None, epochs=2, batch_size=64, lr=1e-3,
            compare_steps=5, min_accuracy=0.80)
SMOKE = dict(train_size=1_000, test_size=500, epochs=2, batch_size=64, lr=1e-3,
             compare_steps=3, min_accuracy=0.30)
REAL = dict(FULL, min_accuracy=0.35)       # real CIFAR-10 is much harder than the stand-in
SAME_DEVICE_RTOL, CROSS_DEVICE_RTOL = 1e-3, 5e-3   # see claims 1 and 2


def first_losses(batches: list, device: torch.device, seed: int, lr: float,
                 dtype: torch.dtype = torch.float32) -> list[float]:
    """Seed, build Moli, take one Adam step per batch on ``device``; return the losses."""
    torch.manual_seed(seed)
    model = Moli().to(device, dtype)       # initialised on the CPU, then moved: same weights
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = [(imgs.to(dtype), targets) for imgs, targets in batches]   # images in `dtype`
    return train_one_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, device,
                           show_progress=False)


def step_1_same_seed_same_run(batches: list, device: torch.device, seed: int,
                              lr: float) -> list[float]:
    cpu = torch.device("cpu")
    a, b = first_losses(batches, cpu, seed, lr), first_losses(batches, cpu, seed, lr)
    print(f"CPU, seed {seed}, run 1: {[round(x, 6) for x in a]}")
    print(f"CPU, seed {seed}, run 2: {[round(x, 6) for x in b]}")
    check("same seed on the CPU: bit-identical losses", torch.tensor(a), torch.tensor(b),
          atol=0.0)
    if device.type != "cpu":
        c, d = first_losses(batches, device, seed, lr), first_losses(batches, device, seed, lr)
        check(f"same seed on {device}: the same losses within float32 rounding",
              torch.tensor(c), torch.tensor(d), rtol=SAME_DEVICE_RTOL)
    return a


def step_2_device_matches_cpu(batches: list, cpu_losses: list[float], device: torch.device,
                              seed: int, lr: float) -> float:
    if device.type == "cpu":               # no second device: float64 is the reference
        ref = first_losses(batches, device, seed, lr, dtype=torch.float64)
        print(f"CPU float64, seed {seed}: {[round(x, 6) for x in ref]}")
        print("(CPU selected: its float32 run vs this float64 run; with --device cuda this "
              "compares a GPU with the CPU)")
        return check(f"float32 and float64 on the CPU agree on the first {len(batches)} losses",
                     torch.tensor(cpu_losses), torch.tensor(ref), rtol=CROSS_DEVICE_RTOL)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # plain float32
        on_device = first_losses(batches, device, seed, lr)
    print(f"{device}, seed {seed}, one run: {[round(x, 6) for x in on_device]}")
    return check(f"{device} and the CPU agree on the first {len(batches)} losses",
                 torch.tensor(on_device), torch.tensor(cpu_losses), rtol=CROSS_DEVICE_RTOL)


def step_3_train_timed(loaders, device: torch.device, cfg: dict, show_progress: bool) -> dict:
    train_loader, test_loader = loaders
    model = Moli().to(device)              # the one line that picks the device
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    losses, epochs = [], []
    for epoch in range(1, cfg["epochs"] + 1):
        synchronize(device)
        t0 = time.perf_counter()
        losses += train_one_epoch(model, train_loader, loss_fn, optimizer, device,
                                  show_progress=show_progress, desc=f"epoch {epoch}")
        synchronize(device)                # GPU work is queued: wait before reading the clock
        seconds = time.perf_counter() - t0
        _, acc = evaluate(model, test_loader, loss_fn, device)
        epochs.append(dict(epoch=epoch, seconds=seconds, test_accuracy=acc))
        print(f"epoch {epoch} on {device}: {seconds:.2f} s | test accuracy {acc:.1%}")
    k = min(10, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"mean of {k} steps: {first:.3f} -> {last:.3f}")
    check(f"final test accuracy >= {cfg['min_accuracy']:.0%} (chance is 10%)",
          acc >= cfg["min_accuracy"], detail=f"{acc:.1%}")
    return dict(losses=losses, epochs=epochs, test_accuracy=acc)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    train_loader, test_loader, is_real = cifar_loaders(args, cfg)
    cfg = REAL if is_real and not args.smoke else cfg     # real CIFAR-10: its own preset
    batches = list(itertools.islice(train_loader, cfg["compare_steps"]))
    cpu_losses = step_1_same_seed_same_run(batches, device, args.seed, cfg["lr"])
    cross_err = step_2_device_matches_cpu(batches, cpu_losses, device, args.seed, cfg["lr"])
    history = step_3_train_timed((train_loader, test_loader), device, cfg,
                                 show_progress=not args.smoke)
    per_epoch = sum(e["seconds"] for e in history["epochs"]) / len(history["epochs"])
    print(f"summary: {device}, {per_epoch:.2f} s per epoch, test accuracy "
          f"{history['test_accuracy']:.1%}")
    return dict(device=str(device), cpu_losses=cpu_losses, cross_device_error=cross_err,
                seconds_per_epoch=per_epoch, **history)


if __name__ == "__main__":
    main()
