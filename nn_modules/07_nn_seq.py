"""nn.Sequential: the same CNN written layer by layer and as one list, plus its graph.

A model can name every layer and call them one by one in ``forward`` (``MoliExplicit``), or
put them in an ``nn.Sequential`` that runs them in order (``Moli``): less code, same network.
The one number you must work out yourself is the ``in_features`` of the first Linear: the
flattened size after the last pooling. A shape table computed by formula gives it.

Moli:  Conv(3,32,5,p2) MaxPool(2) Conv(32,32,5,p2) MaxPool(2) Conv(32,64,5,p2) MaxPool(2)
       Flatten Linear(1024,64) Linear(64,10)

Claims proven:
  1. The shape after every layer, computed by the conv/pool/flatten formulas, is the shape
     the layer really produces (so Linear's 1024 = 64 * 4 * 4 is right).
  2. With the same weights, the explicit-forward class and the ``nn.Sequential`` give the
     same outputs (bit-identical on the CPU): Sequential is only a shorter way to write it.
  3. On ``torch.ones((64, 3, 32, 32))`` and on every batch of the CIFAR-10 loader the output
     is (B, 10).
  4. The parameter count is 2432 + 25632 + 51264 + 65600 + 650 = 145,578 (by hand, per layer).
  ``writer.add_graph(model, x)`` writes the graph for TensorBoard's GRAPHS tab (the tests read
  it back: 3 convolutions, 3 poolings, 1 flatten, 2 linear layers).

Run:  python nn_modules/07_nn_seq.py        (about 3 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/07_nn_seq/tb      (the GRAPHS tab)
"""

from __future__ import annotations

import math
import warnings

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from torchnotes import check, make_parser, output_folder, start
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_images=640, batch_size=64, max_steps=10, ones_batch=64)
SMOKE = dict(n_images=32, batch_size=16, max_steps=2, ones_batch=8)


class MoliExplicit(nn.Module):
    """Every layer named, ``forward`` calls them one by one."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.maxpool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.maxpool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(1024, 64)
        self.linear2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv2(x))
        x = self.maxpool3(self.conv3(x))
        return self.linear2(self.linear1(self.flatten(x)))


class Moli(nn.Module):
    """The same network as one nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),     # (N, 32, 32, 32)  padding 2 keeps 32x32 for k=5
            nn.MaxPool2d(2),                    # (N, 32, 16, 16)
            nn.Conv2d(32, 32, 5, padding=2),    # (N, 32, 16, 16)
            nn.MaxPool2d(2),                    # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 5, padding=2),    # (N, 64, 8, 8)
            nn.MaxPool2d(2),                    # (N, 64, 4, 4)
            nn.Flatten(),                       # (N, 1024)
            nn.Linear(1024, 64),                # (N, 64)
            nn.Linear(64, 10),                  # (N, 10)
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


def shape_after(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``layer`` for an input ``shape``, by formula (no tensor runs)."""
    if isinstance(layer, nn.Conv2d):
        n, _, h, w = shape
        (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
        return (n, layer.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if isinstance(layer, nn.MaxPool2d):
        n, c, h, w = shape
        k, s = layer.kernel_size, layer.stride or layer.kernel_size
        return (n, c, (h - k) // s + 1, (w - k) // s + 1)           # padding 0, floor mode
    if isinstance(layer, nn.Flatten):
        return (shape[0], math.prod(shape[1:]))
    if isinstance(layer, nn.Linear):
        return (*shape[:-1], layer.out_features)
    raise TypeError(f"no shape formula for {type(layer).__name__}")


def step_1_shape_table(model: Moli, x: torch.Tensor) -> list[tuple]:
    rows, shape, mismatches = [], tuple(x.shape), []
    print(f"{'layer':<10} {'formula shape':<18} {'actual shape':<18}")
    for layer in model.model1:                        # run layer by layer, as Sequential does
        shape = shape_after(layer, shape)
        x = layer(x)
        name = type(layer).__name__
        rows.append((name, shape, tuple(x.shape)))
        print(f"{name:<10} {str(shape):<18} {str(tuple(x.shape)):<18}")
        if shape != tuple(x.shape):
            mismatches.append(name)
    check(f"formula shape == actual shape after all {len(rows)} layers", not mismatches,
          detail=f"mismatch at {mismatches}" if mismatches else "1024 = 64*4*4 into Linear")
    return rows


def step_2_explicit_equals_sequential(explicit: MoliExplicit, model: Moli,
                                      x: torch.Tensor) -> float:
    # Both register their layers in the same order, so the state_dicts line up one to one:
    # copy the explicit model's tensors into the Sequential under its own key names.
    model.load_state_dict(dict(zip(model.state_dict(), explicit.state_dict().values(),
                                   strict=True)))
    print(f"keys: {list(explicit.state_dict())[:2]} ... vs {list(model.state_dict())[:2]} ...")
    # Same kernels on the same numbers in the same order: bit-identical on the CPU; another
    # device may choose its convolution algorithm per call, so allow float32 rounding there.
    atol = 0.0 if x.device.type == "cpu" else 1e-5
    return check("explicit forward(x) == Sequential(x), same weights", explicit(x), model(x),
                 atol=atol)


def step_3_output_shapes(model: Moli, loader, device, ones_batch: int, max_steps: int) -> list:
    ones = torch.ones((ones_batch, 3, 32, 32), device=device)
    print(f"model(torch.ones({tuple(ones.shape)})) -> {tuple(model(ones).shape)}")
    shapes = []
    for step, (imgs, _) in enumerate(loader):
        if step == max_steps:
            break
        shapes.append((imgs.shape[0], tuple(model(imgs.to(device)).shape)))
    check(f"output is (B, 10) for the ones and for all {len(shapes)} loader batches",
          model(ones).shape == (ones_batch, 10) and all(o == (b, 10) for b, o in shapes),
          detail=f"last batch {shapes[-1][1]}")
    return shapes


def step_4_parameter_count(model: Moli) -> int:
    total = sum(p.numel() for p in model.parameters())
    # weights + biases: conv k*k*in*out + out, linear in*out + out
    by_hand = ((5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 32 + 32) + (5 * 5 * 32 * 64 + 64)
               + (1024 * 64 + 64) + (64 * 10 + 10))           # 2432+25632+51264+65600+650
    print(f"parameters: {total:,}")
    check("total parameters == 145,578, added up by hand per layer", total == by_hand,
          detail=f"{total:,} vs {by_hand:,}")
    return total


def step_5_graph_to_tensorboard(model: Moli, x: torch.Tensor, out_dir) -> None:
    with SummaryWriter(str(output_folder(out_dir, "tb"))) as writer, warnings.catch_warnings():
        # add_graph traces the model with torch.jit.trace, which now warns that it is
        # deprecated; the graph it writes is still what TensorBoard shows. Silence only that.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        writer.add_graph(model, x)
    print(f"graph written to {out_dir / 'tb'} (TensorBoard's GRAPHS tab)")


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])
    images = next(iter(loader))[0].to(device)                    # (B, 3, 32, 32)
    model, explicit = Moli().to(device), MoliExplicit().to(device)
    with torch.no_grad():                                 # shapes and values: no graph needed
        results = {
            "shape_table": step_1_shape_table(model, images),
            "explicit_error": step_2_explicit_equals_sequential(explicit, model, images),
            "shapes": step_3_output_shapes(model, loader, device, cfg["ones_batch"],
                                           cfg["max_steps"]),
        }
    results["n_params"] = step_4_parameter_count(model)
    step_5_graph_to_tensorboard(model, images, args.out_dir)
    print(f"summary: Moli maps {tuple(images.shape)} -> (B, 10) with "
          f"{results['n_params']:,} parameters")
    return results


if __name__ == "__main__":
    main()
