"""CPU training start to finish: data, model, loss, optimiser, loop, TensorBoard, checkpoints.

Every supervised training run has the same skeleton: batches from a DataLoader, a forward pass,
a loss, ``zero_grad`` / ``backward`` / ``step``; after each epoch an evaluation on held-out
data under ``model.eval()`` and ``torch.no_grad()``, a few scalars for TensorBoard and a
checkpoint. The loop itself lives in ``training/model.py`` (``train_one_epoch``, ``evaluate``)
so the GPU scripts run the very same code.

Claims proven:
  1. The training loss goes down (the last steps' mean vs the first steps' mean).
  2. Test accuracy is far above chance (10 classes: 10%). With the default settings on the
     built-in stand-in it reaches at least 90%.
  3. One checkpoint (a state_dict) is saved per epoch, and it round-trips: loaded into a fresh
     Moli it holds the same tensors and gives the same test accuracy.

Optimiser: Adam(lr=1e-3). The spec used SGD(lr=0.01) without momentum, which on the
stand-in learns far more slowly than Adam (try it: swap the optimiser line), so Adam is the
default that reaches the target in a few epochs.
TensorBoard: ``tensorboard --logdir <out-dir>/tensorboard`` shows ``train/loss`` per step and
``test/loss``, ``test/accuracy`` per epoch.

Data: real CIFAR-10 if it is under data/ (then 10 epochs over all 50,000 images, as the spec
does; the spec's own figure for this network is roughly 55-65% test accuracy, not measured
here; several minutes on a laptop CPU), else the CIFAR-shaped stand-in (10,000 images,
3 epochs).

Run:  python training/01_train.py        (about 21 s on a 2-core laptop CPU, stand-in)
"""

from __future__ import annotations

import time

import torch
from model import Moli, cifar_loaders, evaluate, train_one_epoch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from torchnotes import check, make_parser, start, writable_file
from torchnotes.datasets import add_data_args

# None = the whole split: 10,000 train / 2,000 test images of the stand-in.
FULL = dict(train_size=None, test_size=None, epochs=3, batch_size=64, lr=1e-3,
            min_accuracy=0.90)
SMOKE = dict(train_size=1_000, test_size=500, epochs=2, batch_size=64, lr=1e-3,
             min_accuracy=0.30)
# Real CIFAR-10 is much harder than the stand-in: the spec's 10 epochs, a lower bar.
REAL = dict(FULL, epochs=10, min_accuracy=0.40)


def step_1_train(model: nn.Module, loaders, device: torch.device, cfg: dict, out_dir,
                 overwrite: bool, show_progress: bool) -> dict:
    train_loader, test_loader = loaders
    # Ask for every checkpoint path first: an earlier run's files stop us before training.
    paths = [writable_file(out_dir / f"moli_epoch_{e}.pth", overwrite=overwrite)
             for e in range(1, cfg["epochs"] + 1)]
    tb_dir = out_dir / "tensorboard"
    for old in sorted(tb_dir.glob("events.out.tfevents.*")):
        writable_file(old, overwrite=overwrite).unlink()   # --overwrite: fresh curves only
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    writer = SummaryWriter(log_dir=str(tb_dir))
    losses, epochs = [], []

    def log_step(loss: float) -> None:
        writer.add_scalar("train/loss", loss, len(losses))
        losses.append(loss)

    for epoch, path in enumerate(paths, start=1):
        t0 = time.perf_counter()
        train_one_epoch(model, train_loader, loss_fn, optimizer, device, on_step=log_step,
                        show_progress=show_progress, desc=f"epoch {epoch}")
        test_loss, test_acc = evaluate(model, test_loader, loss_fn, device)
        writer.add_scalar("test/loss", test_loss, epoch)
        writer.add_scalar("test/accuracy", test_acc, epoch)
        torch.save(model.state_dict(), path)          # the recommended form: tensors only
        epochs.append(dict(epoch=epoch, test_loss=test_loss, test_accuracy=test_acc,
                           seconds=time.perf_counter() - t0, checkpoint=path))
        print(f"epoch {epoch}: train loss {losses[-1]:.3f} | test loss {test_loss:.3f} | "
              f"test accuracy {test_acc:.1%} | {epochs[-1]['seconds']:.1f} s | {path.name}")
    writer.close()
    k = min(10, len(losses) // 4)                     # a few steps at each end of the run
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"mean of {k} steps: {first:.3f} at the start -> {last:.3f} at the end")
    return dict(losses=losses, epochs=epochs, tensorboard=tb_dir)


def step_2_accuracy_above_chance(history: dict, min_accuracy: float) -> float:
    acc = history["epochs"][-1]["test_accuracy"]
    per_epoch = ", ".join(f"{e['test_accuracy']:.1%}" for e in history["epochs"])
    print(f"test accuracy per epoch: {per_epoch} (chance: 10.0%)")
    check(f"final test accuracy >= {min_accuracy:.0%} (chance is 10%)", acc >= min_accuracy,
          detail=f"{acc:.1%}")
    return acc


def step_3_checkpoint_round_trip(model: nn.Module, history: dict, test_loader,
                                 device: torch.device) -> float:
    last = history["epochs"][-1]
    state = torch.load(last["checkpoint"], map_location=device, weights_only=True)
    fresh = Moli().to(device)                 # rebuild the class, then pour the weights in
    fresh.load_state_dict(state)
    saved = model.state_dict()
    check(f"{last['checkpoint'].name} holds exactly the trained tensors",
          all(torch.equal(state[k], saved[k]) for k in saved) and state.keys() == saved.keys())
    _, acc = evaluate(fresh, test_loader, nn.CrossEntropyLoss(), device)
    n_test = len(test_loader.dataset)
    check(f"one checkpoint per epoch: {len(history['epochs'])} files",
          all(e["checkpoint"].is_file() for e in history["epochs"]))
    # Same weights, same data, same device: identical on the CPU. A GPU may pick another
    # convolution algorithm for the fresh model; allow one image in the test set to flip.
    check("the reloaded model gives the same test accuracy", acc, last["test_accuracy"],
          atol=0.0 if device.type == "cpu" else 1.0 / n_test)
    return acc


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    train_loader, test_loader, is_real = cifar_loaders(args, cfg)
    cfg = REAL if is_real and not args.smoke else cfg     # real CIFAR-10: its own preset
    model = Moli().to(device)
    print(f"model: Moli, {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"{len(train_loader.dataset)} train / {len(test_loader.dataset)} test images | "
          f"{cfg['epochs']} epochs of {len(train_loader)} steps")
    history = step_1_train(model, (train_loader, test_loader), device, cfg, args.out_dir,
                           args.overwrite, show_progress=not args.smoke)
    acc = step_2_accuracy_above_chance(history, cfg["min_accuracy"])
    reloaded = step_3_checkpoint_round_trip(model, history, test_loader, device)
    seconds = sum(e["seconds"] for e in history["epochs"])
    print(f"summary: test accuracy {acc:.1%} after {cfg['epochs']} epochs, {seconds:.1f} s; "
          f"checkpoints and TensorBoard logs in {args.out_dir}")
    return dict(test_accuracy=acc, reloaded_accuracy=reloaded, seconds=seconds,
                losses=history["losses"], epochs=history["epochs"],
                tensorboard=history["tensorboard"], real_data=is_real)


if __name__ == "__main__":
    main()
