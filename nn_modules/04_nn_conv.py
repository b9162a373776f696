"""F.conv2d by hand: a sliding window, then unfold + matmul, with stride and padding.

A 2-D convolution slides a ``k x k`` kernel over the (zero-padded) input in steps of
``stride``; each output value is the sum of the window times the kernel, over all input
channels, plus a bias (it is a cross-correlation: the kernel is not flipped). Unfolding every
window into a column turns the whole convolution into one matrix multiply.

    out = floor((n + 2 * padding - dilation * (k - 1) - 1) / stride) + 1

Claims proven:
  1. On a 5x5 input and a 3x3 kernel, ``F.conv2d`` with stride 1 gives the 3x3 worked out by
     hand (top-left: 1*1+2*2+0*1 + 0*0+1*1+2*0 + 1*2+2*1+1*0 = 10), and equals a
     sliding-window loop for stride 1, stride 2 and padding 1.
  2. On random multi-channel batches with a bias, ``F.conv2d`` equals unfold + matmul and the
     sliding window for several stride/padding settings (and dilation for unfold).
  3. The output-size formula gives torch's output size for every size, kernel, stride,
     padding and dilation tried.

Run:  python nn_modules/04_nn_conv.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from torchnotes import check, make_parser, start

FULL = dict(batch=8, in_ch=3, out_ch=4, size=(11, 9))
SMOKE = dict(batch=2, in_ch=3, out_ch=4, size=(7, 6))

EXAMPLE_INPUT = [[1, 2, 0, 3, 1], [0, 1, 2, 3, 1], [1, 2, 1, 0, 0], [5, 2, 3, 1, 1],
                 [2, 1, 0, 1, 1]]
EXAMPLE_KERNEL = [[1, 2, 1], [0, 1, 0], [2, 1, 0]]
# Stride 1, no padding: each entry is sum(window * kernel), worked out by hand.
EXAMPLE_OUTPUT = [[10, 12, 12], [18, 16, 16], [13, 9, 3]]


def conv_out_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis of length ``n``."""
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv2d_sliding(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                   stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Convolution as the picture shows it: one window at a time. x (N,C,H,W), w (O,C,k,k)."""
    k = w.shape[-1]
    x = F.pad(x, (padding,) * 4)                                   # zeros on all four sides
    oh = (x.shape[2] - k) // stride + 1
    ow = (x.shape[3] - k) // stride + 1
    out = x.new_zeros(x.shape[0], w.shape[0], oh, ow)              # (N, O, oh, ow)
    for i, j in itertools.product(range(oh), range(ow)):
        window = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]  # (N, C, k, k)
        out[:, :, i, j] = torch.einsum("nchw,ochw->no", window, w)  # sum over C, k, k
    return out if b is None else out + b.view(1, -1, 1, 1)


def conv2d_unfold(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                  stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
    """Convolution as one matmul: every window becomes a column. x (N,C,H,W), w (O,C,k,k)."""
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (N, C*k*k, L)
    out = w.reshape(o, -1) @ cols                  # (O, C*k*k) @ (N, C*k*k, L) -> (N, O, L)
    if b is not None:
        out = out + b.view(1, -1, 1)
    oh = conv_out_size(h, k, stride, padding, dilation)
    ow = conv_out_size(wd, k, stride, padding, dilation)
    return out.view(n, o, oh, ow)                                  # L = oh * ow


def exact_atol(device: torch.device) -> float:
    """0 on the CPU; 1e-4 elsewhere: cuDNN may pick an FFT or Winograd algorithm, which
    transforms the integers into non-integers and back, so even integer inputs come out
    within float32 rounding of the exact sum (|values| <= 246 here), not bit-exact."""
    return 0.0 if device.type == "cpu" else 1e-4


def step_1_worked_example(device: torch.device) -> dict:
    x = torch.tensor(EXAMPLE_INPUT, dtype=torch.float32, device=device).reshape(1, 1, 5, 5)
    w = torch.tensor(EXAMPLE_KERNEL, dtype=torch.float32, device=device).reshape(1, 1, 3, 3)
    check("stride=1: F.conv2d == the 3x3 worked out by hand", F.conv2d(x, w)[0, 0],
          torch.tensor(EXAMPLE_OUTPUT), atol=exact_atol(device))
    outs = {}
    for stride, padding in ((1, 0), (2, 0), (1, 1)):
        got = F.conv2d(x, w, stride=stride, padding=padding)
        print(f"stride={stride} padding={padding}: {tuple(got.shape[-2:])} "
              f"{got[0, 0].int().tolist()}")
        # Small integers: every sum is exact in float32, so on the CPU we ask for equality.
        check(f"stride={stride} padding={padding}: F.conv2d == sliding window",
              got, conv2d_sliding(x, w, stride=stride, padding=padding),
              atol=exact_atol(device))
        outs[f"s{stride}p{padding}"] = got[0, 0].tolist()
    return outs


def step_2_random_batches(device: torch.device, batch: int, in_ch: int, out_ch: int,
                          size: tuple[int, int]) -> int:
    # Integer values in [-3, 3]: every product and sum is exact in float32 (and in TF32), so
    # on the CPU hand and torch agree to the last bit; see exact_atol for other devices.
    x = torch.randint(-3, 4, (batch, in_ch, *size), device=device).float()
    w = torch.randint(-3, 4, (out_ch, in_ch, 3, 3), device=device).float()
    b = torch.randint(-3, 4, (out_ch,), device=device).float()
    settings = [(1, 0, 1), (2, 0, 1), (1, 1, 1), (2, 1, 1), (3, 2, 1), (1, 2, 2)]  # s, p, dil
    for s, p, d in settings:
        ref = F.conv2d(x, w, b, stride=s, padding=p, dilation=d)
        check(f"stride={s} padding={p} dilation={d}: F.conv2d == unfold + matmul "
              f"{tuple(ref.shape)}", conv2d_unfold(x, w, b, s, p, d), ref,
              atol=exact_atol(device))
        if d == 1:
            check(f"stride={s} padding={p}: F.conv2d == sliding window",
                  conv2d_sliding(x, w, b, s, p), ref, atol=exact_atol(device))
    return len(settings)


def step_3_output_size_formula(device: torch.device) -> int:
    mismatches, tried = [], 0
    for n, k, s, p, d in itertools.product(range(5, 12), (1, 3, 5), (1, 2, 3), (0, 1, 2),
                                           (1, 2)):
        if n + 2 * p < d * (k - 1) + 1:                # kernel larger than the padded input
            continue
        x = torch.zeros(1, 1, n, n, device=device)
        w = torch.zeros(1, 1, k, k, device=device)
        got = F.conv2d(x, w, stride=s, padding=p, dilation=d).shape[-1]
        tried += 1
        if got != conv_out_size(n, k, s, p, d):
            mismatches.append((n, k, s, p, d, got))
    print(f"output-size formula tried on {tried} settings; e.g. 32x32, k=5, p=2: "
          f"{conv_out_size(32, 5, 1, 2)} (the size-keeping padding 07 uses)")
    check(f"the formula gives torch's output size in all {tried} settings", not mismatches,
          detail=f"mismatches: {mismatches[:3]}" if mismatches else "0 mismatches")
    return tried


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "example_outputs": step_1_worked_example(device),
        "random_settings": step_2_random_batches(device, **cfg),
        "sizes_tried": step_3_output_size_formula(device),
    }
    print(f"summary: hand convolutions match F.conv2d in {results['random_settings']} settings; "
          f"formula matches in {results['sizes_tried']}")
    return results


if __name__ == "__main__":
    main()
