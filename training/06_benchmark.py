"""Benchmark: the seed-style training loop against the fast one, side by side, same device.

Both loops train Moli on the same CIFAR-shaped images in one process. The seed-style loop is the
spec's: PIL images -> ``ToTensor`` -> ``DataLoader(batch_size=64)`` -> an NCHW float32 model ->
Adam. The fast loop is ``05_train_fast.py``'s: one uint8 tensor on the device, batched crop +
flip, ``channels_last``, bf16 autocast where the device has native bf16, fused Adam, batch 256.
They run interleaved (seed, fast, seed, fast, ...) after a warm-up round, so a busy moment on
the machine hits both, and the median of the timed rounds is reported.

Claims proven:
  1. Moli costs 69.2 MFLOP per training image: the count by formula (2 x multiply-adds of each
     conv and linear layer, forward; twice that backward, minus the first conv's input
     gradient, which nobody needs) equals ``torch.utils.flop_counter.FlopCounterMode``'s.
  2. Both loops do the same work: they are fed the same images (ToTensor's floats == the uint8
     tensor / 255); with the same weights the channels_last bf16 model gives the NCHW float32
     model's logits within bf16 precision; both loops' losses on a fixed batch fall while timed.
  3. The fast loop processes more images per second than the seed-style loop (the ratio is the
     summary line ``speed-up: <ratio>x``); ``torch.profiler`` shows where each spends its time.

Run:  python training/06_benchmark.py               (under 2 minutes on a 2-core CPU)
      python training/06_benchmark.py --device cuda
Figures measured with it: training/BENCHMARKS.md. (``torch.profiler`` in a CUDA build of torch
prints a few kineto lines to stderr, ``profiler_start``/``profiler_stop`` and, on a machine
without a GPU, a ``gpuGetDeviceCount failed`` error: harmless.)
"""

from __future__ import annotations

import importlib
import statistics
import time

import torch
import torch.nn.functional as F
from model import Moli
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import ToTensor

from torchnotes import check, make_parser, start, synchronize
from torchnotes.datasets import SyntheticCIFAR10

fast = importlib.import_module("05_train_fast")     # the fast loop's pieces (training/ folder)

FULL = dict(images=10_000, images_per_round=2_560, rounds=5, seed_batch=64, fast_batch=256,
            profile_steps=6)
SMOKE = dict(images=1_024, images_per_round=256, rounds=2, seed_batch=64, fast_batch=256,
             profile_steps=2)
CIFAR_EPOCH = 50_000


def moli_flops_by_formula(h: int = 32) -> int:
    """FLOPs of one training image: forward 2*MACs; backward 2x that, minus conv1's dL/dinput."""
    convs = [(3, 32, h), (32, 32, h // 2), (32, 64, h // 4)]         # (c_in, c_out, out size)
    conv_macs = [c_in * c_out * 5 * 5 * s * s for c_in, c_out, s in convs]
    fc_macs = [64 * 4 * 4 * 64, 64 * 10]
    forward = 2 * (sum(conv_macs) + sum(fc_macs))
    return 3 * forward - 2 * conv_macs[0]        # grad-input + grad-weight, no input gradient


def step_1_flops(device: torch.device) -> int:
    model = Moli().to(device)
    x = torch.randn(8, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    counted = counter.get_total_flops() // 8
    formula = moli_flops_by_formula()
    print(f"FLOPs per training image: formula {formula / 1e6:.1f} M, FlopCounterMode "
          f"{counted / 1e6:.1f} M; a {CIFAR_EPOCH:,}-image epoch: "
          f"{formula * CIFAR_EPOCH / 1e12:.2f} TFLOP")
    check("FLOPs per training image: FlopCounterMode == formula", counted, formula, atol=0)
    return formula


class SeedStyle:
    """The spec's loop: a DataLoader over PIL images, NCHW float32, batch 64, Adam 1e-3."""

    def __init__(self, dataset, device, cfg, seed):
        self.device = device
        gen = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(dataset, batch_size=cfg["seed_batch"], shuffle=True,
                                 generator=gen, drop_last=True)
        self.batches = iter(self.loader)
        self.model = Moli().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.losses = []

    def step(self) -> int:
        with record_function("data"):
            try:
                imgs, targets = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                imgs, targets = next(self.batches)
            imgs, targets = imgs.to(self.device), targets.to(self.device)
        with record_function("model"):
            loss = F.cross_entropy(self.model(imgs), targets)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.losses.append(loss.detach())
        return len(targets)

    @torch.no_grad()
    def loss_on(self, x_u8, y) -> float:
        """The loss on a fixed batch, fed as this loop feeds it (ToTensor: bytes / 255)."""
        return F.cross_entropy(self.model(x_u8.permute(0, 3, 1, 2).float() / 255), y).item()


class Fast:
    """``05_train_fast.py``'s loop: tensor-resident uint8 data, one batch per call."""

    def __init__(self, x_u8, y, device, cfg, seed, augment: bool):
        self.device, self.x, self.y, self.augment = device, x_u8, y, augment
        self.bs = cfg["fast_batch"]
        self.x_pad = F.pad(x_u8, (0, 0, fast.PAD, fast.PAD, fast.PAD, fast.PAD))
        x = x_u8.float() / 255
        self.mean, self.std = x.mean(dim=(0, 1, 2)), x.std(dim=(0, 1, 2))
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.dtype = fast.autocast_dtype(device)
        self.model = Moli().to(device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3, fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.losses = []

    def step(self) -> int:
        with record_function("data"):
            idx = torch.randint(0, len(self.y), (self.bs,), generator=self.gen,
                                device=self.device)
            batch = self.x[idx]                                      # (B, 32, 32, 3) uint8
            if self.augment:
                oy, ox = (torch.randint(0, 2 * fast.PAD + 1, (self.bs,), generator=self.gen,
                                        device=self.device) for _ in range(2))
                flip = torch.rand(self.bs, generator=self.gen, device=self.device) < 0.5
                batch = fast.crop_flip(self.x_pad[idx], oy, ox, flip)
            inp = fast.to_input(batch, self.mean, self.std)
        with record_function("model"):
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                enabled=self.dtype is not None):
                loss = F.cross_entropy(self.model(inp), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()               # float16 only: see 05
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.losses.append(loss.detach())
        return self.bs

    @torch.no_grad()
    def loss_on(self, x_u8, y) -> float:
        """The loss on a fixed batch, fed as this loop feeds it (normalised, autocast)."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            return F.cross_entropy(self.model(fast.to_input(x_u8, self.mean, self.std)),
                                   y).float().item()


def step_2_same_work(seed_loop: SeedStyle, fast_loop: Fast, dataset) -> None:
    seed_fed = torch.stack([dataset[i][0] for i in range(64)])       # ToTensor, (64, 3, 32, 32)
    fast_fed = fast_loop.x[:64].permute(0, 3, 1, 2).float().cpu() / 255   # uint8 rows / 255
    check("both loops are fed the same images: ToTensor(PIL) == the uint8 tensor / 255",
          fast_fed, seed_fed, atol=0)
    fast_loop.model.load_state_dict(seed_loop.model.state_dict())
    x = torch.as_tensor(dataset.data[:64]).to(fast_loop.device)
    with torch.no_grad():
        ref = seed_loop.model(fast.to_input(x, fast_loop.mean, fast_loop.std).contiguous())
        with torch.autocast(fast_loop.device.type, dtype=fast_loop.dtype or torch.float32,
                            enabled=fast_loop.dtype is not None):
            low = fast_loop.model(fast.to_input(x, fast_loop.mean, fast_loop.std))
    check("same weights, one normalised batch: the channels_last bf16 model's logits == the "
          "NCHW float32 model's (bf16 precision)", low.float(), ref, rtol=5e-2)


def timed_round(loop, images: int, device) -> float:
    synchronize(device)
    t0, seen = time.perf_counter(), 0
    while seen < images:
        seen += loop.step()
    synchronize(device)
    return seen / (time.perf_counter() - t0)


def step_3_interleaved(seed_loop, fast_loop, cfg, device) -> dict:
    timed_round(seed_loop, cfg["images_per_round"] // 4, device)     # warm-up, not timed
    timed_round(fast_loop, cfg["images_per_round"] // 4, device)
    rates = {"seed-style": [], "fast": []}
    for r in range(cfg["rounds"]):
        rates["seed-style"].append(timed_round(seed_loop, cfg["images_per_round"], device))
        rates["fast"].append(timed_round(fast_loop, cfg["images_per_round"], device))
        print(f"round {r + 1}: seed-style {rates['seed-style'][-1]:8,.0f} images/s | "
              f"fast {rates['fast'][-1]:8,.0f} images/s")
    return {name: statistics.median(v) for name, v in rates.items()}


def step_4_where_time_goes(seed_loop, fast_loop, device, steps: int = 6) -> dict:
    shares = {}
    for name, loop in (("seed-style", seed_loop), ("fast", fast_loop)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                loop.step()
        events = {e.key: e.cpu_time_total for e in prof.key_averages()}
        data, model = events.get("data", 0.0), events.get("model", 0.0)
        shares[name] = data / max(data + model, 1e-9)
        top = sorted((e for e in prof.key_averages() if e.key not in ("data", "model")),
                     key=lambda e: e.self_cpu_time_total, reverse=True)[:4]
        print(f"{name}: feeding data {shares[name]:.0%} of the step; top ops by self time: "
              + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / steps:.1f} ms" for e in top))
    return shares


def matmul_peak(device: torch.device, dtype, trials: int = 7) -> float:
    """FLOP/s of a large matmul, the best of several timings: a practical ceiling for this
    device and dtype (the best, because a busy moment only ever makes a timing slower)."""
    n, reps = 1024, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    best = float("inf")
    for _ in range(trials):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    parser.add_argument("--augment", action="store_true",
                        help="give the fast loop 05's random crop + flip as extra work (the "
                             "seed-style loop has none, so by default neither does the fast one)")
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    flops = step_1_flops(device)
    dataset = SyntheticCIFAR10(train=True, transform=ToTensor(), size=cfg["images"],
                               seed=args.seed)
    print(f"data: built-in CIFAR-shaped stand-in, {len(dataset)} images (both loops)")
    seed_loop = SeedStyle(dataset, device, cfg, args.seed)
    fast_loop = Fast(torch.as_tensor(dataset.data).to(device),
                     torch.as_tensor(dataset.targets).to(device), device, cfg, args.seed,
                     args.augment)
    print(f"fast loop: batch {cfg['fast_batch']}, autocast {fast_loop.dtype}, augmentation "
          f"{'on (extra work)' if args.augment else 'off (same work as the seed-style loop)'}")
    step_2_same_work(seed_loop, fast_loop, dataset)
    fixed = fast_loop.x[:256], fast_loop.y[:256]                    # one batch, never reshuffled
    before = {name: loop.loss_on(*fixed) for name, loop in (("seed-style", seed_loop),
                                                            ("fast", fast_loop))}
    rates = step_3_interleaved(seed_loop, fast_loop, cfg, device)
    for name, loop in (("seed-style", seed_loop), ("fast", fast_loop)):
        after = loop.loss_on(*fixed)          # same batch, same feeding: no sampling noise
        check(f"{name} loop learns while timed (its loss on a fixed batch falls)",
              after < before[name], detail=f"{before[name]:.3f} -> {after:.3f}")
    shares = step_4_where_time_goes(seed_loop, fast_loop, device, cfg["profile_steps"])
    peak = matmul_peak(device, fast_loop.dtype or torch.float32)
    print(f"{'loop':<11} {'images/s':>10} {'s / 50k epoch':>14} {'GFLOP/s':>9} {'of peak':>8}")
    for name, rate in rates.items():
        print(f"{name:<11} {rate:>10,.0f} {CIFAR_EPOCH / rate:>14.2f} "
              f"{rate * flops / 1e9:>9.1f} {rate * flops / peak:>8.1%}")
    print(f"compute floor: {CIFAR_EPOCH * flops / peak:.2f} s per 50k epoch at the "
          f"{peak / 1e9:,.0f} GFLOP/s of a 1024x1024 "
          f"{str(fast_loop.dtype or torch.float32).replace('torch.', '')} matmul here")
    ratio = rates["fast"] / rates["seed-style"]
    if fast_loop.dtype is not None:          # the most that lower precision alone can give here
        fp32 = matmul_peak(device, torch.float32)
        print(f"a {str(fast_loop.dtype).replace('torch.', '')} matmul is {peak / fp32:.2f}x a "
              f"float32 one here ({fp32 / 1e9:,.0f} GFLOP/s); the seed-style loop already runs "
              f"at {rates['seed-style'] * flops / fp32:.0%} of that float32 rate, feeding included")
    check("the fast loop trains more images per second than the seed-style loop",
          ratio > 1.0, detail=f"{ratio:.2f}x")
    print(f"speed-up: {ratio:.2f}x")
    return dict(device=str(device), images_per_second=rates, speed_up=ratio,
                flops_per_image=flops, data_share=shares, matmul_peak_flops=peak)


if __name__ == "__main__":
    main()
