"""Tensors: creation, views vs copies, indexing, broadcasting, NumPy, and moving to a device.

The everyday tensor operations, each checked against NumPy or against itself, plus the rules
that bite: which operations share memory, when ``view`` fails, how shapes broadcast.

Claims proven:
  1. ``zeros/ones/full/arange/linspace/eye`` match NumPy, with the dtype requested
     (and PyTorch's defaults: float32 for floats, int64 for integer ``arange``).
  2. ``view`` shares storage (same ``data_ptr``; writes show through); ``clone`` copies;
     a transpose is a non-contiguous view and ``contiguous()`` copies it.
  3. ``view`` of a non-contiguous tensor raises ``RuntimeError``; ``reshape`` works there
     (copying) and equals NumPy's C-order reshape.
  4. Basic, boolean-mask and fancy (integer-list) indexing give NumPy's results; slicing
     returns a view, mask and fancy indexing return copies.
  5. Broadcasting follows NumPy's rule (align shapes on the right; sizes must match or be 1):
     result shapes equal ``torch.broadcast_shapes`` and ``np.broadcast_shapes``, values equal
     NumPy's, and an incompatible pair raises ``RuntimeError``.
  6. ``torch.from_numpy`` and ``.numpy()`` share memory with the array (a write on one side is
     seen on the other); ``torch.tensor(array)`` copies.
  7. ``.to()`` onto the device a tensor is already on returns that same tensor, and the same
     computation on the selected device equals the CPU within tolerance. (When the selected
     device is the CPU, it is compared with a float64 CPU run instead.)

Run:  python autograd/08_tensor_operations_and_gpu.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import numpy as np
import torch

from torchnotes import check, check_raises, make_parser, start

FULL = dict(n=512)
SMOKE = dict(n=64)


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b live in the same storage (so a write to one can show in the other)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def step_1_creation(device: torch.device) -> dict:
    made = {
        "zeros": (torch.zeros(2, 3, device=device), np.zeros((2, 3))),
        "ones": (torch.ones(4, device=device, dtype=torch.float16), np.ones(4)),
        "full": (torch.full((2, 2), 7.5, device=device), np.full((2, 2), 7.5)),
        "arange": (torch.arange(0, 10, 3, device=device), np.arange(0, 10, 3)),
        "linspace": (torch.linspace(0, 1, 5, device=device), np.linspace(0, 1, 5)),
        "eye": (torch.eye(3, device=device, dtype=torch.int32), np.eye(3)),
    }
    for name, (t, _) in made.items():
        print(f"{name:>8}: shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}")
    # The values are small integers or dyadic fractions: exact in every dtype used here.
    check("every creation function matches NumPy's values",
          all(np.array_equal(t.cpu().numpy(), a) for t, a in made.values()))
    check("defaults: float32 for zeros/full/linspace, int64 for integer arange; "
          "dtype= is honoured",
          made["zeros"][0].dtype == torch.float32 and made["full"][0].dtype == torch.float32
          and made["linspace"][0].dtype == torch.float32
          and made["arange"][0].dtype == torch.int64 and made["ones"][0].dtype == torch.float16
          and made["eye"][0].dtype == torch.int32)
    return {name: t for name, (t, _) in made.items()}


def step_2_views_and_copies(device: torch.device) -> dict:
    t = torch.arange(12, device=device).view(3, 4)          # (3, 4)
    v = t.view(4, 3)                                        # same 12 numbers, new shape
    c = t.clone()
    v[0, 0] = 100                                           # write through the view
    c[0, 1] = -1                                            # write into the copy
    print(f"after v[0,0] = 100 and c[0,1] = -1: t[0] = {t[0].tolist()}")
    check("view shares storage: same data_ptr, and the write to v shows in t",
          shares_memory(t, v) and t[0, 0].item() == 100)
    check("clone copies: new storage, and the write to c does not show in t",
          not shares_memory(t, c) and t[0, 1].item() == 1)
    tt = t.T                                                # (4, 3) transpose: a view
    tc = tt.contiguous()
    print(f"t.T: is_contiguous={tt.is_contiguous()}, stride={tt.stride()}; "
          f"t.T.contiguous(): stride={tc.stride()}")
    check("t.T is a non-contiguous view; .contiguous() makes a contiguous copy; "
          "t.contiguous() is t itself",
          shares_memory(t, tt) and not tt.is_contiguous() and tc.is_contiguous()
          and not shares_memory(tt, tc) and t.contiguous() is t)
    return {"t": t, "view": v, "clone": c}


def step_3_view_vs_reshape(device: torch.device) -> torch.Tensor:
    t = torch.arange(12, device=device).view(3, 4)
    check_raises("view() on a non-contiguous tensor (t.T.view(12)) raises RuntimeError",
                 RuntimeError, t.T.view, 12, match="view size")
    flat = t.T.reshape(12)                                  # copies when it has to
    check("reshape() works there and equals NumPy's C-order reshape of t.T",
          np.array_equal(flat.cpu().numpy(), t.cpu().numpy().T.reshape(12)))
    check("on a contiguous tensor reshape() returns a view (no copy)",
          shares_memory(t, t.reshape(4, 3)))
    return flat


def step_4_indexing(device: torch.device) -> dict:
    a = torch.randn(4, 5, device=device)
    n = a.cpu().numpy()
    rows, cols = [0, 2, 3], [1, 1, 4]
    cases = {
        "a[1:3, ::2]": (a[1:3, ::2], n[1:3, ::2]),
        "a[-1]": (a[-1], n[-1]),
        "a[a > 0]": (a[a > 0], n[n > 0]),
        "a[[0,2,3],[1,1,4]]": (a[rows, cols], n[rows, cols]),
        "a[[0,2]]": (a[[0, 2]], n[[0, 2]]),
    }
    for name, (t, _) in cases.items():
        print(f"{name:>19} -> shape {tuple(t.shape)}")
    check("basic, boolean-mask and fancy indexing equal NumPy's (exactly)",
          all(np.array_equal(t.cpu().numpy(), x) for t, x in cases.values()))
    check("slicing returns a view; mask and fancy indexing return copies",
          shares_memory(a, a[1:3, ::2]) and not shares_memory(a, a[a > 0])
          and not shares_memory(a, a[rows, cols]))
    return {name: t for name, (t, _) in cases.items()}


def step_5_broadcasting(device: torch.device) -> list:
    pairs = [((3, 1), (1, 4)), ((5, 3, 1), (4,)), ((2, 1, 6), (7, 1)), ((4, 3), ())]
    shapes = []
    for sa, sb in pairs:
        x, y = torch.randn(sa, device=device), torch.randn(sb, device=device)
        out = x + y
        print(f"{str(sa):>10} + {str(sb):<7} -> {tuple(out.shape)}")
        ok = (tuple(out.shape) == tuple(torch.broadcast_shapes(sa, sb))
              == np.broadcast_shapes(sa, sb))
        # Both add the same two float32 numbers: exact.
        same = np.array_equal(out.cpu().numpy(), x.cpu().numpy() + y.cpu().numpy())
        check(f"{sa} + {sb}: shape == torch/np.broadcast_shapes and values == NumPy's", ok and same)
        shapes.append(tuple(out.shape))
    check_raises("(3,) + (4,) raises RuntimeError: trailing sizes 3 and 4 differ, neither is 1",
                 RuntimeError, torch.add, torch.ones(3, device=device),
                 torch.ones(4, device=device))
    return shapes


def step_6_numpy_round_trip() -> bool:
    arr = np.arange(6, dtype=np.float32)
    shared = torch.from_numpy(arr)            # CPU only: a CUDA tensor needs .cpu() first
    copied = torch.tensor(arr)
    arr[0] = 100.0                            # write on the NumPy side
    back = shared.numpy()                     # no copy either
    shared[1] = -1.0                          # write on the torch side
    print(f"arr = {arr.tolist()}, from_numpy = {shared.tolist()}, tensor() = {copied.tolist()}")
    check("torch.from_numpy shares memory: the write to arr shows in the tensor",
          shared[0].item() == 100.0)
    check(".numpy() shares memory: the write to the tensor shows in the array and in arr",
          back[1] == -1.0 and arr[1] == -1.0 and np.shares_memory(back, arr))
    return check("torch.tensor(arr) copies: it still holds the original values",
                 copied[0].item() == 0.0 and copied[1].item() == 1.0)


def compute(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.tanh(x @ w), dim=-1)          # (n, n)


def tolerance(device: torch.device) -> float:
    """atol for n * compute(...) (values of order 1) on ``device`` vs the CPU reference.

    On the CPU float32 is compared with float64: ~1e-7 relative per op, a few ops deep.
    Other kernels sum in another order (~1e-6 relative); TF32 matmul only if you enable it.
    """
    return 1e-5 if device.type == "cpu" else 1e-4


def step_7_same_result_on_device(device: torch.device, n: int) -> float:
    x, w = torch.randn(n, n), torch.randn(n, n) / n**0.5      # made on the CPU
    x_dev, w_dev = x.to(device), w.to(device)                 # .to(device): the portable way
    if device.type == "cuda":                                 # .cuda() only on the GPU you chose
        print(f"x.cuda(device) also works here: {x.cuda(device).device} "
              f"(same as x.to({str(device)!r}))")
    else:
        print(f"the selected device is {device.type}, so this note does not call x.cuda(): "
              "use x.to(device)")
    check(".to() the device a tensor is already on returns the same tensor (no copy)",
          x_dev.to(device) is x_dev)
    result = compute(x_dev, w_dev).cpu()                      # back to the CPU to compare
    if device.type == "cpu":
        print("the selected device is the CPU: comparing float32 with a float64 CPU run "
              "(a different path, not a different device)")
        reference, against = compute(x.double(), w.double()), "float64 on the CPU"
    else:
        reference, against = compute(x, w), "float32 on the CPU"
    # Each softmax row sums to 1, so entries are ~1/n: times n they are of order 1, and an
    # absolute tolerance on them means the same thing at every n.
    return check(f"compute() in float32 on {device} == {against} (both times n)",
                 result * n, reference * n, atol=tolerance(device))


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "created": step_1_creation(device),
        "views": step_2_views_and_copies(device),
        "reshaped": step_3_view_vs_reshape(device),
        "indexed": step_4_indexing(device),
        "broadcast_shapes": step_5_broadcasting(device),
        "numpy_shares_memory": step_6_numpy_round_trip(),
        "device_error": step_7_same_result_on_device(device, cfg["n"]),
    }
    print(f"summary: every rule matched NumPy; {device} float32 agrees with the CPU reference "
          f"to {results['device_error']:.1e} (outputs times n)")
    return results


if __name__ == "__main__":
    main()
