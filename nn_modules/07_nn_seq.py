"""nn.Sequential: the spec's Moli CNN, a shape table by formula, and its graph in TensorBoard.

``nn.Sequential`` runs its layers in order, so a whole CNN is one list. The one number you
must work out yourself is the ``in_features`` of the first Linear: the flattened size after
the last pooling. A shape table computed by formula tells you that before anything runs.

Moli:  Conv(3,32,5,p2) MaxPool(2) Conv(32,32,5,p2) MaxPool(2) Conv(32,64,5,p2) MaxPool(2)
       Flatten Linear(1024,64) Linear(64,10)

Claims proven:
  1. The shape after every layer, computed by the conv/pool/flatten formulas, is the shape
     the layer really produces (so Linear's 1024 = 64 * 4 * 4 is right).
  2. On the spec's ``torch.ones((64, 3, 32, 32))`` and on real-shaped images the output is
     (N, 10).
  3. Each layer's parameter count matches its formula; the total is 145,578.
  4. ``add_graph`` wrote the model graph: TensorBoard's own reader finds it in the event file,
     with Moli's 3 convolutions, 3 poolings, 1 flatten and 2 linear layers as nodes.

Run:  python nn_modules/07_nn_seq.py        (about 1 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/07_nn_seq/tb      (the GRAPHS tab)
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_images=64, spec_batch=64)
SMOKE = dict(n_images=8, spec_batch=8)


class Moli(nn.Module):
    """The spec's CIFAR-10 CNN, as one nn.Sequential."""

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


def short_name(layer: nn.Module) -> str:
    """``Conv2d(3,32,k5,p2)``-style names that fit one table column."""
    if isinstance(layer, nn.Conv2d):
        return (f"Conv2d({layer.in_channels},{layer.out_channels},"
                f"k{layer.kernel_size[0]},p{layer.padding[0]})")
    if isinstance(layer, nn.MaxPool2d):
        return f"MaxPool2d({layer.kernel_size})"
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features},{layer.out_features})"
    return type(layer).__name__


def param_formula(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        return layer.out_channels * layer.in_channels * k + layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features + layer.out_features
    return 0                                                        # pooling, flatten: none


def step_1_shape_table(model: Moli, x: torch.Tensor) -> list[tuple]:
    rows, shape, mismatches = [], tuple(x.shape), []
    print(f"{'layer':<20} {'formula shape':<18} {'actual shape':<18} params")
    for layer in model.model1:                        # run layer by layer, as Sequential does
        shape = shape_after(layer, shape)
        x = layer(x)
        n_params = sum(p.numel() for p in layer.parameters())
        rows.append((short_name(layer), shape, tuple(x.shape), n_params))
        print(f"{short_name(layer):<20} {str(shape):<18} {str(tuple(x.shape)):<18} {n_params}")
        if shape != tuple(x.shape):
            mismatches.append(short_name(layer))
    check(f"formula shape == actual shape after all {len(rows)} layers", not mismatches,
          detail=f"mismatch at {mismatches}" if mismatches else "1024 = 64*4*4 into Linear")
    return rows


def step_2_output_shape(model: Moli, images: torch.Tensor, spec_batch: int) -> tuple:
    ones = torch.ones((spec_batch, 3, 32, 32), device=images.device)  # the spec's test input
    out_ones, out_images = model(ones), model(images)
    print(f"model(ones {tuple(ones.shape)}) -> {tuple(out_ones.shape)}; "
          f"model(images {tuple(images.shape)}) -> {tuple(out_images.shape)}")
    check("output is (N, 10) for both inputs",
          out_ones.shape == (spec_batch, 10) and out_images.shape == (images.shape[0], 10))
    return tuple(out_images.shape)


def step_3_parameter_counts(model: Moli) -> int:
    per_layer = [(sum(p.numel() for p in m.parameters()), param_formula(m)) for m in model.model1]
    total = sum(p.numel() for p in model.parameters())
    check("every layer's parameter count == its formula", all(a == b for a, b in per_layer),
          detail=str([a for a, _ in per_layer if a]))
    check("total parameters == 145,578", total == 145_578, detail=f"{total:,}")
    return total


def step_4_graph_to_tensorboard(model: Moli, x: torch.Tensor, out_dir) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.graph_pb2 import GraphDef

    log_dir = out_dir / "tb"
    before = set(log_dir.glob("events.out.tfevents.*"))
    with SummaryWriter(str(log_dir)) as writer, warnings.catch_warnings():
        # add_graph traces the model with torch.jit.trace, which now warns that it is
        # deprecated; the graph it writes is still what TensorBoard shows. Silence only that.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        writer.add_graph(model, x)
    (event_file,) = set(log_dir.glob("events.out.tfevents.*")) - before   # this run's file
    ops: Counter = Counter()
    for event in EventFileLoader(str(event_file)).Load():    # TensorBoard's own reader
        if event.HasField("graph_def"):
            graph = GraphDef.FromString(event.graph_def)
            ops.update(node.op for node in graph.node)
    layers = {op: ops[op] for op in ("aten::_convolution", "aten::max_pool2d",
                                     "aten::flatten", "aten::linear")}
    print(f"graph in {event_file.name}: {sum(ops.values())} nodes; layer ops {layers}")
    check("the event file holds a graph with Moli's 3 convs, 3 pools, 1 flatten, 2 linears",
          list(layers.values()) == [3, 3, 1, 2], detail=str(list(layers.values())))
    return layers


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    images, _ = cifar10_batch(args, cfg["n_images"], device=device)
    model = Moli().to(device)
    with torch.no_grad():                                 # shapes only: no graph to record
        results = {
            "shape_table": step_1_shape_table(model, images),
            "out_shape": step_2_output_shape(model, images, cfg["spec_batch"]),
        }
    results["n_params"] = step_3_parameter_counts(model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results["graph_ops"] = step_4_graph_to_tensorboard(model, images, args.out_dir)
    print(f"summary: Moli maps {tuple(images.shape)} -> {results['out_shape']} with "
          f"{results['n_params']:,} parameters")
    return results


if __name__ == "__main__":
    main()
