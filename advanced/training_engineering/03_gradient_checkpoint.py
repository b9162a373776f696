"""Gradient checkpointing: keep fewer activations, recompute them during backward.

Autograd normally keeps every activation a backward formula needs until ``backward()`` runs.
``torch.utils.checkpoint.checkpoint(segment, x, use_reentrant=False)`` keeps only the segment's
input and reruns its forward inside backward: memory falls, compute rises by about one forward.
With k segments over N blocks, backward holds the k - 1 kept segment inputs plus the activations
of the one segment it is recomputing; here each block saves two, so the estimated peak is
(k - 1) + (2N/k - 1) activations, smallest at k = sqrt(2N) (Chen et al. 2016, "sublinear
memory cost": O(sqrt(N)) memory for one extra forward).

Claims proven:
  1. Checkpointed and plain models give the same outputs and the same gradients.
  2. ``saved_activation_bytes`` (a ``saved_tensors_hooks`` pack hook) measures what autograd
     keeps: for N Linear + GELU blocks, (2N - 1) activations of B x D floats plain, but only the
     k - 1 inner segment inputs with k checkpointed segments: a stated factor less.
  3. The price: with checkpointing every block's forward runs twice (once more in backward).
  4. The segment-count trade-off as a table: kept inputs vs the segment recomputed at once; the
     measured estimated peak equals (k - 1) + (2N/k - 1) activations for every k (for N = 16,
     k = 4 and k = 8 tie, on either side of sqrt(2N) = 5.7).
  5. Why ``use_reentrant=False``: the old reentrant checkpoint gives the parameters no gradient
     when the segment's input does not require grad (e.g. raw data); the new one does.
  6. On CUDA, peak memory of forward + backward falls too (skipped, with the reason, on CPU).

Run:  python advanced/training_engineering/03_gradient_checkpoint.py   (about 5 s, laptop CPU)
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchnotes import check, make_parser, start

FULL = dict(blocks=16, batch=256, width=256)
SMOKE = dict(blocks=16, batch=32, width=64)


def saved_activation_bytes(fn, *inputs) -> int:
    """Bytes autograd saves for backward while ``fn(*inputs)`` runs (the forward pass).

    Every tensor a backward formula keeps passes through the pack hook. Leaves (parameters,
    inputs) exist anyway and are not counted; a storage saved twice is counted once.
    """
    storages = {}

    def pack(t):
        base = t if t._base is None else t._base                 # a view saves its base
        if not (base.is_leaf and base.requires_grad):            # skip parameters / inputs
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def make_blocks(n: int, width: int, device) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU())
                         for _ in range(n)).to(device)


def plain_forward(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)                                              # (B, D) -> (B, D)
    return x


def checkpointed_forward(blocks: nn.ModuleList, x: torch.Tensor, segments: int,
                         use_reentrant: bool = False) -> torch.Tensor:
    """Split the blocks into ``segments`` runs; keep only each run's input for backward."""
    per = len(blocks) // segments
    for start_idx in range(0, len(blocks), per):
        segment = nn.Sequential(*blocks[start_idx:start_idx + per])
        x = checkpoint(segment, x, use_reentrant=use_reentrant)  # recomputed in backward
    return x


def estimated_peak(k: int, n: int) -> int:
    """Activations held while backward reruns one of k segments over n blocks: the k - 1 kept
    inner segment inputs + the 2n/k - 1 that one segment saves (Linear's and GELU's inputs,
    minus the segment input already counted). k + 2n/k is smallest at k = sqrt(2n)."""
    return (k - 1) + (2 * n // k - 1)


def grads_of(blocks, forward, x) -> list:
    blocks.zero_grad(set_to_none=True)
    forward(x).square().mean().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone()   # None: no gradient
            for p in blocks.parameters()]


def step_1_same_results(blocks, x, segments: int) -> float:
    out_plain = plain_forward(blocks, x)
    out_ckpt = checkpointed_forward(blocks, x, segments)
    g_plain = grads_of(blocks, lambda t: plain_forward(blocks, t), x)
    g_ckpt = grads_of(blocks, lambda t: checkpointed_forward(blocks, t, segments), x)
    # The recomputation repeats the same float32 ops in the same order: equal to the bit on CPU;
    # 1e-6 leaves room for a GPU kernel that picks another algorithm the second time.
    check("checkpointed outputs == plain outputs", out_ckpt, out_plain, atol=1e-6)
    return check("checkpointed gradients == plain gradients (every parameter)",
                 torch.cat([g.flatten() for g in g_ckpt]),
                 torch.cat([g.flatten() for g in g_plain]), atol=1e-6, rtol=1e-5)


def step_2_and_4_saved_bytes(blocks, x, segments: int) -> dict:
    n, act = len(blocks), x.numel() * x.element_size()            # one (B, D) float32 tensor
    plain = saved_activation_bytes(lambda t: plain_forward(blocks, t), x)
    print(f"one activation (B x D float32): {act} bytes; {n} blocks")
    print(f"{'segments':>8} {'saved after forward':>20} {'+ one segment rerun':>20} "
          f"{'~peak':>10} {'vs plain':>9}")
    print(f"{'plain':>8} {plain:>20,} {0:>20,} {plain:>10,} {1:>8.1f}x")
    table = {}
    for k in (1, 2, 4, 8, 16):
        saved = saved_activation_bytes(lambda t, k=k: checkpointed_forward(blocks, t, k), x)
        rerun = saved_activation_bytes(lambda t, k=k: plain_forward(blocks[:n // k], t), x)
        table[k] = (saved, rerun)
        print(f"{k:>8} {saved:>20,} {rerun:>20,} {saved + rerun:>10,} "
              f"{plain / (saved + rerun):>8.1f}x")
    check("plain: autograd keeps 2N - 1 activations (Linear's and GELU's inputs, not x)",
          plain, (2 * n - 1) * act)
    check("checkpointed, k segments: only the k - 1 inner segment inputs are kept",
          torch.tensor([s for s, _ in table.values()]),
          torch.tensor([(k - 1) * act for k in table]))
    peaks = [saved + rerun for saved, rerun in table.values()]
    check("~peak == (k - 1) + (2N/k - 1) activations for every k (kept inputs + one rerun)",
          torch.tensor(peaks), torch.tensor([estimated_peak(k, n) * act for k in table]))
    # k must divide N here; for N = 16 the divisors 4 and 8 on either side of sqrt(2N) = 5.7
    # swap the two terms (3 + 7 vs 7 + 3 activations) and tie.
    best = [k for k, peak in zip(table, peaks, strict=True) if peak == min(peaks)]
    print(f"lowest estimated peak at k = {' and '.join(map(str, best))}; k + 2N/k is smallest at "
          f"k = sqrt(2N) = {(2 * n) ** 0.5:.1f}")
    factor = plain / table[segments][0]
    check(f"k = {segments} segments keep at least 8x fewer activation bytes than plain",
          factor >= 8, detail=f"{factor:.1f}x")
    return {"plain": plain, "table": table, "factor": factor, "best": best}


def step_3_recompute_cost(blocks, x, segments: int) -> dict:
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += 1

    handles = [b.register_forward_pre_hook(count) for b in blocks]
    counts = {}
    for name, fwd in (("plain", lambda t: plain_forward(blocks, t)),
                      ("checkpointed", lambda t: checkpointed_forward(blocks, t, segments))):
        calls["n"] = 0
        fwd(x).sum().backward()
        counts[name] = calls["n"]
    for h in handles:
        h.remove()
    print(f"block forward calls for one forward + backward: plain {counts['plain']}, "
          f"checkpointed {counts['checkpointed']}")
    check("checkpointing runs every block's forward twice (2N calls vs N)",
          (counts["plain"], counts["checkpointed"]) == (len(blocks), 2 * len(blocks)),
          detail=f"{counts['plain']} vs {counts['checkpointed']}")
    return counts


def step_5_why_not_reentrant(blocks, x) -> dict:
    raw = x.detach()                                              # data: requires_grad=False
    got = {}
    for reentrant in (True, False):
        blocks.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                       # reentrant warns about this
            out = checkpointed_forward(blocks, raw, 1, use_reentrant=reentrant)
        if out.requires_grad:
            out.sum().backward()
        got[reentrant] = sum(p.grad is not None for p in blocks.parameters())
        print(f"use_reentrant={reentrant}: {got[reentrant]} of "
              f"{len(list(blocks.parameters()))} parameters got a gradient")
    check("use_reentrant=True: no parameter gradients when the input needs none", got[True] == 0,
          detail=f"{got[True]} grads")
    check("use_reentrant=False: every parameter gets its gradient",
          got[False] == len(list(blocks.parameters())), detail=f"{got[False]} grads")
    return got


def step_6_cuda_peak(blocks, x, segments: int, device) -> dict:
    if device.type != "cuda":
        print(f"peak-memory step skipped: it reads torch.cuda.max_memory_allocated, and this run "
              f"is on {device.type} (run with --device cuda on a GPU)")
        return {}
    peaks = {}
    for name, fwd in (("plain", lambda t: plain_forward(blocks, t)),
                      ("checkpointed", lambda t: checkpointed_forward(blocks, t, segments))):
        blocks.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fwd(x).square().mean().backward()
        torch.cuda.synchronize(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) - base
        print(f"CUDA peak above baseline, {name}: {peaks[name] / 2**20:.2f} MiB")
    check("on CUDA, checkpointing lowers peak memory", peaks["checkpointed"] < peaks["plain"],
          detail=f"{peaks['plain'] / 2**20:.2f} -> {peaks['checkpointed'] / 2**20:.2f} MiB")
    return peaks


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    blocks = make_blocks(cfg["blocks"], cfg["width"], device)
    x = torch.randn(cfg["batch"], cfg["width"], device=device, requires_grad=True)
    segments = 4                                  # next to sqrt(2 * 16) = 5.7; ties with 8
    results = {
        "grad_error": step_1_same_results(blocks, x, segments),
        "memory": step_2_and_4_saved_bytes(blocks, x, segments),
        "forward_calls": step_3_recompute_cost(blocks, x, segments),
        "reentrant": step_5_why_not_reentrant(blocks, x),
        "cuda_peak": step_6_cuda_peak(blocks, x, segments, device),
    }
    m = results["memory"]
    print(f"summary: {segments} checkpointed segments keep {m['factor']:.1f}x fewer activation "
          f"bytes; each block's forward runs twice")
    return results


if __name__ == "__main__":
    main()
