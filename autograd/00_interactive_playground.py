"""Playground: check your setup, take one derivative, compute one Jacobian.

Start here. The script prints what PyTorch sees on this machine, then proves two small facts
about autograd that the rest of the series builds on.

Claims proven:
  1. The environment works: torch imports, and tensors made with ``device=`` compute on the
     selected device (1 + 1 == 2 there).
  2. For ``y = x**3 + 2x``, autograd's ``dy/dx`` equals the closed form ``3x**2 + 2``.
  3. The Jacobian of ``g(x0, x1) = (x0*x1, sin x0, x1**2)`` built by autograd, one
     ``backward`` per output row, equals the closed form, ``torch.autograd.functional.jacobian``
     and ``torch.func.jacrev``.

Things to try (the checks tell you at once whether you still agree with autograd):
  - ``python -i autograd/00_interactive_playground.py`` leaves you at a prompt with ``cubic``, ``g``
    and ``jacobian_by_rows`` defined: try ``jacobian_by_rows(g, torch.tensor([1.0, 2.0]))``.
  - Change ``cubic`` to ``x**4`` and watch claim 2 fail; then fix ``cubic_derivative``.
  - Add a fourth output to ``g`` (say ``x0 + x1``): which Jacobian row appears?

Run:  python autograd/00_interactive_playground.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import platform
import sys

import numpy as np
import torch

from torchnotes import check, make_parser, start

FULL = dict(n_points=7)
SMOKE = dict(n_points=3)


def cubic(x: torch.Tensor) -> torch.Tensor:
    return x**3 + 2 * x


def cubic_derivative(x: torch.Tensor) -> torch.Tensor:
    return 3 * x**2 + 2                                   # d/dx (x^3 + 2x), by hand


def g(x: torch.Tensor) -> torch.Tensor:
    """R^2 -> R^3: x (2,) -> (x0*x1, sin x0, x1^2) (3,)."""
    return torch.stack([x[0] * x[1], torch.sin(x[0]), x[1] ** 2])


def g_jacobian(x: torch.Tensor) -> torch.Tensor:
    """Closed form: row i holds d g_i / d(x0, x1)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.stack([
        torch.stack([x[1], x[0]]),                        # d(x0*x1)
        torch.stack([torch.cos(x[0]), zero]),             # d(sin x0)
        torch.stack([zero, 2 * x[1]]),                    # d(x1^2)
    ])                                                    # (3, 2)


def jacobian_by_rows(fn, x: torch.Tensor) -> torch.Tensor:
    """One backward pass per output: row i is the gradient of output i (reverse mode)."""
    x = x.detach().requires_grad_(True)
    y = fn(x)                                             # (m,)
    rows = []
    for i in range(y.shape[0]):
        (grad,) = torch.autograd.grad(y[i], x, retain_graph=True)  # keep the graph for row i+1
        rows.append(grad)
    return torch.stack(rows)                              # (m, n)


def step_1_environment(device: torch.device) -> dict:
    print(f"python {sys.version.split()[0]} on {platform.system()} {platform.machine()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    cuda = torch.cuda.is_available()
    print(f"CUDA available: {cuda}" + (f", {torch.cuda.device_count()} GPU(s)" if cuda else "")
          # name the GPU that was selected (--device cuda:1 is GPU 1), not always GPU 0
          + (f"; selected: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    mps = getattr(torch.backends, "mps", None)
    print(f"MPS available:  {bool(mps and mps.is_available())}")
    t = torch.ones(2, device=device) + torch.ones(2, device=device)
    print(f"t = ones + ones, made with device={device}: t.device = {t.device}")
    check("1 + 1 == 2 computed on that device", t, torch.full((2,), 2.0))
    return {"torch": torch.__version__, "device": str(device)}


def step_2_derivative(device: torch.device, n_points: int) -> float:
    x = torch.linspace(-2, 2, n_points, device=device, requires_grad=True)   # (N,) a leaf
    cubic(x).sum().backward()          # sum(): each x_i only affects its own term
    print(f"x      = {[round(v, 3) + 0.0 for v in x.detach().cpu().tolist()]}")
    print(f"x.grad = {[round(v, 3) for v in x.grad.cpu().tolist()]}")
    # float32: 3x^2 + 2 for |x| <= 2 is at most 14; a few ulps of that is ~1e-6.
    return check("x.grad == 3x^2 + 2 (closed form)", x.grad, cubic_derivative(x.detach()),
                 atol=1e-5)


def step_3_jacobian(device: torch.device) -> torch.Tensor:
    x = torch.tensor([0.5, -1.5], device=device)
    by_rows = jacobian_by_rows(g, x)                                          # (3, 2)
    print(f"Jacobian of g at x={x.cpu().tolist()}:\n{by_rows.cpu()}")
    # All three compute the same few float32 products; only rounding can differ.
    check("one backward per row == closed form", by_rows, g_jacobian(x), atol=1e-6)
    check("== torch.autograd.functional.jacobian", by_rows,
          torch.autograd.functional.jacobian(g, x), atol=1e-6)
    check("== torch.func.jacrev", by_rows, torch.func.jacrev(g)(x), atol=1e-6)
    return by_rows


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "environment": step_1_environment(device),
        "derivative_error": step_2_derivative(device, **cfg),
        "jacobian": step_3_jacobian(device),
    }
    print("summary: autograd agrees with the math here; next: autograd/01_manual_gradient.py")
    return results


if __name__ == "__main__":
    main()
