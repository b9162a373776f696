"""Tensors: creation, views vs copies, shape operations, indexing and broadcasting.

The everyday tensor operations, each checked against NumPy, plus the rules that bite: which
operations share memory, when ``view`` fails, how shapes broadcast. Arithmetic, NumPy and
devices follow in 09.

Claims proven:
  1. ``zeros/ones/full/arange/linspace/eye`` match NumPy, with the dtype requested
     (and PyTorch's defaults: float32 for floats, int64 for integer ``arange``).
  2. ``view`` shares storage (writes show through); ``clone`` copies; a transpose is a
     non-contiguous view and ``contiguous()`` copies it.
  3. ``view`` of a non-contiguous tensor raises ``RuntimeError``; ``reshape`` works there
     (copying) and equals NumPy's C-order reshape.
  4. Shape operations equal NumPy's: ``squeeze``/``unsqueeze`` drop and add size-1 dims;
     ``permute(2, 0, 1)`` turns an image from HWC (PIL, NumPy) into CHW (PyTorch), moving
     every pixel to ``[c, h, w]``; ``expand`` repeats without copying (stride 0, shared
     memory) where ``repeat`` copies.
  5. Basic, boolean-mask and fancy (integer-list) indexing give NumPy's results; slicing
     returns a view, mask and fancy indexing return copies.
  6. Broadcasting follows NumPy's rule (align shapes on the right; sizes must match or be 1):
     result shapes and values equal NumPy's, and an incompatible pair raises ``RuntimeError``.

Run:  python autograd/08_tensor_operations_and_gpu.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import numpy as np
import torch

from torchnotes import check, check_raises, make_parser, start

FULL = dict(height=32, width=48)
SMOKE = dict(height=4, width=6)


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
    check("reshape() works there, by copying (no shared memory), and equals NumPy's C-order "
          "reshape of t.T", not shares_memory(t, flat)
          and np.array_equal(flat.cpu().numpy(), t.cpu().numpy().T.reshape(12)))
    check("on a contiguous tensor reshape() returns a view (no copy)",
          shares_memory(t, t.reshape(4, 3)))
    return flat


def step_4_shape_operations(device: torch.device, height: int, width: int) -> dict:
    x = torch.randn(1, 3, 1, 5, device=device)                  # (1, 3, 1, 5)
    n = x.cpu().numpy()
    squeezed = x.squeeze()                                      # every size-1 dim: (3, 5)
    print(f"x {tuple(x.shape)}: squeeze() {tuple(squeezed.shape)}, squeeze(0) "
          f"{tuple(x.squeeze(0).shape)}, squeeze(0).unsqueeze(-1) "
          f"{tuple(x.squeeze(0).unsqueeze(-1).shape)}")
    check("squeeze()/squeeze(0)/unsqueeze(-1) == NumPy's squeeze/squeeze(0)/expand_dims",
          np.array_equal(squeezed.cpu().numpy(), n.squeeze())
          and np.array_equal(x.squeeze(0).cpu().numpy(), n.squeeze(0))
          and np.array_equal(x.squeeze(0).unsqueeze(-1).cpu().numpy(),
                             np.expand_dims(n.squeeze(0), -1)))

    hwc = torch.randint(0, 256, (height, width, 3), device=device, dtype=torch.uint8)
    chw = hwc.permute(2, 0, 1)                                  # (H, W, C) -> (C, H, W)
    print(f"image HWC {tuple(hwc.shape)} -> permute(2, 0, 1) -> CHW {tuple(chw.shape)}")
    check("permute(2, 0, 1): shape (C, H, W) and chw[c, h, w] == hwc[h, w, c] "
          "(NumPy's transpose(2, 0, 1))",
          np.array_equal(chw.cpu().numpy(), hwc.cpu().numpy().transpose(2, 0, 1)))

    col = torch.arange(3.0, device=device).view(3, 1)           # (3, 1)
    wide, copied = col.expand(3, 4), col.repeat(1, 4)           # both (3, 4)
    print(f"expand: stride {wide.stride()}; repeat: stride {copied.stride()}")
    check("expand == repeat == np.broadcast_to in values; expand has stride 0 and shares "
          "memory, repeat copies",
          torch.equal(wide, copied) and np.array_equal(wide.cpu().numpy(),
                                                       np.broadcast_to(col.cpu().numpy(), (3, 4)))
          and wide.stride(1) == 0 and shares_memory(col, wide)
          and not shares_memory(col, copied))
    return {"chw": chw, "expanded_stride": wide.stride()}


def step_5_indexing(device: torch.device) -> dict:
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


def step_6_broadcasting(device: torch.device) -> list:
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


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "created": step_1_creation(device),
        "views": step_2_views_and_copies(device),
        "reshaped": step_3_view_vs_reshape(device),
        "shapes": step_4_shape_operations(device, **cfg),
        "indexed": step_5_indexing(device),
        "broadcast_shapes": step_6_broadcasting(device),
    }
    print("summary: creation, views, shapes, indexing and broadcasting all matched NumPy; "
          "next: autograd/09_tensor_math_and_devices.py")
    return results


if __name__ == "__main__":
    main()
