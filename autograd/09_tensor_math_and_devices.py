"""Tensor math and devices: * vs @, mm/matmul/bmm, reductions, NumPy, and timing a GPU right.

The second half of the spec's ``08_tensor_operations_and_gpu.py``: the products and reductions
every model is made of, the way out to NumPy, and moving (and timing) work on a device.

Claims proven:
  1. ``*`` multiplies element by element (``np.multiply``), ``@`` is the matrix product
     (``np.matmul``); ``@`` on shapes whose inner sizes differ raises ``RuntimeError``.
  2. ``mm`` takes 2-D matrices only (3-D raises); ``bmm`` multiplies a batch pairwise, equal to
     a loop of ``mm``; ``matmul`` also broadcasts a single matrix over the batch.
  3. Reductions along a dim drop it; ``keepdim=True`` keeps it as size 1, so the result
     broadcasts back: ``x / x.sum(1, keepdim=True)`` sums to 1 along dim 1. Without
     ``keepdim`` the same division raises on (2, 3, 4), but on a square (3, 3) it silently
     broadcasts along the wrong axis: no error, rows that do not sum to 1. Values equal NumPy's.
  4. ``torch.from_numpy`` and ``.numpy()`` share memory; ``torch.tensor(array)`` copies.
     ``.numpy()`` on a tensor that requires grad raises; ``.detach().cpu().numpy()`` is the
     way out from any device.
  5. The device's properties (on a GPU: name, memory, and ``memory_allocated`` growing by a
     new tensor's bytes); ``.to()`` the device a tensor is already on returns that same
     tensor, and the same computation on the selected device equals the CPU within tolerance
     (on the CPU: float32 against float64).
  6. Timing done right (warm-up, then ``synchronize`` before reading the clock, since GPU
     calls return before the work is done; on the CPU one thread): a matmul with 8x the
     FLOPs takes clearly longer.

Run:  python autograd/09_tensor_math_and_devices.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from torchnotes import check, check_raises, make_parser, start, synchronize

FULL = dict(n=512, batch=8, min_seconds=2e-3, repeats=5)
SMOKE = dict(n=64, batch=3, min_seconds=2e-4, repeats=3)


def small_ints(*shape, device) -> torch.Tensor:
    """Integer-valued floats: every product and sum below is exact, so checks compare exactly."""
    return torch.randint(-3, 4, shape, device=device).float()


def step_1_elementwise_vs_matrix_product(device: torch.device) -> dict:
    a, b = small_ints(2, 3, device=device), small_ints(2, 3, device=device)
    c = small_ints(3, 4, device=device)
    print(f"a (2, 3) * b (2, 3) -> {tuple((a * b).shape)};  a (2, 3) @ c (3, 4) -> "
          f"{tuple((a @ c).shape)}")
    check("a * b == np.multiply (element by element) and a @ c == np.matmul",
          np.array_equal((a * b).cpu().numpy(), np.multiply(a.cpu().numpy(), b.cpu().numpy()))
          and np.array_equal((a @ c).cpu().numpy(), a.cpu().numpy() @ c.cpu().numpy()))
    check_raises("a (2, 3) @ b (2, 3) raises RuntimeError: inner sizes 3 and 2 differ",
                 RuntimeError, torch.matmul, a, b, match="cannot be multiplied")
    return {"elementwise": a * b, "matrix": a @ c}


def step_2_mm_matmul_bmm(device: torch.device, batch: int) -> torch.Tensor:
    xs = small_ints(batch, 2, 3, device=device)                     # (B, 2, 3)
    ys = small_ints(batch, 3, 4, device=device)                     # (B, 3, 4)
    w = small_ints(3, 4, device=device)                             # (3, 4), one matrix
    check_raises("torch.mm on 3-D tensors raises RuntimeError (2-D only)", RuntimeError,
                 torch.mm, xs, ys, match="must be a matrix")
    batched = torch.bmm(xs, ys)                                     # (B, 2, 4)
    looped = torch.stack([torch.mm(x, y) for x, y in zip(xs, ys, strict=True)])
    print(f"bmm {tuple(xs.shape)} x {tuple(ys.shape)} -> {tuple(batched.shape)}; "
          f"matmul {tuple(xs.shape)} x {tuple(w.shape)} -> {tuple(torch.matmul(xs, w).shape)}")
    check("bmm == a loop of mm over the batch (exactly)", batched, looped)
    check("matmul broadcasts one (3, 4) matrix over the batch: == bmm with w expanded",
          torch.matmul(xs, w), torch.bmm(xs, w.expand(batch, 3, 4)))
    return batched


def step_3_reductions_keepdim(device: torch.device) -> torch.Tensor:
    x = torch.rand(2, 3, 4, device=device) + 0.1                   # (2, 3, 4), positive
    n = x.cpu().numpy()
    print(f"x {tuple(x.shape)}: sum(1) {tuple(x.sum(1).shape)}, "
          f"sum(1, keepdim=True) {tuple(x.sum(1, keepdim=True).shape)}, "
          f"max(2).values {tuple(x.max(2).values.shape)}")
    # Same float32 numbers summed in possibly another order: a few ulps of values ~ 2.
    check("sum/mean/max along a dim == NumPy's", torch.cat([
        x.sum(1).flatten(), x.mean(0).flatten(), x.max(2).values.flatten()]), np.concatenate([
        n.sum(1).ravel(), n.mean(0).ravel(), n.max(2).ravel()]), atol=1e-6)
    check("keepdim=True keeps dim 1 as size 1: (2, 1, 4), as NumPy's keepdims=True",
          tuple(x.sum(1, keepdim=True).shape) == n.sum(1, keepdims=True).shape == (2, 1, 4))
    share = x / x.sum(dim=1, keepdim=True)                          # (2,3,4) / (2,1,4)
    check("x / x.sum(1, keepdim=True) sums to 1 along dim 1", share.sum(1),
          torch.ones(2, 4), atol=1e-6)
    check_raises("without keepdim, x / x.sum(1) raises: (2, 3, 4) vs (2, 4) do not broadcast",
                 RuntimeError, torch.div, x, x.sum(dim=1), match="must match")
    sq = torch.rand(3, 3, device=device) + 0.1                      # (3, 3): the silent case
    wrong = sq / sq.sum(dim=1)          # (3, 3) / (3,): divides column j by row j's sum
    print(f"square (3, 3) without keepdim: no error, row sums {wrong.sum(1).tolist()}")
    check("...but on a square (3, 3) it runs and divides along the wrong axis: rows do not "
          "sum to 1", not torch.allclose(wrong.sum(1), torch.ones(3, device=device), atol=1e-3),
          detail=f"largest |row sum - 1| {(wrong.sum(1) - 1).abs().max().item():.3f}")
    return share


def step_4_numpy_round_trip(device: torch.device) -> np.ndarray:
    arr = np.arange(6, dtype=np.float32)
    shared = torch.from_numpy(arr)            # CPU only: a CUDA tensor needs .cpu() first
    copied = torch.tensor(arr)
    arr[0] = 100.0                            # write on the NumPy side
    shared[1] = -1.0                          # write on the torch side
    print(f"arr = {arr.tolist()}, from_numpy = {shared.tolist()}, tensor() = {copied.tolist()}")
    check("from_numpy/.numpy() share memory both ways; torch.tensor(arr) kept the old values",
          shared[0].item() == 100.0 and arr[1] == -1.0
          and np.shares_memory(shared.numpy(), arr) and copied[:2].tolist() == [0.0, 1.0])
    w = torch.randn(3, device=device, requires_grad=True)
    out = w * 2                                                     # on device, in a graph
    check_raises("out.numpy() raises RuntimeError while out requires grad", RuntimeError,
                 out.numpy, match="requires grad")
    as_numpy = out.detach().cpu().numpy()     # leave the graph, then the device, then torch
    print(f".detach().cpu().numpy(): {type(as_numpy).__name__} {as_numpy.dtype}, values "
          f"{as_numpy.round(3).tolist()}")
    # On the CPU .cpu() returns the same tensor, so the array aliases out's memory: change one,
    # the other follows. Copy (np.array(...) or .clone()) if you mean to keep it.
    check("on the CPU, .detach().cpu().numpy() shares out's memory (no copy is made)",
          isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
          and (device.type != "cpu" or np.shares_memory(as_numpy, out.detach().numpy())))
    return as_numpy


def compute(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.tanh(x @ w), dim=-1)          # (n, n)


def tolerance(device: torch.device) -> float:
    """atol for n * compute(...) (values of order 1) on ``device`` vs the CPU reference.

    On the CPU float32 is compared with float64: ~1e-7 relative per op, a few ops deep.
    Other kernels sum in another order (~1e-6 relative); TF32 matmul only if you enable it.
    """
    return 1e-5 if device.type == "cpu" else 1e-4


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
                f"compute capability {p.major}.{p.minor}")
    return f"{device.type}: {torch.get_num_threads()} threads"


def step_5_same_result_on_device(device: torch.device, n: int) -> float:
    print(f"device properties: {describe(device)}")
    x, w = torch.randn(n, n), torch.randn(n, n) / n**0.5      # made on the CPU
    x_dev, w_dev = x.to(device), w.to(device)                 # .to(device): the portable way
    if device.type == "cuda":                                 # .cuda() only on the GPU you chose
        print(f"x.cuda(device) also works here: {x.cuda(device).device}")
        before = torch.cuda.memory_allocated(device)
        block = torch.empty(1024, 1024, device=device)        # 4 MiB of float32 on the GPU
        grown = torch.cuda.memory_allocated(device) - before
        check("torch.cuda.memory_allocated grew by the new tensor's 4 MiB",
              grown >= block.nbytes, detail=f"{grown} bytes")
    check(".to() the device a tensor is already on returns the same tensor (no copy)",
          x_dev.to(device) is x_dev and x_dev.device.type == device.type)
    result = compute(x_dev, w_dev).cpu()                      # back to the CPU to compare
    if device.type == "cpu":
        reference, against = compute(x.double(), w.double()), "float64 on the CPU"
    else:
        reference, against = compute(x, w), "float32 on the CPU"
    # Each softmax row sums to 1, so entries are ~1/n: times n they are of order 1, and an
    # absolute tolerance on them means the same thing at every n.
    return check(f"compute() in float32 on {device} == {against} (both times n)",
                 result * n, reference * n, atol=tolerance(device))


def time_matmul(n: int, device: torch.device, repeats: int) -> float:
    """Seconds for one (n, n) @ (n, n): the fastest of ``repeats`` properly timed calls."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b                                     # warm-up: allocation, kernel choice, caches
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)                   # start the clock with the queue empty
        t0 = time.perf_counter()
        a @ b
        synchronize(device)                   # GPU calls return at once: wait for the work
        best = min(best, time.perf_counter() - t0)
    return best


def step_6_timed_matmul(device: torch.device, min_seconds: float, repeats: int) -> dict:
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # One thread: on a busy machine a multi-threaded matmul waits for its helper threads
        # to be scheduled (tens of ms), which would swamp the difference being measured.
        torch.set_num_threads(1)
    try:
        n = 64
        while time_matmul(n, device, repeats) < min_seconds and n < 4096:
            n *= 2                            # big enough to measure work, not overhead
        small, big = time_matmul(n, device, repeats), time_matmul(2 * n, device, repeats)
    finally:
        torch.set_num_threads(threads)
    for size, t in ((n, small), (2 * n, big)):
        print(f"{size:>5} x {size:<5} matmul: {t * 1e3:8.3f} ms, "
              f"{2 * size**3 / t / 1e9:7.1f} GFLOP/s")
    # 8x the FLOPs; a fast machine may run the big one more efficiently, so ask for 2x only.
    check(f"the {2 * n}^3 matmul (8x the FLOPs) takes over twice as long as the {n}^3 one",
          big > 2 * small, detail=f"{big / small:.1f}x")
    return {"n": n, "small_s": small, "big_s": big}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "products": step_1_elementwise_vs_matrix_product(device),
        "bmm": step_2_mm_matmul_bmm(device, cfg["batch"]),
        "normalised": step_3_reductions_keepdim(device),
        "as_numpy": step_4_numpy_round_trip(device),
        "device_error": step_5_same_result_on_device(device, cfg["n"]),
        "timing": step_6_timed_matmul(device, cfg["min_seconds"], cfg["repeats"]),
    }
    t = results["timing"]
    print(f"summary: {device} float32 agrees with the CPU reference to "
          f"{results['device_error']:.1e}; a {t['n']}^3 matmul takes {t['small_s'] * 1e3:.2f} ms")
    return results


if __name__ == "__main__":
    main()
