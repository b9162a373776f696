"""The Moli CNN and what the three training scripts share: data loaders, train and evaluate.

Not a numbered note: ``training/01_train.py``, ``02_train_gpu_cuda.py`` and
``03_train_gpu_device.py`` import it (``from model import Moli, train_one_epoch, ...``; running
``python training/01_train.py`` puts ``training/`` on ``sys.path``). Importing it prints nothing
and touches no device.

Moli is the spec's network, kept exactly as the lesson: three 5x5 convolutions (padding 2 keeps
the size), each followed by a 2x2 max-pool, then two linear layers. It has no activation
function: max-pooling is its only non-linearity. A modern CNN would put a ReLU after each
convolution; we keep the spec's layers so the scripts match the lesson they come from.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from torchnotes import progress
from torchnotes.datasets import SyntheticCIFAR10, cifar10, data_source


class Moli(nn.Module):
    """(B, 3, 32, 32) images -> (B, 10) class scores (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),   # (B, 32, 32, 32)
            nn.MaxPool2d(2),                  # (B, 32, 16, 16)
            nn.Conv2d(32, 32, 5, padding=2),  # (B, 32, 16, 16)
            nn.MaxPool2d(2),                  # (B, 32, 8, 8)
            nn.Conv2d(32, 64, 5, padding=2),  # (B, 64, 8, 8)
            nn.MaxPool2d(2),                  # (B, 64, 4, 4)
            nn.Flatten(),                     # (B, 1024)
            nn.Linear(64 * 4 * 4, 64),        # (B, 64)
            nn.Linear(64, 10),                # (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def cifar_loaders(args, cfg: dict) -> tuple[DataLoader, DataLoader, bool]:
    """Train and test loaders over CIFAR-10 (real if present) or the stand-in; ``is_real``.

    ``args`` carries the data flags (``--data``, ``--data-root``, ``--download``, ``--smoke``)
    and ``--seed``; ``cfg`` the sizes: ``train_size``/``test_size`` (``None``: the whole split,
    CIFAR-10 50,000/10,000, stand-in 10,000/2,000) and ``batch_size``.
    """
    to_tensor = transforms.ToTensor()           # PIL (32, 32) RGB -> float (3, 32, 32) in [0,1]
    common = dict(source=data_source(args), root=args.data_root, seed=args.seed,
                  download=args.download)
    train_set = cifar10(True, to_tensor, size=cfg["train_size"], **common)
    test_set = cifar10(False, to_tensor, size=cfg["test_size"], verbose=False, **common)
    # A seeded generator: the same --seed gives the same batches in the same order.
    shuffle_gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True,
                              generator=shuffle_gen)
    test_loader = DataLoader(test_set, batch_size=256)
    return train_loader, test_loader, not isinstance(train_set, SyntheticCIFAR10)


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, *,
                    max_steps: int | None = None, on_step=None, show_progress: bool = True,
                    desc: str = "train") -> list[float]:
    """One pass over ``loader``; returns the loss of every step.

    ``on_step(loss)`` is called after each step (the scripts log it to TensorBoard);
    ``max_steps`` caps the pass (every loop has a step cap).
    """
    model.train()                   # Dropout/BatchNorm in training mode (Moli has neither: habit)
    losses = []
    total = len(loader) if max_steps is None else min(max_steps, len(loader))
    for step, (imgs, targets) in enumerate(progress(loader, desc=desc, total=total,
                                                    enabled=show_progress)):
        if step == total:
            break
        imgs, targets = imgs.to(device), targets.to(device)   # (B, 3, 32, 32), (B,)
        loss = loss_fn(model(imgs), targets)                  # () mean over the batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(losses[-1])
    return losses


def evaluate(model: nn.Module, loader, loss_fn: nn.Module,
             device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader``, with no graph recorded."""
    model.eval()                    # Dropout/BatchNorm in evaluation mode
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():                       # no graph: less memory, faster
        for imgs, targets in loader:
            imgs, targets = imgs.to(device), targets.to(device)
            logits = model(imgs)                                       # (B, 10)
            loss_sum += loss_fn(logits, targets).item() * len(targets)
            correct += (logits.argmax(dim=1) == targets).sum().item()
            seen += len(targets)
    return loss_sum / seen, correct / seen
