"""VJP, JVP, Jacobian and Hessian: by hand with autograd loops, then with torch.func.

``backward(v)`` computes a vector-Jacobian product ``v^T J``; everything else (full Jacobians,
Jacobian-vector products, Hessians) can be built from it. ``torch.func`` does the same in one
call and composes with ``vmap``.

Claims proven, for ``f(x) = A tanh(x)`` (R^n -> R^m) and ``h(x) = x^T Q x / 2 + sum(sin x)``:
  1. VJP: ``y.backward(v)`` leaves ``v^T J`` in ``x.grad``; equal to the closed form
     ``v^T A diag(1 - tanh^2 x)``, ``torch.func.vjp`` and ``torch.autograd.functional.vjp``.
  2. Jacobian by hand (one ``autograd.grad`` per output row) equals the closed form,
     ``torch.func.jacrev``, ``torch.func.jacfwd`` and ``torch.autograd.functional.jacobian``.
  3. JVP ``J u`` by the double-VJP trick equals ``J u``, forward-mode ``torch.func.jvp`` and
     ``torch.autograd.functional.jvp``.
  4. Hessian by hand (gradient with ``create_graph=True``, then one more ``grad`` per entry)
     is symmetric, as mixed partials of a smooth function must be, and equals the closed form
     ``(Q + Q^T)/2 - diag(sin x)``, ``torch.func.hessian`` and
     ``torch.autograd.functional.hessian``.
  5. ``vmap(jacrev(f))`` gives every per-sample Jacobian of a batch at once, equal to a loop.

Run:  python autograd/05_jacobian_and_advanced_autograd.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch.func import hessian, jacfwd, jacrev, jvp, vjp, vmap

from torchnotes import check, make_parser, start

FULL = dict(n=6, m=4, batch=32)
SMOKE = dict(n=3, m=2, batch=4)
# All float32 with O(1) values; the methods differ only in summation order: ~1e-7 each.
ATOL = 1e-5


def vjp_by_hand(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v^T J`` with one backward pass: backward(v) weights each output's gradient by v."""
    x = x.detach().requires_grad_(True)
    f(x).backward(v)
    return x.grad                                            # (n,)


def jacobian_by_hand(f, x: torch.Tensor) -> torch.Tensor:
    """Row i of J = gradient of output i: one reverse pass per output."""
    x = x.detach().requires_grad_(True)
    y = f(x)                                                 # (m,)
    rows = [torch.autograd.grad(y[i], x, retain_graph=True)[0] for i in range(y.shape[0])]
    return torch.stack(rows)                                 # (m, n)


def jvp_by_double_vjp(f, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``J u`` from two reverse passes: g(v) = v^T J is linear in v, and d(g . u)/dv = J u."""
    x = x.detach().requires_grad_(True)
    y = f(x)                                                 # (m,)
    v = torch.zeros_like(y, requires_grad=True)              # any value works: g is linear
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)   # (n,) v^T J, a function of v
    (ju,) = torch.autograd.grad(g, v, u)                     # (m,) J u
    return ju


def hessian_by_hand(h, x: torch.Tensor) -> torch.Tensor:
    """Differentiate the gradient: create_graph=True makes the gradient itself differentiable."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(h(x), x, create_graph=True)          # (n,)
    rows = [torch.autograd.grad(grad[i], x, retain_graph=True)[0] for i in range(x.shape[0])]
    return torch.stack(rows)                                           # (n, n)


@contextmanager
def forward_mode_quietly():
    """Forward mode's first use loads decompositions that call torch.jit.script internally,
    which emits a FutureWarning about PyTorch's own code, not ours: silence just that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=FutureWarning)
        yield


def make_problem(n: int, m: int, device: torch.device) -> dict:
    A = torch.randn(m, n, device=device)                     # (m, n)
    Q = torch.randn(n, n, device=device)                     # (n, n), not symmetric
    return {
        "f": lambda x: A @ torch.tanh(x),                    # R^n -> R^m
        "J": lambda x: A * (1 - torch.tanh(x) ** 2),         # closed form (m, n)
        "h": lambda x: 0.5 * x @ Q @ x + torch.sin(x).sum(),  # R^n -> R
        "H": lambda x: 0.5 * (Q + Q.T) - torch.diag(torch.sin(x)),  # closed form (n, n)
        "x": torch.randn(n, device=device),
        "n": n, "m": m,
    }


def step_1_vjp(p: dict) -> torch.Tensor:
    f, x = p["f"], p["x"]
    v = torch.randn(p["m"], device=x.device)
    by_hand = vjp_by_hand(f, x, v)
    print(f"v^T J by backward(v): {by_hand.cpu().numpy().round(4)}")
    check("backward(v) == v^T J (closed form)", by_hand, v @ p["J"](x), atol=ATOL)
    _, pullback = vjp(f, x)
    check("== torch.func.vjp", by_hand, pullback(v)[0], atol=ATOL)
    check("== torch.autograd.functional.vjp", by_hand,
          torch.autograd.functional.vjp(f, x, v)[1], atol=ATOL)
    return by_hand


def step_2_jacobian(p: dict) -> torch.Tensor:
    f, x = p["f"], p["x"]
    J = jacobian_by_hand(f, x)
    print(f"Jacobian by hand, shape {tuple(J.shape)} (m outputs x n inputs), "
          f"{p['m']} backward passes")
    check("Jacobian by hand == closed form A diag(1 - tanh^2 x)", J, p["J"](x), atol=ATOL)
    check("== torch.func.jacrev (reverse mode)", J, jacrev(f)(x), atol=ATOL)
    with forward_mode_quietly():
        forward = jacfwd(f)(x)
    check("== torch.func.jacfwd (forward mode)", J, forward, atol=ATOL)
    check("== torch.autograd.functional.jacobian", J,
          torch.autograd.functional.jacobian(f, x), atol=ATOL)
    return J


def step_3_jvp(p: dict) -> torch.Tensor:
    f, x = p["f"], p["x"]
    u = torch.randn(p["n"], device=x.device)
    ju = jvp_by_double_vjp(f, x, u)
    print(f"J u by the double-VJP trick: {ju.cpu().numpy().round(4)}")
    check("double-VJP trick == J u (closed form)", ju, p["J"](x) @ u, atol=ATOL)
    with forward_mode_quietly():
        forward = jvp(f, (x,), (u,))[1]
    check("== torch.func.jvp (forward mode, one pass)", ju, forward, atol=ATOL)
    check("== torch.autograd.functional.jvp", ju,
          torch.autograd.functional.jvp(f, x, u)[1], atol=ATOL)
    return ju


def step_4_hessian(p: dict) -> torch.Tensor:
    h, x = p["h"], p["x"]
    H = hessian_by_hand(h, x)
    print(f"Hessian by hand, shape {tuple(H.shape)}, {p['n'] + 1} backward passes")
    # Row i is d(dh/dx_i)/dx, a separate backward pass per row, so H[i, j] and H[j, i] come
    # from different passes. They must agree: for a smooth h the mixed partials commute
    # (Schwarz). Checked first, as it needs no closed form (the symmetric closed form below
    # would imply it). Values are float32 O(1): summed in another order, ~1e-7 << ATOL.
    check("the Hessian by hand is symmetric (mixed partials commute)", H, H.T, atol=ATOL)
    check("Hessian by hand == (Q + Q^T)/2 - diag(sin x) (closed form)", H, p["H"](x), atol=ATOL)
    check("== torch.func.hessian", H, hessian(h)(x), atol=ATOL)
    check("== torch.autograd.functional.hessian", H,
          torch.autograd.functional.hessian(h, x), atol=ATOL)
    return H


def step_5_vmap_per_sample_jacobians(p: dict, batch: int) -> torch.Tensor:
    xs = torch.randn(batch, p["n"], device=p["x"].device)   # (B, n)
    batched = vmap(jacrev(p["f"]))(xs)                       # (B, m, n) in one call
    looped = torch.stack([jacobian_by_hand(p["f"], x) for x in xs])
    print(f"vmap(jacrev(f)) over a batch of {batch}: shape {tuple(batched.shape)}")
    return check("vmap(jacrev(f))(xs) == a Python loop of per-sample Jacobians", batched,
                 looped, atol=ATOL)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    p = make_problem(cfg["n"], cfg["m"], device)
    results = {
        "vjp": step_1_vjp(p),
        "jacobian": step_2_jacobian(p),
        "jvp": step_3_jvp(p),
        "hessian": step_4_hessian(p),
        "vmap_error": step_5_vmap_per_sample_jacobians(p, cfg["batch"]),
    }
    print(f"summary: {cfg['m']}x{cfg['n']} Jacobian and {cfg['n']}x{cfg['n']} Hessian agree "
          f"across hand loops, torch.func and torch.autograd.functional")
    return results


if __name__ == "__main__":
    main()
