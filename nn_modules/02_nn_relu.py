"""ReLU and Sigmoid: the formulas, in-place ReLU, and what they do to a batch of images.

Activations are element-wise functions with no parameters: ``ReLU(x) = max(x, 0)`` and
``Sigmoid(x) = 1 / (1 + e^-x)``. ``inplace=True`` writes the result into the input's memory
(saves an allocation, destroys the input). On images in [0, 1] ReLU does nothing at all; it
only bites once the images are normalised to be centred on zero.

Claims proven:
  1. ``nn.ReLU`` equals ``max(x, 0)`` (the spec's 2x2 example and a random tensor).
  2. ``nn.Sigmoid`` equals ``1 / (1 + exp(-x))``.
  3. ``ReLU(inplace=True)`` returns the input's own storage (same ``data_ptr``) and modifies
     the input; ``inplace=False`` leaves the input untouched.
  4. On images in [0, 1], ReLU is the identity and Sigmoid squeezes them into [0.5, 0.731].
  5. On images normalised to [-1, 1], ReLU zeroes exactly the pixels darker than 0.5.
  The batch and both activations are written to TensorBoard (``--out-dir``/tb) and a PNG grid.

Run:  python nn_modules/02_nn_relu.py        (about 1 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/02_nn_relu/tb
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from torchnotes import check, make_parser, start
from torchnotes.datasets import add_data_args, cifar10_batch

FULL = dict(n_images=64)
SMOKE = dict(n_images=8)


def step_1_relu_is_max_with_zero(device: torch.device) -> float:
    x = torch.tensor([[1.0, -0.5], [-1.0, 3.0]], device=device).reshape(-1, 1, 2, 2)  # spec
    out = nn.ReLU()(x)
    print(f"spec input  {x.flatten().tolist()} -> ReLU {out.flatten().tolist()}")
    check("ReLU(spec 2x2) == max(x, 0)", out, torch.where(x > 0, x, torch.zeros_like(x)))
    r = torch.randn(1000, device=device)
    return check("ReLU(random) == max(x, 0)", nn.ReLU()(r), r.clamp_min(0.0))


def step_2_sigmoid_formula(device: torch.device) -> float:
    x = torch.linspace(-6, 6, 13, device=device)
    out = nn.Sigmoid()(x)
    print(f"Sigmoid at -6, 0, 6: {out[0].item():.4f}, {out[6].item():.4f}, {out[-1].item():.4f}")
    # float32 exp and division: a few ulps of values <= 1.
    return check("Sigmoid(x) == 1 / (1 + exp(-x))", out, 1 / (1 + torch.exp(-x)), atol=1e-6)


def step_3_inplace_shares_storage(device: torch.device) -> dict:
    x = torch.tensor([-1.0, 2.0, -3.0], device=device)
    copy_out = nn.ReLU(inplace=False)(x)
    print(f"inplace=False: input after = {x.tolist()}, output = {copy_out.tolist()}")
    check("inplace=False: a new tensor, the input is unchanged",
          copy_out.data_ptr() != x.data_ptr() and x.tolist() == [-1.0, 2.0, -3.0])
    same_out = nn.ReLU(inplace=True)(x)
    print(f"inplace=True : input after = {x.tolist()}, output = {same_out.tolist()}")
    check("inplace=True: the output IS the input's storage (same data_ptr)",
          same_out.data_ptr() == x.data_ptr())
    check("inplace=True: the input itself was overwritten with ReLU(input)", x,
          torch.tensor([0.0, 2.0, 0.0], device=device))
    return {"inplace_same_ptr": same_out.data_ptr() == x.data_ptr()}


def step_4_on_images(images: torch.Tensor) -> dict:
    relu, sig = nn.ReLU()(images), nn.Sigmoid()(images)          # (N, 3, 32, 32) each
    print(f"images in [{images.min().item():.3f}, {images.max().item():.3f}]; "
          f"Sigmoid(images) in [{sig.min().item():.3f}, {sig.max().item():.3f}]")
    check("ReLU leaves images in [0, 1] exactly unchanged", relu, images, atol=0.0)
    lo, hi = 0.5, 1 / (1 + math.exp(-1))                         # sigmoid(0), sigmoid(1)
    check("Sigmoid maps [0, 1] into [0.5, 0.731]",
          bool(sig.min() >= lo) and bool(sig.max() <= hi + 1e-6),
          detail=f"[{sig.min().item():.4f}, {sig.max().item():.4f}]")
    centred = (images - 0.5) / 0.5                               # what Normalize(0.5, 0.5) does
    relu_c = nn.ReLU()(centred)
    zeroed, dark = int((relu_c == 0).sum()), int((images <= 0.5).sum())
    print(f"after normalising to [-1, 1]: ReLU zeroed {zeroed} of {images.numel()} values")
    # Element by element, not just the counts: the zeroed positions ARE the dark ones.
    check("on centred images ReLU zeroes exactly the pixels <= 0.5",
          torch.equal(relu_c == 0, images <= 0.5), detail=f"{zeroed} zeroed, {dark} dark")
    return {"sigmoid": sig, "relu_centred": relu_c, "fraction_zeroed": zeroed / images.numel()}


def step_5_write_visuals(images: torch.Tensor, acts: dict, out_dir) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(out_dir / "tb")) as writer:
        writer.add_images("input", images, 0)                     # (N, 3, H, W) in [0, 1]
        writer.add_images("sigmoid", acts["sigmoid"], 0)
        writer.add_images("relu_of_centred", acts["relu_centred"], 0)   # already in [0, 1]
    png = out_dir / "relu_sigmoid_grid.png"   # regenerated from the seed on every run
    k = min(16, images.shape[0])                                  # 16 columns stay readable
    rows = torch.cat([images[:k], acts["sigmoid"][:k], acts["relu_centred"][:k]])
    save_image(rows, png, nrow=k)                    # rows: input, sigmoid, relu(centred)
    print(f"wrote TensorBoard images to {out_dir / 'tb'} and {png}")
    return str(png)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "relu_error": step_1_relu_is_max_with_zero(device),
        "sigmoid_error": step_2_sigmoid_formula(device),
        "inplace": step_3_inplace_shares_storage(device),
    }
    images = cifar10_batch(args, cfg["n_images"], device=device)[0]
    acts = step_4_on_images(images)
    results["fraction_zeroed"] = acts["fraction_zeroed"]
    results["png"] = step_5_write_visuals(images.cpu(), {k: v.cpu() for k, v in acts.items()
                                                         if k != "fraction_zeroed"}, args.out_dir)
    print(f"summary: ReLU zeroed {results['fraction_zeroed']:.1%} of the centred pixels")
    return results


if __name__ == "__main__":
    main()
