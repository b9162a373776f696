"""The Moli CNN (the spec's ``model.py``) and the CIFAR-10 loaders the training scripts share.

Not a numbered note: ``training/01_train.py``, ``02_train_gpu_cuda.py`` and
``03_train_gpu_device.py`` import it (``from model import Moli, cifar_loaders``; running
``python training/01_train.py`` puts ``training/`` on ``sys.path``). Each of them writes its own
training loop; ``evaluate`` serves the later notes (04, DDP) whose lesson is elsewhere.
Importing it prints nothing and touches no device.

Moli is the spec's network, kept exactly as the lesson: three 5x5 convolutions (padding 2 keeps
the size), each followed by a 2x2 max-pool, then two linear layers. It has no activation
function: max-pooling is its only non-linearity. A modern CNN would put a ReLU after each
convolution; we keep the spec's layers so the scripts match the lesson they come from.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from torchnotes.datasets import SyntheticCIFAR10, data_root, torchvision_errors, use_real


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


def run_settings(args) -> dict:
    """What makes two runs one run: the preset (smoke, full, or real CIFAR-10's) and the seed
    (initial weights, data order). Saved in each checkpoint; --resume refuses other ones."""
    preset = "smoke" if args.smoke else ("real" if use_real(args, verbose=False) else "full")
    return {"preset": preset, "seed": args.seed}


def cifar_loaders(args, cfg: dict, *, pin_memory: bool = False
                  ) -> tuple[DataLoader, DataLoader, bool]:
    """Train and test loaders over CIFAR-10 (real if present) or the stand-in; ``is_real``.

    ``args`` carries the data flags (``--data``, ``--data-root``, ``--download``, ``--smoke``)
    and ``--seed``; ``cfg`` the sizes: ``train_size``/``test_size`` (``None``: the whole split,
    CIFAR-10 50,000/10,000, stand-in 10,000/2,000) and ``batch_size``. ``pin_memory``: page-
    locked batches, so a copy to a GPU can overlap compute (``non_blocking=True``).
    """
    to_tensor = transforms.ToTensor()           # PIL (32, 32) RGB -> float (3, 32, 32) in [0,1]
    is_real = use_real(args)                    # prints which data this run uses
    if is_real:
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            train_set = torchvision.datasets.CIFAR10(root, train=True, transform=to_tensor,
                                                     download=args.download)
            test_set = torchvision.datasets.CIFAR10(root, train=False, transform=to_tensor,
                                                    download=args.download)
        if cfg["train_size"] is not None:       # smaller presets: the first N images
            train_set = Subset(train_set, range(min(cfg["train_size"], len(train_set))))
        if cfg["test_size"] is not None:
            test_set = Subset(test_set, range(min(cfg["test_size"], len(test_set))))
    else:                                       # the stand-in: same interface, no download
        train_set = SyntheticCIFAR10(train=True, transform=to_tensor, size=cfg["train_size"],
                                     seed=args.seed)
        test_set = SyntheticCIFAR10(train=False, transform=to_tensor, size=cfg["test_size"],
                                    seed=args.seed)
    # A seeded generator: the same --seed gives the same batches in the same order. Its state
    # goes into every checkpoint, so a resumed run draws the batches the lost run would have.
    shuffle_gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True,
                              generator=shuffle_gen, pin_memory=pin_memory)
    test_loader = DataLoader(test_set, batch_size=256, pin_memory=pin_memory)
    return train_loader, test_loader, is_real


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
