"""GPU training the ``.to(device)`` way: one ``device`` variable decides where everything runs.

``device = torch.device("cuda")`` (or ``"cpu"``, ``"mps"``), then ``model.to(device)`` and
``imgs.to(device)``: the same code runs anywhere, and ``--device`` switches it. This is the
recommended style, with the habits that keep a GPU busy: the DataLoader pins its batches in
page-locked memory (``pin_memory=True``) so ``.to(device, non_blocking=True)`` copies them
while the GPU computes; the loss stays on the device and is read (``.item()``, which waits for
the GPU) only every ``log_every`` steps; evaluation runs under ``torch.inference_mode()``. A
device changes the speed, not the results beyond float32 rounding. Like ``01_train.py`` it
saves a crash-safe checkpoint per epoch (here with a learning-rate scheduler in it) and
continues with ``--resume``.

Claims proven:
  1. Same seed, same data -> the same run: two runs' first steps give bit-identical losses on
     the CPU (on a GPU, within rtol 1e-3: some CUDA kernels add in a varying order).
  2. The selected device computes what the CPU computes: the first steps' losses agree within
     rtol 5e-3 (TF32 off: Adam's first steps move every weight by about ``lr`` whatever its
     gradient, so they amplify small differences). With the CPU selected there is no second
     device: the float32 run is compared with a float64 run of the same steps at a CPU's
     float32 tolerance, rtol 1e-5.
  3. Training on the device learns (the loss goes down, test accuracy is far above chance);
     each epoch is timed, waiting for queued GPU work before reading the clock.
  4. With ``--resume`` the restored model reproduces the test loss its checkpoint recorded.

Run:  python training/03_train_gpu_device.py --device cuda    (on a GPU)
      python training/03_train_gpu_device.py                  (32 s measured on a busy
                                                               2-core CPU, one thread)
"""

from __future__ import annotations

import itertools
import math
import time

import torch
from model import Moli, cifar_loaders, run_settings
from torch import nn

from torchnotes import check, make_parser, prepare_out_dir, start, synchronize
from torchnotes.checkpoint import (
    RunLock,
    atomic_save,
    load_optimizer,
    load_scheduler,
    load_weights,
    resume_or_start,
    rng_state,
    set_rng_state,
)
from torchnotes.datasets import add_data_args

# None = the whole split: 10,000 train / 2,000 test images of the stand-in.
FULL = dict(train_size=None, test_size=None, epochs=2, batch_size=64, lr=1e-3,
            compare_steps=5, log_every=20, min_accuracy=0.80)
SMOKE = dict(train_size=512, test_size=256, epochs=2, batch_size=32, lr=1e-3,
             compare_steps=3, log_every=4, min_accuracy=0.30)
REAL = dict(FULL, min_accuracy=0.35)       # real CIFAR-10 is much harder than the stand-in
SAME_DEVICE_RTOL, CROSS_DEVICE_RTOL = 1e-3, 5e-3   # a GPU vs itself, a GPU vs the CPU
CPU_RTOL = 1e-5        # float32 vs float64 on a CPU: ~1e-7 per op, a few hundred ops deep


def first_losses(batches: list, device: torch.device, seed: int, lr: float,
                 dtype: torch.dtype = torch.float32) -> list[float]:
    """Seed, build Moli, take one Adam step per batch on ``device``; every step's loss."""
    torch.manual_seed(seed)
    model = Moli().to(device, dtype)       # initialised on the CPU, then moved: same weights
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for imgs, targets in batches:
        loss = nn.functional.cross_entropy(model(imgs.to(device, dtype)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())         # a comparison needs every value: sync is fine here
    return losses


def train_one_epoch(model, loader, loss_fn, optimizer, device, log_every: int) -> list[float]:
    """One pass; the mean loss of every ``log_every`` steps (one GPU sync per window)."""
    model.train()
    logged, running = [], torch.zeros((), device=device)
    for step, (imgs, targets) in enumerate(loader, start=1):
        imgs = imgs.to(device, non_blocking=True)          # async copy from pinned memory
        targets = targets.to(device, non_blocking=True)
        loss = loss_fn(model(imgs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.detach()                            # stays on the device: no sync
        if step % log_every == 0:
            logged.append(running.item() / log_every)       # .item() waits for the GPU
            running.zero_()
    return logged


def evaluate(model, loader, loss_fn, device) -> tuple[float, float]:
    model.eval()
    loss_sum = correct = torch.zeros((), device=device)
    with torch.inference_mode():           # like no_grad, and its tensors skip autograd's books
        for imgs, targets in loader:
            imgs = imgs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            outputs = model(imgs)
            loss_sum = loss_sum + loss_fn(outputs, targets) * len(targets)
            correct = correct + (outputs.argmax(dim=1) == targets).sum()
    n = len(loader.dataset)
    return loss_sum.item() / n, correct.item() / n          # one sync for the whole pass


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
        return check(f"float32 and float64 on the CPU agree on the first {len(batches)} losses",
                     torch.tensor(cpu_losses), torch.tensor(ref), rtol=CPU_RTOL)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # plain float32
        on_device = first_losses(batches, device, seed, lr)
    print(f"{device}, seed {seed}, one run: {[round(x, 6) for x in on_device]}")
    return check(f"{device} and the CPU agree on the first {len(batches)} losses",
                 torch.tensor(on_device), torch.tensor(cpu_losses), rtol=CROSS_DEVICE_RTOL)


def step_3_train_timed(loaders, device: torch.device, cfg: dict, out_dir, resumed) -> dict:
    train_loader, test_loader = loaders
    model = Moli().to(device)              # the one line that picks the device
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    losses, epochs, first_epoch = [], [], 1
    if resumed is not None:
        path, ckpt = resumed
        load_weights(model, ckpt["model"], source=str(path))   # load_state_dict, clear errors
        load_optimizer(optimizer, ckpt["optimizer"], source=str(path))   # the same, Adam's
        load_scheduler(scheduler, ckpt["scheduler"], source=str(path))   # where the lr stood
        set_rng_state(ckpt["rng"])
        train_loader.generator.set_state(ckpt["loader_generator"])
        losses, first_epoch = ckpt["losses"].tolist(), ckpt["epoch"] + 1
        check(f"the restored model reproduces the test loss {path.name} recorded",
              evaluate(model, test_loader, loss_fn, device)[0], ckpt["test_loss"],
              atol=0.0 if device.type == "cpu" else 1e-5)
    acc = ckpt["test_accuracy"] if resumed is not None else 0.0
    for epoch in range(first_epoch, cfg["epochs"] + 1):
        synchronize(device)
        t0 = time.perf_counter()
        used = optimizer.param_groups[0]["lr"]             # the rate this epoch trains with
        losses += train_one_epoch(model, train_loader, loss_fn, optimizer, device,
                                  cfg["log_every"])
        synchronize(device)                # GPU work is queued: wait before reading the clock
        seconds = time.perf_counter() - t0
        scheduler.step()         # cosine: epoch e trains at lr (1 + cos(pi (e - 1) / E)) / 2;
                                 # it would reach 0 only after the last epoch
        test_loss, acc = evaluate(model, test_loader, loss_fn, device)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "step": epoch * len(train_loader),
                     "losses": torch.tensor(losses, dtype=torch.float64),
                     "test_loss": test_loss, "test_accuracy": acc, "rng": rng_state(),
                     "loader_generator": train_loader.generator.get_state(),
                     "settings": cfg["settings"]},            # --resume refuses other ones
                    out_dir / f"moli_device_epoch_{epoch}.pth")   # temp file, fsync, rename
        epochs.append(dict(epoch=epoch, seconds=seconds, test_accuracy=acc, lr=used))
        print(f"epoch {epoch} on {device}: {seconds:.2f} s | lr {used:.2e} | test accuracy "
              f"{acc:.1%}")
    if epochs:                     # the scheduler is in the loop (and resumed where it stood)
        E = cfg["epochs"]
        check("each epoch trained at the cosine rate lr (1 + cos(pi (e - 1) / E)) / 2",
              torch.tensor([e["lr"] for e in epochs], dtype=torch.float64),
              torch.tensor([cfg["lr"] * (1 + math.cos(math.pi * (e["epoch"] - 1) / E)) / 2
                            for e in epochs], dtype=torch.float64), atol=1e-12)
    k = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"mean of the first/last {k} logged windows: {first:.3f} -> {last:.3f}")
    check(f"final test accuracy >= {cfg['min_accuracy']:.0%} (chance is 10%)",
          acc >= cfg["min_accuracy"], detail=f"{acc:.1%}")
    return dict(losses=losses, epochs=epochs, test_accuracy=acc, model=model)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --out-dir")
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    out_dir = prepare_out_dir(args.out_dir)
    with RunLock(out_dir):
        settings = run_settings(args)
        resumed = resume_or_start(out_dir, resume=args.resume, overwrite=args.overwrite,
                                  pattern="moli_device_epoch_*.pth", settings=settings,
                                  keys=("model", "optimizer", "scheduler", "rng",
                                        "loader_generator", "losses", "epoch", "test_loss",
                                        "test_accuracy"),
                                  epochs={"smoke": SMOKE, "full": FULL,
                                          "real": REAL}[settings["preset"]]["epochs"])
        train_loader, test_loader, is_real = cifar_loaders(args, cfg,
                                                           pin_memory=device.type == "cuda")
        cfg = REAL if is_real and not args.smoke else cfg     # real CIFAR-10: its own preset
        cfg = dict(cfg, settings=settings)
        batches = list(itertools.islice(train_loader, cfg["compare_steps"]))
        train_loader.generator.manual_seed(args.seed)         # training starts from the seed
        cpu_losses = step_1_same_seed_same_run(batches, device, args.seed, cfg["lr"])
        cross_err = step_2_device_matches_cpu(batches, cpu_losses, device, args.seed, cfg["lr"])
        history = step_3_train_timed((train_loader, test_loader), device, cfg, out_dir,
                                     resumed)
    per_epoch = (sum(e["seconds"] for e in history["epochs"]) / len(history["epochs"])
                 if history["epochs"] else 0.0)
    print(f"summary: {device}, {per_epoch:.2f} s per epoch, test accuracy "
          f"{history['test_accuracy']:.1%}; checkpoints in {out_dir}")
    return dict(device=str(device), cpu_losses=cpu_losses, cross_device_error=cross_err,
                seconds_per_epoch=per_epoch, out_dir=out_dir, **history)


if __name__ == "__main__":
    main()
