"""GPU training the ``.cuda()`` way: move the model, the loss and every batch with ``.cuda()``.

The style of many older tutorials. ``.cuda()`` crashes on a machine without CUDA, so each call
has to sit behind the same ``if`` on ``torch.cuda.is_available()``; forget one and the script
no longer runs on a laptop. ``training/03_train_gpu_device.py`` replaces all those ``if``s
with one ``device`` variable: prefer that. (``--device cpu`` turns the ``if``s off on a GPU
machine too.) GPU work is queued asynchronously, so each epoch's
timing waits for the GPU (``torch.cuda.synchronize()``) before it reads the clock.

Claims proven:
  1. Without CUDA, an unguarded ``.cuda()`` fails: that is why every call sits behind the
     ``if``. With CUDA the model's parameters and every batch are on the GPU.
  2. The training loss goes down; evaluation under ``torch.no_grad()`` records no graph.
  3. Test accuracy is far above chance (10 classes: 10%).

Run:  python training/02_train_gpu_cuda.py    (28 s measured on a busy 2-core CPU, one thread)
"""

from __future__ import annotations

import time

import torch
from model import Moli, cifar_loaders
from torch import nn

from torchnotes import check, check_raises, make_parser, progress, start
from torchnotes.datasets import add_data_args

# None = the whole split: 10,000 train / 2,000 test images of the stand-in.
FULL = dict(train_size=None, test_size=None, epochs=2, batch_size=64, lr=1e-3,
            min_accuracy=0.80)
SMOKE = dict(train_size=512, test_size=256, epochs=2, batch_size=32, lr=1e-3,
             min_accuracy=0.30)
REAL = dict(FULL, min_accuracy=0.35)       # real CIFAR-10 is much harder than the stand-in


def train_epoch_cuda_style(model: nn.Module, loader, loss_fn: nn.Module, optimizer,
                           use_cuda: bool, show_progress: bool) -> tuple[list[float], set]:
    model.train()
    losses, batch_devices = [], set()
    for imgs, targets in progress(loader, desc="train", enabled=show_progress):
        if use_cuda:                                  # every .cuda() needs this guard
            imgs = imgs.cuda()
            targets = targets.cuda()
        batch_devices.add(imgs.device.type)
        loss = loss_fn(model(imgs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, batch_devices


def evaluate_cuda_style(model: nn.Module, loader, use_cuda: bool) -> tuple[float, bool]:
    """Test accuracy, and whether any output carried a graph (it must not)."""
    model.eval()
    correct, graph = 0, False
    with torch.no_grad():                             # evaluation: no graph, less memory
        for imgs, targets in loader:
            if use_cuda:
                imgs = imgs.cuda()
                targets = targets.cuda()
            outputs = model(imgs)
            graph |= outputs.requires_grad
            correct += (outputs.argmax(dim=1) == targets).sum().item()
    return correct / len(loader.dataset), graph


def unguarded_cuda() -> None:
    try:
        torch.zeros(1).cuda()                         # what a forgotten `if` runs
    except AssertionError as err:                     # a CPU-only build of torch says it so
        raise RuntimeError(str(err)) from None


def step_1_move_with_cuda(use_cuda: bool,
                          selected: torch.device | None = None) -> tuple[nn.Module, nn.Module]:
    model, loss_fn = Moli(), nn.CrossEntropyLoss()
    if use_cuda:
        model = model.cuda()                          # parameters -> the current GPU
        loss_fn = loss_fn.cuda()                      # (no parameters, but the habit)
        print(f"CUDA: training on {torch.cuda.get_device_name()}")
        where = {p.device.type for p in model.parameters()}
        check("the model's parameters are all on cuda", where == {"cuda"},
              detail=f"found on {sorted(where)}")
        return model, loss_fn
    if selected is not None and selected.type == "mps":
        print("MPS selected: this .cuda() lesson cannot use MPS, so it trains on the CPU; "
              "03_train_gpu_device.py runs on MPS")
    else:
        print("no CUDA here (or --device cpu): every .cuda() call is skipped; "
              "training on the CPU")
    if not torch.cuda.is_available():
        check_raises("without CUDA an unguarded .cuda() fails: every call needs the `if`",
                     RuntimeError, unguarded_cuda)
    return model, loss_fn


def step_2_train_timed(model, loss_fn, loaders, use_cuda: bool, cfg: dict,
                       show_progress: bool) -> dict:
    train_loader, test_loader = loaders
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    losses, devices, epochs, graph = [], set(), [], False
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        epoch_losses, seen = train_epoch_cuda_style(model, train_loader, loss_fn, optimizer,
                                                    use_cuda, show_progress)
        if use_cuda:
            torch.cuda.synchronize()                  # wait for the queued GPU work
        seconds = time.perf_counter() - t0
        acc, had_graph = evaluate_cuda_style(model, test_loader, use_cuda)
        losses += epoch_losses
        devices |= seen
        graph |= had_graph
        epochs.append(dict(epoch=epoch, seconds=seconds, test_accuracy=acc))
        print(f"epoch {epoch}: {seconds:.2f} s | train loss {epoch_losses[-1]:.3f} | "
              f"test accuracy {acc:.1%}")
    if use_cuda:                                      # on a CPU this could not be false
        check("every batch was on cuda", devices == {"cuda"}, detail=f"seen: {sorted(devices)}")
    check("under torch.no_grad() the test outputs carried no graph", not graph)
    k = min(10, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"mean of {k} steps: {first:.3f} -> {last:.3f}")
    return dict(losses=losses, epochs=epochs)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    use_cuda = torch.cuda.is_available() and device.type == "cuda"
    if use_cuda and device.index is not None:
        torch.cuda.set_device(device)                 # which GPU a bare .cuda() means
    cfg = SMOKE if args.smoke else FULL
    train_loader, test_loader, is_real = cifar_loaders(args, cfg)
    cfg = REAL if is_real and not args.smoke else cfg     # real CIFAR-10: its own preset
    model, loss_fn = step_1_move_with_cuda(use_cuda, device)
    history = step_2_train_timed(model, loss_fn, (train_loader, test_loader), use_cuda, cfg,
                                 show_progress=not args.smoke)
    acc = history["epochs"][-1]["test_accuracy"]
    check(f"final test accuracy >= {cfg['min_accuracy']:.0%} (chance is 10%)",
          acc >= cfg["min_accuracy"], detail=f"{acc:.1%}")
    per_epoch = sum(e["seconds"] for e in history["epochs"]) / len(history["epochs"])
    print(f"summary: {'cuda' if use_cuda else 'cpu'}, {per_epoch:.2f} s per epoch, "
          f"test accuracy {acc:.1%}")
    return dict(use_cuda=use_cuda, seconds_per_epoch=per_epoch, test_accuracy=acc, **history)


if __name__ == "__main__":
    main()
