"""A full CNN + CrossEntropyLoss + backward(): where every gradient comes from.

The loss of a batch is one number; ``loss.backward()`` sends its derivative back through
every layer and leaves ``d loss / d parameter`` in each parameter's ``.grad``, with the
parameter's own shape. That is all an optimiser needs (next script).

Claims proven:
  1. Before ``backward()`` no parameter has a gradient; after it every parameter has a finite,
     non-zero ``.grad`` of exactly its own shape.
  2. An untrained 10-class network scores about ln(10) = 2.303: its predictions are near
     uniform (a quick sanity check for any new classifier).
  3. The gradient reaching the logits is ``(softmax(z) - onehot(y)) / N`` (closed form).
  4. A finite-difference probe in float64, ``(L(w + h) - L(w - h)) / 2h``, agrees with
     autograd's gradient for the first conv's bias and entries of both linear layers.

Run:  python nn_modules/09_nn_loss_network.py        (about 2 s after imports on a laptop CPU)
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from torchnotes import check, float64_device, make_parser, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_images=640, batch_size=64, probe_images=8)
SMOKE = dict(n_images=64, batch_size=8, probe_images=4)


# The same network as 07_nn_seq.py and training/model.py, kept inline so the script stands alone.
class Moli(nn.Module):
    """The CIFAR-10 CNN of 07_nn_seq.py (see there for its shape table)."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2),       # (N, 32, 16, 16)
            nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),      # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),      # (N, 64, 4, 4)
            nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10),  # (N, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model1(x)


def load_test_set(args, n_images: int):
    """CIFAR-10's test split as tensors: the real files when present, else the stand-in."""
    transform = torchvision.transforms.ToTensor()
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            return torchvision.datasets.CIFAR10(root, train=False, transform=transform,
                                                download=args.download)
    return SyntheticCIFAR10(train=False, transform=transform, size=n_images, seed=args.seed)


def step_1_every_parameter_gets_a_gradient(model: Moli, images, labels) -> dict:
    before = [name for name, p in model.named_parameters() if p.grad is not None]
    logits = model(images)                                          # (N, 10)
    logits.retain_grad()                    # keep d loss / d logits (not a leaf) for step 3
    loss = nn.CrossEntropyLoss()(logits, labels)                    # () one number
    loss.backward()
    bad = [name for name, p in model.named_parameters()
           if p.grad is None or p.grad.shape != p.shape or not torch.isfinite(p.grad).all()
           or p.grad.abs().sum() == 0]
    for name, p in list(model.named_parameters())[:2]:
        print(f"{name:<22} param {str(tuple(p.shape)):<16} grad {tuple(p.grad.shape)}")
    n_tensors = len(list(model.parameters()))
    n_numbers = sum(p.numel() for p in model.parameters())
    check("before backward() no parameter has a .grad", not before, detail=f"{before}")
    check(f"after backward() all {n_tensors} parameter tensors ({n_numbers:,} numbers) have a "
          f"finite, non-zero grad of their own shape", not bad, detail=f"bad: {bad}" if bad else "")
    return {"loss": loss, "logits": logits}


def step_2_untrained_loss_is_ln10(loss: torch.Tensor) -> float:
    print(f"loss of the untrained network: {loss.item():.4f}; ln(10) = {math.log(10):.4f}")
    # Default init keeps each image's logits within about +-0.2 of their mean (std ~0.1) on
    # images in [0, 1], so softmax is near 1/10 everywhere: the loss moves off ln(10) by
    # about the logits' variance, a few hundredths; 0.15 is a generous bound.
    check("untrained loss ~= ln(10): near-uniform predictions", abs(loss.item() - math.log(10))
          < 0.15, detail=f"|{loss.item():.4f} - 2.3026|")
    return loss.item()


def step_3_logit_gradient(logits: torch.Tensor, labels: torch.Tensor) -> float:
    n = logits.shape[0]
    expected = (F.softmax(logits.detach(), dim=1) - F.one_hot(labels, 10)) / n   # (N, 10)
    # float32 softmax of values ~0.1, divided by N: errors of a few ulps of 1/N.
    return check("d loss / d logits == (softmax(z) - onehot(y)) / N", logits.grad, expected,
                 atol=1e-7)


def step_4_finite_difference_probe(model: Moli, images, labels, device,
                                   probe_images: int = 8) -> dict:
    # float64 makes the central difference accurate to ~1e-9; MPS has no float64, use the CPU.
    probe_device = float64_device(device)
    m64 = copy.deepcopy(model).to(probe_device, torch.float64)
    # uint8 images have flat patches, so pooling windows hold exact ties: points where the
    # loss has a kink and the difference quotient is not the gradient. Noise breaks the ties.
    # A few images keep the six float64 passes quick and the number of pooling choices small.
    x64 = images[:probe_images].to(probe_device, torch.float64)
    x64 = x64 + 0.01 * torch.randn(x64.shape, dtype=torch.float64, device=probe_device)
    y = labels[:probe_images].to(probe_device)
    m64.zero_grad()
    nn.CrossEntropyLoss()(m64(x64), y).backward()
    h, out = 1e-7, {}
    # A conv *weight* nudge moves every output of its channel by a different amount, so with
    # ~10^6 pooling comparisons some pick flips even with noise; a conv *bias* shifts the whole
    # channel alike and keeps the picks. So we probe the first conv's bias (its gradient
    # crosses every conv and pool) and two linear entries (after all pooling: smooth).
    for name, index in (("model1.0.bias", (0,)), ("model1.7.weight", (0, 0)),
                        ("model1.8.bias", (3,))):
        p = dict(m64.named_parameters())[name]
        with torch.no_grad():                                   # nudge one number by +-h
            p[index] += h
            up = nn.CrossEntropyLoss()(m64(x64), y).item()
            p[index] -= 2 * h
            down = nn.CrossEntropyLoss()(m64(x64), y).item()
            p[index] += h                                       # put it back
        numeric, autograd = (up - down) / (2 * h), p.grad[index].item()
        print(f"{name}{list(index)}: finite difference {numeric:+.8f}, autograd {autograd:+.8f}")
        # Central difference: truncation O(h^2) ~ 1e-14, rounding ~ eps * L / h ~ 1e-9.
        check(f"finite difference == autograd for {name}{list(index)}", numeric, autograd,
              atol=1e-7)
        out[name] = (numeric, autograd)
    return out


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])
    imgs, targets = next(iter(loader))                # one batch: (B, 3, 32, 32), (B,)
    images, labels = imgs.to(device), targets.to(device)
    model = Moli().to(device)
    out = step_1_every_parameter_gets_a_gradient(model, images, labels)
    results = {
        "loss": step_2_untrained_loss_is_ln10(out["loss"]),
        "logit_grad_error": step_3_logit_gradient(out["logits"], labels),
        "probes": step_4_finite_difference_probe(model, images, labels, device,
                                                 cfg["probe_images"]),
    }
    print(f"summary: loss {results['loss']:.4f}; every gradient has its parameter's shape")
    return results


if __name__ == "__main__":
    main()
