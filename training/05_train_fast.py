"""Fast training: the same Moli and data as ``03_train_gpu_device.py``, fed the fast way.

The seed-style loop spends much of its time *feeding* the model: a PIL image per item,
``ToTensor`` per item, a ``DataLoader`` collating small tensors, and an NCHW float32 network.
Here the whole training split lives on the device as ONE uint8 tensor; each batch is cut,
augmented (random crop with 4-pixel padding + horizontal flip, as one batched gather; on by
default for real CIFAR-10, off for the stand-in, see ``--augment``), converted and normalised
there, with no per-image Python work and no DataLoader. The model runs
in ``channels_last`` memory format under ``torch.autocast`` (bf16 where the device has native
bf16 math; float16 with a ``GradScaler`` on GPUs without bf16), with a fused Adam and
``zero_grad(set_to_none=True)``; ``--compile`` adds
``torch.compile`` (its first-step compile time is reported on its own line). Batches are 4x
larger (256) and Adam's learning rate grows by sqrt(4) = 2 (square-root scaling suits Adam).
What each switch is worth on your machine: ``python training/06_benchmark.py``.

Claims proven:
  1. The batched crop + flip (one gather over the padded uint8 tensor) equals torchvision's
     per-image ``pad`` -> ``crop`` -> ``hflip`` with the same offsets, byte for byte.
  2. ``permute`` turns the NHWC batch into an NCHW tensor that is already ``channels_last``
     (no copy), and the channels_last model gives the NCHW model's logits (float32, 1e-4).
  3. Autocast really runs the layers in bf16 (the logits come out bf16), and they match
     float32 within bf16's precision (rtol 5e-2; bf16 keeps 8 significant bits, about 0.4%
     per rounding, accumulated over 5 layers).
  4. Training learns: the loss falls and test accuracy is far above chance (>= 90% on the
     stand-in with the full preset; a test checks it stays within 2 points of 03's loop).

Run:  python training/05_train_fast.py                 (about 10 s on a 2-core CPU)
      python training/05_train_fast.py --device cuda --compile
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
import torchvision
from model import Moli
from torchvision.transforms import functional as TF

from torchnotes import check, make_parser, start, synchronize
from torchnotes.datasets import (
    SyntheticCIFAR10,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(train_size=None, test_size=None, epochs=2, batch_size=256, lr=2e-3,
            min_accuracy=0.90, log_every=10)
SMOKE = dict(train_size=1_024, test_size=512, epochs=2, batch_size=128, lr=2e-3,
             min_accuracy=0.30, log_every=2)
PAD = 4                                              # pixels of zero padding for the crop


def load_uint8(args, cfg: dict, device: torch.device):
    """Both splits as uint8 NHWC tensors on ``device`` (CIFAR-10's own ``.data`` layout).

    Returns ``[(x_train, y_train), (x_test, y_test)]`` and whether the data is real CIFAR-10.
    """
    root = args.data_root or data_root()
    splits, real = [], use_real(args)
    for train, size in ((True, cfg["train_size"]), (False, cfg["test_size"])):
        if real:
            with torchvision_errors("CIFAR-10", root, args.download):
                ds = torchvision.datasets.CIFAR10(root, train=train, download=args.download)
        else:
            ds = SyntheticCIFAR10(train=train, size=size, seed=args.seed)
        x = torch.as_tensor(ds.data[:size]).to(device)              # (N, 32, 32, 3) uint8
        y = torch.as_tensor(ds.targets[:size]).to(device)           # (N,)
        splits.append((x, y))
    return splits, real


def crop_flip(x_pad: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
              flip: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(B, H+2p, W+2p, C) padded images -> (B, size, size, C) crops, flipped where ``flip``.

    One advanced-indexing gather: row i of crop b is padded row oy[b] + i; column j is
    ox[b] + j, or ox[b] + size-1-j for a flipped image.
    """
    ar = torch.arange(size, device=x_pad.device)
    rows = oy[:, None] + ar                                          # (B, size)
    cols = ox[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)   # (B, size)
    b = torch.arange(len(x_pad), device=x_pad.device)[:, None, None]
    return x_pad[b, rows[:, :, None], cols[:, None, :]]               # (B, size, size, C)


def to_input(x_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, channels_last in memory (the permute is free)."""
    return ((x_u8.float() / 255 - mean) / std).permute(0, 3, 1, 2)


def step_1_batched_augmentation(x: torch.Tensor, gen: torch.Generator) -> None:
    n = min(8, len(x))
    x_pad = F.pad(x[:n], (0, 0, PAD, PAD, PAD, PAD))                 # pad H and W, not C
    oy, ox = (torch.randint(0, 2 * PAD + 1, (n,), generator=gen, device=x.device)
              for _ in range(2))
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    fast = crop_flip(x_pad, oy, ox, flip)
    ref = []
    for i in range(n):                                               # the per-image way
        img = TF.pad(x[i].permute(2, 0, 1), PAD)                     # (3, 40, 40)
        img = TF.crop(img, int(oy[i]), int(ox[i]), 32, 32)
        ref.append((TF.hflip(img) if flip[i] else img).permute(1, 2, 0))
    print(f"crop offsets (y, x): {list(zip(oy.tolist(), ox.tolist(), strict=True))[:4]} ...,"
          f" flipped: {flip.sum().item()}/{n}")
    check("batched crop + flip == torchvision pad/crop/hflip per image (bytes)",
          fast, torch.stack(ref), atol=0)


def step_2_channels_last(x: torch.Tensor, mean, std, device: torch.device) -> None:
    inp = to_input(x[:16], mean, std)
    print(f"input {tuple(inp.shape)}, strides {inp.stride()}")
    check("the permuted batch is channels_last already (no copy needed)",
          inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous())
    torch.manual_seed(0)
    nchw = Moli().to(device)
    cl = Moli().to(device, memory_format=torch.channels_last)
    cl.load_state_dict(nchw.state_dict())
    with torch.no_grad():
        check("channels_last model == NCHW model (float32 logits)", cl(inp),
              nchw(inp.contiguous()), rtol=1e-4, atol=1e-5)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device has native bf16 math (CUDA Ampere+, CPUs with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None                             # emulated bf16 would be slower than float32


def step_3_autocast(model, x, mean, std, device: torch.device, dtype) -> None:
    inp = to_input(x[:64], mean, std)
    with torch.no_grad():
        ref = model(inp)
        if dtype is None:
            print(f"autocast: off on {device} (no native bf16 math here), float32 throughout; "
                  f"nothing to compare")
            return None
        with torch.autocast(device.type, dtype=dtype):
            low = model(inp)
    check(f"autocast really runs the layers in {dtype} (logits come out {dtype})",
          low.dtype == dtype, detail=f"logits dtype {low.dtype}")
    check(f"autocast {dtype} logits == float32 logits within bf16 precision",
          low.float(), ref, rtol=5e-2)


def step_4_train(model, splits, mean, std, device, dtype, cfg, gen, compile_model) -> dict:
    (x_tr, y_tr), (x_te, y_te) = splits
    x_pad = F.pad(x_tr, (0, 0, PAD, PAD, PAD, PAD)) if cfg["augment"] else None  # (N,40,40,3)
    # fused=True: one kernel updates every parameter (CUDA and CPU); else foreach.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], fused=True)
    # float16 (GPUs without bf16) needs its gradients scaled up so small ones do not flush to
    # zero (advanced/training_engineering/02); bf16 has float32's range: the scaler stays off.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step_fn = torch.compile(model) if compile_model else model
    bs, n = cfg["batch_size"], len(x_tr)
    logged, seconds, seen = [], 0.0, 0
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        synchronize(device)
        t0 = time.perf_counter()
        for i, start_ in enumerate(range(0, n - bs + 1, bs)):        # full batches only
            idx = order[start_:start_ + bs]                          # (B,) on the device
            if cfg["augment"]:
                oy, ox = (torch.randint(0, 2 * PAD + 1, (bs,), generator=gen, device=device)
                          for _ in range(2))
                flip = torch.rand(bs, generator=gen, device=device) < 0.5
                batch = crop_flip(x_pad[idx], oy, ox, flip)          # (B, 32, 32, 3) uint8
            else:
                batch = x_tr[idx]
            inp = to_input(batch, mean, std)                         # (B, 3, 32, 32) float
            with torch.autocast(device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                logits = step_fn(inp)                                # (B, 10)
                loss = F.cross_entropy(logits, y_tr[idx])
            ran_in = logits.dtype                            # what the layers computed in
            optimizer.zero_grad(set_to_none=True)            # no zero-filling kernels
            scaler.scale(loss).backward()                    # plain backward() when off
            scaler.step(optimizer)
            scaler.update()
            if compile_model and epoch == 1 and i == 0:
                synchronize(device)
                print(f"torch.compile: first step took {time.perf_counter() - t0:.1f} s "
                      "(compilation; not counted below)")
                t0 = time.perf_counter()
                continue
            seen += bs
            if i % cfg["log_every"] == 0:
                logged.append(loss.detach())                 # no .item(): no sync per step
        synchronize(device)
        seconds += time.perf_counter() - t0
        acc = evaluate(model, x_te, y_te, mean, std, device, dtype)
        print(f"epoch {epoch}: test accuracy {acc:.1%}, {seen / seconds:,.0f} images/s so far")
    conv1 = model.model[0].weight                                    # (32, 3, 5, 5)
    check(f"the loop trained a channels_last model under autocast: conv weights NHWC in "
          f"memory, logits {dtype or torch.float32}",
          conv1.is_contiguous(memory_format=torch.channels_last)
          and ran_in == (dtype or torch.float32), detail=f"logits {ran_in}")
    losses = torch.stack(logged).float().tolist()
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    check("the training loss went down", last < 0.8 * first,
          detail=f"{first:.3f} -> {last:.3f} (logged every {cfg['log_every']} steps)")
    check(f"test accuracy >= {cfg['min_accuracy']:.0%} (chance is 10%)",
          acc >= cfg["min_accuracy"], detail=f"{acc:.1%}")
    return dict(losses=losses, test_accuracy=acc, images_per_second=seen / seconds,
                train_seconds=seconds)


def evaluate(model, x, y, mean, std, device, dtype, batch: int = 1024) -> float:
    model.eval()
    correct = torch.zeros((), device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        for i in range(0, len(x), batch):
            logits = model(to_input(x[i:i + batch], mean, std))
            correct += (logits.argmax(1) == y[i:i + batch]).sum()
    return correct.item() / len(x)


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (helps on CUDA; slower on small CPUs)")
    parser.add_argument("--batch-size", type=int, help="default: 256 (smoke 128)")
    parser.add_argument("--lr", type=float, help="default: 2e-3 (sqrt scaling from 1e-3 at 64)")
    parser.add_argument("--epochs", type=int, help="default: 2, as 03_train_gpu_device.py")
    parser.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                        help="random crop + flip; auto: on for real CIFAR-10, off for the "
                             "stand-in (its test set is drawn like its train set)")
    args, device = start(parser, argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("batch_size", "lr", "epochs"):
        value = getattr(args, key)
        if value is not None and not 0 < value < math.inf:          # also refuses nan
            parser.error(f"--{key.replace('_', '-')} {value}: expected a positive number")
        cfg[key] = cfg[key] if value is None else value
    gen = torch.Generator(device=device).manual_seed(args.seed)
    splits, real = load_uint8(args, cfg, device)
    x_tr = splits[0][0]
    if cfg["batch_size"] > len(x_tr):                    # full batches only: none would run
        parser.error(f"--batch-size {cfg['batch_size']}: larger than the {len(x_tr):,} "
                     f"training images; expected at most {len(x_tr):,}")
    # Augmentation regularises: it pays off over many epochs on real photos. The stand-in's
    # test images come from the same generator as its train images, so in 2 epochs it only
    # slows fitting (measured, full preset: 92.2% with it, 96.4% without).
    cfg["augment"] = args.augment == "on" or (args.augment == "auto" and real)
    print(f"augmentation (random crop + flip): {'on' if cfg['augment'] else 'off'}")
    # Normalisation statistics from the training split only (the test split stays unseen).
    mean = x_tr.float().div(255).mean(dim=(0, 1, 2))                  # (3,)
    std = x_tr.float().div(255).std(dim=(0, 1, 2))
    print(f"train {tuple(x_tr.shape)} uint8 on {device}: "
          f"{x_tr.numel() / 2**20:.1f} MiB; mean {[round(v, 3) for v in mean.tolist()]}")
    step_1_batched_augmentation(x_tr, gen)
    step_2_channels_last(x_tr, mean, std, device)
    dtype = autocast_dtype(device)
    model = Moli().to(device, memory_format=torch.channels_last)
    step_3_autocast(model, x_tr, mean, std, device, dtype)
    result = step_4_train(model, splits, mean, std, device, dtype, cfg, gen, args.compile)
    per_epoch = 50_000 / result["images_per_second"]
    print(f"summary: {device}, {result['images_per_second']:,.0f} images/s, "
          f"{per_epoch:.1f} s per 50,000-image epoch, test accuracy "
          f"{result['test_accuracy']:.1%}")
    return dict(device=str(device), autocast=str(dtype), seconds_per_cifar_epoch=per_epoch,
                **result)


if __name__ == "__main__":
    main()
