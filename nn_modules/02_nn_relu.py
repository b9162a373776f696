"""ReLU and Sigmoid as layers of a Module, run batch by batch over CIFAR-10 into TensorBoard.

Activations are element-wise functions with no parameters: ``ReLU(x) = max(x, 0)`` and
``Sigmoid(x) = 1 / (1 + e^-x)``. Like any layer they live inside an ``nn.Module``. On images in
[0, 1] ReLU does nothing at all; it only bites once the images are centred on zero.
``inplace=True`` writes the result into the input's memory (saves an allocation, destroys the
input).

Claims proven:
  1. ``nn.ReLU`` is ``max(x, 0)``: a 2x2 example gives the values worked out by hand, and a
     random tensor equals ``clamp_min(0)``.
  2. ``nn.Sigmoid`` equals ``1 / (1 + exp(-x))``; the wrapping Module has no parameters.
  3. ``ReLU(inplace=True)`` returns the input's own storage and overwrites the input;
     ``inplace=False`` leaves the input untouched.
  4. Over every batch of the loader: ReLU is the identity on images in [0, 1], Sigmoid squeezes
     them into [0.5, 0.731], and on images centred to [-1, 1] ReLU zeroes exactly the pixels
     darker than 0.5.
  Each batch and both activations go to TensorBoard at that batch's step (``--out-dir``/tb).

Run:  python nn_modules/02_nn_relu.py        (about 3 s after imports on a laptop CPU)
      tensorboard --logdir runs/nn_modules/02_nn_relu/tb
"""

from __future__ import annotations

import math

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

FULL = dict(n_images=640, batch_size=64, max_steps=10)     # 10 logged steps
SMOKE = dict(n_images=64, batch_size=16, max_steps=4)


class Moli(nn.Module):
    """Both activations as layers; forward returns ReLU(x) and Sigmoid(x)."""

    def __init__(self):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.sigmoid1 = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relu1(x), self.sigmoid1(x)              # same shape as x, each


def load_test_set(args, n_images: int):
    """CIFAR-10's test split as tensors: the real files when present, else the stand-in."""
    transform = torchvision.transforms.ToTensor()           # PIL (H, W, 3) -> (3, H, W) in [0,1]
    if use_real(args, "CIFAR-10"):
        root = args.data_root or data_root()
        with torchvision_errors("CIFAR-10", root, args.download):
            return torchvision.datasets.CIFAR10(root, train=False, transform=transform,
                                                download=args.download)
    return SyntheticCIFAR10(train=False, transform=transform, size=n_images, seed=args.seed)


def step_1_relu_is_max_with_zero(moli: Moli, device: torch.device) -> float:
    x = torch.tensor([[1.0, -0.5], [-1.0, 3.0]], device=device).reshape(-1, 1, 2, 2)  # (1,1,2,2)
    relu, _ = moli(x)
    print(f"input {x.flatten().tolist()} -> ReLU {relu.flatten().tolist()}")
    check("ReLU([[1, -0.5], [-1, 3]]) == [[1, 0], [0, 3]] (worked by hand)", relu.flatten(),
          torch.tensor([1.0, 0.0, 0.0, 3.0]))
    r = torch.randn(1000, device=device)
    return check("ReLU(random) == clamp_min(x, 0)", moli(r)[0], r.clamp_min(0.0))


def step_2_sigmoid_formula(moli: Moli, device: torch.device) -> float:
    x = torch.linspace(-6, 6, 13, device=device)
    _, out = moli(x)
    print(f"Sigmoid at -6, 0, 6: {out[0].item():.4f}, {out[6].item():.4f}, {out[-1].item():.4f}")
    n_params = sum(p.numel() for p in moli.parameters())
    check("the activation Module has no parameters (nothing to learn)", n_params == 0,
          detail=f"{n_params} parameters")
    # float32 exp and division: a few ulps of values <= 1.
    return check("Sigmoid(x) == 1 / (1 + exp(-x))", out, 1 / (1 + torch.exp(-x)), atol=1e-6)


def step_3_inplace_shares_storage(device: torch.device) -> bool:
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
          torch.tensor([0.0, 2.0, 0.0]))
    return same_out.data_ptr() == x.data_ptr()


def step_4_over_the_loader(moli: Moli, loader, device, max_steps: int, out_dir) -> dict:
    lo, hi = 0.5, 1 / (1 + math.exp(-1))                    # sigmoid(0), sigmoid(1)
    identity = in_range = dark_exact = True
    zeroed = seen = 0
    with SummaryWriter(str(output_folder(out_dir, "tb"))) as writer:
        for step, (imgs, _) in enumerate(loader):           # imgs: (B, 3, 32, 32) in [0, 1]
            if step == max_steps:
                break
            imgs = imgs.to(device)
            relu, sig = moli(imgs)
            relu_c, _ = moli((imgs - 0.5) / 0.5)            # centred, as Normalize(0.5, 0.5)
            writer.add_images("input", imgs, step)
            writer.add_images("sigmoid", sig, step)
            writer.add_images("relu_of_centred", relu_c, step)   # already in [0, 1]
            identity &= torch.equal(relu, imgs)
            in_range &= bool(sig.min() >= lo) and bool(sig.max() <= hi + 1e-6)
            # Element by element, not just counts: the zeroed positions ARE the dark ones.
            dark_exact &= torch.equal(relu_c == 0, imgs <= 0.5)
            zeroed, seen = zeroed + int((relu_c == 0).sum()), seen + imgs.numel()
    steps = min(step + 1, max_steps)
    print(f"{steps} batches logged to {out_dir / 'tb'} (steps 0..{steps - 1}); "
          f"ReLU zeroed {zeroed / seen:.1%} of the centred values")
    check(f"all {steps} batches: ReLU leaves images in [0, 1] exactly unchanged", identity)
    check(f"all {steps} batches: Sigmoid maps [0, 1] into [0.5, 0.731]", in_range)
    check(f"all {steps} batches: on centred images ReLU zeroes exactly the pixels <= 0.5",
          dark_exact)
    return {"steps": steps, "fraction_zeroed": zeroed / seen}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    moli = Moli().to(device)
    results = {
        "relu_error": step_1_relu_is_max_with_zero(moli, device),
        "sigmoid_error": step_2_sigmoid_formula(moli, device),
        "inplace_same_ptr": step_3_inplace_shares_storage(device),
    }
    dataset = load_test_set(args, cfg["n_images"])
    loader = DataLoader(dataset, batch_size=cfg["batch_size"])
    results.update(step_4_over_the_loader(moli, loader, device, cfg["max_steps"], args.out_dir))
    print(f"summary: {results['steps']} batches; ReLU zeroed "
          f"{results['fraction_zeroed']:.1%} of the centred pixels")
    return results


if __name__ == "__main__":
    main()
