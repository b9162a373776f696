"""Playground: check your setup, take one derivative, compute one Jacobian.

Start here. The script prints what PyTorch sees on this machine, then proves a few small facts
about autograd that the rest of the series builds on.

Claims proven:
  1. ``torch.version.cuda`` is the CUDA version torch was *built* with; only
     ``torch.cuda.is_available()`` says a GPU can be used *now*. Without one, making a CUDA tensor
     raises; a tensor made with ``device=`` lives on the selected device (``t.device``).
  2. For ``y = x**3 + 2x``, autograd's ``dy/dx`` equals the closed form ``3x**2 + 2``.
  3. The Jacobian of ``g(x0, x1) = (x0*x1, sin x0, x1**2)`` built by autograd, one
     ``backward`` per output row, equals the closed form and
     ``torch.autograd.functional.jacobian``.
  4. Why autograd runs in *reverse*: a training loss is one number of many parameters. One
     backward pass gives its whole gradient; forward mode (dual numbers, ``forward_ad``) needs
     one pass per parameter to get the same vector. (For a Jacobian, reverse mode needs one
     pass per *output*: see 05.)

Things to try (the checks tell you at once whether you still agree with autograd):
  - ``python -i autograd/00_interactive_playground.py`` leaves you at a prompt with ``cubic``, ``g``
    and ``jacobian_by_rows`` defined: try ``jacobian_by_rows(g, torch.tensor([1.0, 2.0]))``.
  - Change ``cubic`` to ``x**4`` and watch claim 2 fail; then fix ``cubic_derivative``.
  - Add a fourth output to ``g`` (say ``x0 + x1``): which Jacobian row appears?

Run:  python autograd/00_interactive_playground.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import platform
import sys
import warnings

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from torchnotes import check, check_raises, make_parser, start

FULL = dict(n_points=7, n_params=64)
SMOKE = dict(n_points=3, n_params=8)


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


def first_tensor(device: torch.device) -> torch.Tensor:
    """The habit every later note follows: make a tensor where it will be used."""
    return torch.arange(3.0, device=device) ** 2          # (3,)


def step_1_environment(device: torch.device) -> dict:
    print(f"python {sys.version.split()[0]} on {platform.system()} {platform.machine()}; "
          f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads")
    cuda = torch.cuda.is_available()
    print(f"torch.version.cuda        = {torch.version.cuda}  (CUDA this torch was built with)")
    print(f"torch.cuda.is_available() = {cuda}  (a GPU and a driver usable right now)")
    if cuda:      # name the GPU that was selected (--device cuda:1 is GPU 1), not always GPU 0
        print(f"{torch.cuda.device_count()} GPU(s); selected: {torch.cuda.get_device_name(device)}")
    else:
        # A CUDA wheel without a GPU or driver raises RuntimeError ("Found no NVIDIA driver");
        # a CPU-only wheel (version.cuda None) AssertionError ("Torch not compiled with CUDA").
        error = RuntimeError if torch.version.cuda else AssertionError
        check_raises(f"built for CUDA {torch.version.cuda}, but no usable GPU: "
                     "torch.ones(1, device='cuda') raises", error, torch.ones, 1, device="cuda")
    t = first_tensor(device)
    print(f"t = arange(3.0, device={device}) ** 2: t.device = {t.device}")
    check(f"t lives on the selected device ({device})",      # "cuda" means the current GPU
          t.device.type == device.type and device.index in (None, t.device.index))
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": cuda,
            "device": str(t.device)}


def step_2_derivative(device: torch.device, n_points: int) -> float:
    x = torch.linspace(-2, 2, n_points, device=device, requires_grad=True)   # (N,) a leaf
    cubic(x).sum().backward()          # sum(): each x_i only affects its own term
    print(f"x      = {[round(v, 3) + 0.0 for v in x.detach().cpu().tolist()]}")
    print(f"x.grad = {[round(v, 3) for v in x.grad.cpu().tolist()]}")
    # The closed form is finite at every x (the points include 0). float32: 3x^2 + 2 is at most
    # 14 for |x| <= 2, and autograd multiplies in another order: an ulp or two, rtol 1e-6.
    return check("x.grad == 3x^2 + 2 (closed form)", x.grad, cubic_derivative(x.detach()),
                 rtol=1e-6)


def step_3_jacobian(device: torch.device) -> torch.Tensor:
    x = torch.tensor([0.5, -1.5], device=device)
    by_rows = jacobian_by_rows(g, x)                                          # (3, 2)
    print(f"Jacobian of g at x={x.cpu().tolist()}:\n{by_rows.cpu()}")
    # The same few float32 products and one cos: only rounding can differ (an ulp ~ 2e-7).
    check("one backward per row == closed form", by_rows, g_jacobian(x), atol=1e-6)
    check("== torch.autograd.functional.jacobian", by_rows,
          torch.autograd.functional.jacobian(g, x), atol=1e-6)
    return by_rows


def loss_of(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ w - y) ** 2).mean()                      # R^n -> R: many parameters, one number


def step_4_reverse_mode_suits_a_loss(device: torch.device, n_params: int) -> float:
    x = torch.randn(32, n_params, device=device)                              # (B, n)
    y = torch.randn(32, device=device)                                        # (B,)
    w = torch.randn(n_params, device=device, requires_grad=True)              # (n,)
    loss_of(w, x, y).backward()                           # ONE reverse pass: the whole gradient
    columns = []                                          # forward mode: one pass per parameter
    with warnings.catch_warnings():    # forward mode's first use warns about torch's own jit use
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=FutureWarning)
        for e in torch.eye(n_params, device=device):      # e = i-th unit vector
            with fwAD.dual_level():
                dual = fwAD.make_dual(w.detach(), e)      # w, carrying the direction e
                columns.append(fwAD.unpack_dual(loss_of(dual, x, y)).tangent)   # dL/dw_i
    forward = torch.stack(columns)                        # (n,)
    print(f"loss of {n_params} parameters: reverse mode 1 backward pass, "
          f"forward mode {len(columns)} passes")
    # float32 sums of 32 O(1) terms in another order: a few ulps, ~2e-7 of the largest entry.
    return check(f"one backward() gives all {n_params} partial derivatives that took "
                 f"{n_params} forward-mode passes", w.grad, forward, rtol=2e-6)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "environment": step_1_environment(device),
        "derivative_error": step_2_derivative(device, cfg["n_points"]),
        "jacobian": step_3_jacobian(device),
        "reverse_vs_forward_error": step_4_reverse_mode_suits_a_loss(device, cfg["n_params"]),
    }
    print("summary: autograd agrees with the math here; next: autograd/01_manual_gradient.py")
    return results


if __name__ == "__main__":
    main()
