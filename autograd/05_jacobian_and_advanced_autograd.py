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
  6. Higher derivatives of a scalar: with ``create_graph=True`` the derivative is itself
     differentiable: ``x**3`` at ``x = 3`` gives 27, 18, 6 (``3x^2``, ``6x``, ``6``).
     ``torch.autograd.grad`` returns the gradient and leaves ``x.grad`` None;
     ``backward()`` fills ``x.grad``.
  7. A Hessian-vector product ``H v`` in two reverse passes, never forming ``H``: equal to the
     closed form and ``torch.autograd.functional.hvp``.
  8. The Hessian's eigenvalues tell a minimum from a saddle: all positive for a bowl
     ``|A x|^2 + |x|^2`` (positive definite), ``(-2, 2)`` for ``x^2 - y^2`` (indefinite).
  9. ``jacfwd`` vs ``jacrev``: forward mode costs one pass per *input*, reverse one per
     *output*. Counted in FLOPs: for a tall Jacobian (many outputs) ``jacfwd`` does
     ``m / n`` times less work; for a wide one ``jacrev`` wins by the same factor.

Run:  python autograd/05_jacobian_and_advanced_autograd.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch.func import hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils.flop_counter import FlopCounterMode

from torchnotes import check, make_parser, start

FULL = dict(n=6, m=4, batch=32, many=512)
SMOKE = dict(n=3, m=2, batch=4, many=64)
# All float32 with O(1) values; the methods differ only in summation order: an ulp or a few
# (~1e-7 each; 5e-7 measured at worst), so 2e-6.
ATOL = 2e-6


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
    # would imply it). Values are float32 O(1): summed in another order, ~1e-7 < ATOL.
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


def nth_derivatives(fn, x: torch.Tensor, order: int) -> list:
    """d/dx, d2/dx2, ... of a scalar function: each grad keeps a graph for the next one."""
    x = x.detach().requires_grad_(True)
    out, values = fn(x), []
    for _ in range(order):
        (out,) = torch.autograd.grad(out, x, create_graph=True)
        values.append(out.item())
    return values


def step_6_higher_derivatives(device: torch.device) -> list:
    x = torch.tensor(3.0, device=device)
    values = nth_derivatives(lambda t: t**3, x, order=3)
    print(f"x**3 at x = 3: d/dx, d2/dx2, d3/dx3 = {values}")
    check("derivatives of x**3 at 3 == (3x^2, 6x, 6) == (27, 18, 6)", values, [27.0, 18.0, 6.0])
    a = torch.tensor(3.0, device=device, requires_grad=True)
    (ga,) = torch.autograd.grad(a**3, a)
    print(f"autograd.grad returned {ga.item()}, a.grad = {a.grad}")
    b = torch.tensor(3.0, device=device, requires_grad=True)
    (b**3).backward()
    check("autograd.grad returns the gradient and leaves .grad None; backward() fills .grad",
          a.grad is None and b.grad is not None and b.grad.item() == ga.item() == 27.0)
    return values


def hvp_by_hand(h, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v = d/dx (grad h . v): the (n, n) Hessian is never built, only vectors."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(h(x), x, create_graph=True)          # (n,)
    (hv,) = torch.autograd.grad(grad @ v, x)                           # (n,)
    return hv


def step_7_hessian_vector_product(p: dict) -> torch.Tensor:
    h, x = p["h"], p["x"]
    v = torch.randn(p["n"], device=x.device)
    hv = hvp_by_hand(h, x, v)
    print(f"H v in two backward passes: {hv.cpu().numpy().round(4)}")
    check("H v by hand == closed-form H @ v", hv, p["H"](x) @ v, atol=ATOL)
    check("== torch.autograd.functional.hvp", hv,
          torch.autograd.functional.hvp(h, x, v)[1], atol=ATOL)
    return hv


def step_8_definiteness(device: torch.device, n: int) -> dict:
    A = torch.randn(n, n, device=device)
    bowl = lambda x: (A @ x).pow(2).sum() + x.pow(2).sum()      # noqa: E731  min at 0
    saddle = lambda x: x[0] ** 2 - x[1] ** 2                      # noqa: E731
    eig_bowl = torch.linalg.eigvalsh(hessian(bowl)(torch.zeros(n, device=device)))
    eig_saddle = torch.linalg.eigvalsh(hessian(saddle)(torch.zeros(2, device=device)))
    print(f"Hessian eigenvalues: bowl {eig_bowl.cpu().numpy().round(3)}, "
          f"saddle {eig_saddle.cpu().numpy()}")
    # H = 2 (A^T A + I): every eigenvalue is at least 2, far from 0.
    check("bowl: every Hessian eigenvalue > 0 (positive definite: a minimum)",
          bool((eig_bowl > 0).all()), detail=f"smallest {eig_bowl.min().item():.3f}")
    check("saddle x^2 - y^2: eigenvalues (-2, 2) (indefinite: not a minimum)", eig_saddle,
          [-2.0, 2.0], atol=1e-6)
    return {"bowl": eig_bowl, "saddle": eig_saddle}


def flops(fn, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, forward_mode_quietly():
        fn(x)
    return counter.get_total_flops()


def step_9_jacfwd_vs_jacrev(device: torch.device, n: int, many: int) -> dict:
    W = torch.randn(many, n, device=device)                  # (m, n)
    tall = lambda x: torch.tanh(W @ x)                       # noqa: E731  R^n -> R^many
    wide = lambda x: torch.tanh(W.T @ x)                     # noqa: E731  R^many -> R^n
    x_n, x_m = torch.randn(n, device=device), torch.randn(many, device=device)
    cost = {"tall": (flops(jacfwd(tall), x_n), flops(jacrev(tall), x_n)),
            "wide": (flops(jacfwd(wide), x_m), flops(jacrev(wide), x_m))}
    for shape, (fwd, rev) in cost.items():
        print(f"{shape} Jacobian: jacfwd {fwd:,} FLOPs, jacrev {rev:,} FLOPs")
    # Exactly m/n: the FLOPs counted are the matmuls, (n x n) @ (n x m) vs (m x m) @ (m x n).
    ratio = many / n
    check(f"tall ({many} outputs, {n} inputs): jacfwd does {ratio:.0f}x fewer FLOPs",
          cost["tall"][1] * n == cost["tall"][0] * many, detail=f"{cost['tall']}")
    check(f"wide ({many} inputs, {n} outputs): jacrev does {ratio:.0f}x fewer FLOPs",
          cost["wide"][0] * n == cost["wide"][1] * many, detail=f"{cost['wide']}")
    return cost


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
        "derivatives": step_6_higher_derivatives(device),
        "hvp": step_7_hessian_vector_product(p),
        "eigenvalues": step_8_definiteness(device, cfg["n"]),
        "flops": step_9_jacfwd_vs_jacrev(device, cfg["n"], cfg["many"]),
    }
    print(f"summary: {cfg['m']}x{cfg['n']} Jacobian and {cfg['n']}x{cfg['n']} Hessian agree "
          f"across hand loops, torch.func and torch.autograd.functional")
    return results


if __name__ == "__main__":
    main()
