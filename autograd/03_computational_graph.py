"""The computational graph: leaves, grad_fn chains, retain_graph and detach().

Every operation on a tensor that requires grad adds a node (its ``grad_fn``) to a graph that
``backward()`` walks in reverse. Knowing its shape explains most autograd surprises.

Claims proven:
  1. Tensors you create are leaves; results of operations on them are not. ``backward()`` fills
     ``.grad`` only on leaves (with the closed-form value); a non-leaf gets ``.grad`` only after
     ``retain_grad()``, and reading it otherwise gives ``None`` with a warning.
  2. ``grad_fn`` links back through ``next_functions`` to the inputs:
     ``sigmoid(x*w + 1).sum()`` walks Sum -> Sigmoid -> Add -> Mul -> AccumulateGrad(x), and
     that last node holds ``x`` itself.
  3. ``backward()`` frees the graph's saved tensors: a second call raises ``RuntimeError``;
     with ``retain_graph=True`` the second call works and adds the same gradient again.
  4. ``detach()`` cuts the graph: for ``sum(x * x.detach())`` the gradient is ``x``, not
     ``2x``; the detached tensor shares ``x``'s memory but requires no grad.
  5. Define-by-run: the graph is recorded while Python runs, so a data-dependent ``while``
     loop builds a different graph for each input (a different chain of ``grad_fn`` nodes)
     and a different gradient (``2**k`` for ``k`` doublings).
  6. ``.data`` vs ``detach()``: both share memory, but only ``detach()`` keeps the version
     counter. Change a saved tensor in place through ``detach()`` and ``backward()`` raises;
     through ``.data`` it runs and returns a silently wrong gradient.

Run:  python autograd/03_computational_graph.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import warnings

import torch

from torchnotes import check, check_raises, make_parser, start

FULL = dict(n=6)
SMOKE = dict(n=3)


def backward_path(t: torch.Tensor) -> list:
    """Graph nodes from ``t.grad_fn`` back to a leaf, always following the first input."""
    node, path = t.grad_fn, []
    while node is not None:
        path.append(node)
        node = node.next_functions[0][0] if node.next_functions else None
    return path


def print_graph(node, depth: int = 0) -> None:
    """The whole graph under ``node``, one line per node (None = an input needing no grad)."""
    name = type(node).__name__ if node is not None else "None (constant)"
    print("  " * depth + name)
    for child, _ in (node.next_functions if node is not None else ()):
        print_graph(child, depth + 1)


def rounded(t: torch.Tensor) -> list:
    return [round(v, 3) for v in t.tolist()]


def step_1_leaves_and_non_leaves(device: torch.device, n: int) -> dict:
    x = torch.randn(n, device=device, requires_grad=True)   # created by you: a leaf
    c = torch.randn(n, device=device)                        # a leaf too, needing no grad
    h = x * 2                                                # made by an op: not a leaf
    u = x * 3                                                # not a leaf either
    h.retain_grad()                                          # ask autograd to keep h.grad
    loss = (h**2 + u * c).sum()
    loss.backward()
    print(f"is_leaf: x={x.is_leaf} c={c.is_leaf} h={h.is_leaf} u={u.is_leaf}; "
          f"requires_grad: x={x.requires_grad} c={c.requires_grad} h={h.requires_grad}")
    check("x and c are leaves; h = x*2 is not, and inherits requires_grad",
          x.is_leaf and c.is_leaf and not h.is_leaf and h.requires_grad and not c.requires_grad)
    # loss = sum(4x^2 + 3xc)  =>  dloss/dx = 8x + 3c; dloss/dh = 2h.
    # float32, randn inputs: 8x + 3c reaches ~30, where an ulp is ~2e-6, and autograd takes
    # another route to it (2h * 2 + 3c): 1e-5. 2h is exact (a doubling): 1e-6 is pure slack.
    check("leaf x.grad == 8x + 3c (closed form)", x.grad, 8 * x.detach() + 3 * c, atol=1e-5)
    check("non-leaf h kept its grad after retain_grad(): h.grad == 2h", h.grad,
          2 * h.detach(), atol=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u_grad = u.grad                                      # a non-leaf without retain_grad()
    warned = any("not a leaf" in str(w.message) for w in caught)
    print(f"u.grad = {u_grad} ({len(caught)} warning(s) raised reading it)")
    return check("non-leaf u without retain_grad(): u.grad is None, and PyTorch warns",
                 u_grad is None and warned)


def step_2_grad_fn_chain(device: torch.device, n: int) -> list:
    x = torch.randn(n, device=device, requires_grad=True)
    w = torch.randn(n, device=device, requires_grad=True)
    z = torch.sigmoid(x * w + 1).sum()
    print("graph of z = sigmoid(x*w + 1).sum(), from z back to the inputs:")
    print_graph(z.grad_fn, depth=1)
    names = [type(node).__name__ for node in backward_path(z)]
    expected = ["SumBackward0", "SigmoidBackward0", "AddBackward0", "MulBackward0",
                "AccumulateGrad"]
    check("following next_functions[0] walks Sum -> Sigmoid -> Add -> Mul -> AccumulateGrad",
          names == expected, detail=" -> ".join(names))
    mul = backward_path(z)[3]
    leaves = [node.variable for node, _ in mul.next_functions]  # AccumulateGrad holds the leaf
    check("MulBackward0's two inputs end in AccumulateGrad nodes holding x and w themselves",
          leaves[0] is x and leaves[1] is w)
    return names


def step_3_retain_graph(device: torch.device, n: int) -> torch.Tensor:
    x = torch.randn(n, device=device, requires_grad=True)
    y = (x**3).sum()                      # PowBackward saves x to compute 3x^2 later
    y.backward()
    # The saved x was freed by the first call, so a second walk of the graph has nothing to use.
    check_raises("a second backward() without retain_graph=True raises RuntimeError",
                 RuntimeError, y.backward, match="second time")

    x.grad = None
    y = (x**3).sum()
    y.backward(retain_graph=True)         # keep the saved tensors
    first = x.grad.clone()
    y.backward()                          # works; and .grad accumulates
    # float32: 3x^2 for randn x reaches ~30 (an ulp ~2e-6) and PowBackward may round once
    # differently: 1e-5. The second call adds the same number, so 2 * first is exact.
    check("first backward with retain_graph gives 3x^2 (closed form)", first,
          3 * x.detach() ** 2, atol=1e-5)
    check("the second backward works and adds the same gradient: x.grad == 2 * 3x^2",
          x.grad, 2 * first, atol=1e-5)
    return x.grad


def step_4_detach_cuts_the_graph(device: torch.device, n: int) -> torch.Tensor:
    x = torch.randn(n, device=device, requires_grad=True)
    (x * x).sum().backward()
    both = x.grad.clone()                 # gradient through both factors: 2x
    x.grad = None
    frozen = x.detach()                   # same numbers, no history
    (x * frozen).sum().backward()         # only the first factor carries gradient
    print(f"x                         = {rounded(x)}")
    print(f"d/dx sum(x * x)           = {rounded(both)}")
    print(f"d/dx sum(x * x.detach())  = {rounded(x.grad)}")
    # Both gradients are x or x + x, exact in float32: 1e-6 is slack for another kernel only.
    check("without detach: d/dx sum(x*x) == 2x", both, 2 * x.detach(), atol=1e-6)
    check("with detach: d/dx sum(x * x.detach()) == x (no gradient through the detached branch)",
          x.grad, x.detach(), atol=1e-6)
    check("x.detach() shares x's memory but requires no grad and has no grad_fn",
          frozen.data_ptr() == x.data_ptr() and not frozen.requires_grad
          and frozen.grad_fn is None)
    return x.grad


def double_until_large(x: torch.Tensor, limit: float = 10.0) -> torch.Tensor:
    """Ordinary Python control flow on tensor values: how many doublings depends on x."""
    y = x
    while y.norm() < limit:                # a Python bool, read from the data
        y = y * 2                          # each pass records one more MulBackward0
    return y.sum()


def step_5_define_by_run(device: torch.device) -> dict:
    found = {}
    for start_value in (0.3, 3.0):
        x = torch.full((2,), start_value, device=device, requires_grad=True)
        y = double_until_large(x)
        y.backward()
        names = [type(node).__name__ for node in backward_path(y)]
        k = names.count("MulBackward0")
        found[start_value] = (k, x.grad.clone())
        print(f"x = {start_value}: graph {' -> '.join(names)}; x.grad = {x.grad.tolist()}")
        # sum(2^k x): the gradient is 2^k per entry, exact in float32.
        check(f"x = {start_value}: the graph holds the {k} doublings that ran, and x.grad == "
              f"2**{k}", x.grad, torch.full_like(x, 2.0**k))
    check("different inputs built different graphs (different numbers of MulBackward0)",
          found[0.3][0] != found[3.0][0], detail=f"{found[0.3][0]} vs {found[3.0][0]}")
    return found


def step_6_data_vs_detach(device: torch.device, n: int) -> torch.Tensor:
    x = torch.randn(n, device=device, requires_grad=True)
    y = torch.sigmoid(x)                   # SigmoidBackward saves y: dy/dx = y (1 - y)
    y.detach().zero_()                     # in place, through detach(): the version bumps
    check_raises("change a saved tensor through detach(): backward() refuses (RuntimeError)",
                 RuntimeError, y.sum().backward, match="modified by an inplace operation")
    true_grad = torch.sigmoid(x.detach()) * (1 - torch.sigmoid(x.detach()))
    y = torch.sigmoid(x)
    y.data.zero_()                         # the same change through .data: no version bump
    y.sum().backward()                     # runs, with y = 0 where y was saved
    print(f"true dy/dx = {rounded(true_grad)}; after the .data change x.grad = {rounded(x.grad)}")
    # y(1 - y) with y zeroed is exactly 0: the gradient is wrong and nothing said so.
    check("through .data backward() runs silently and returns a wrong gradient (0, not "
          "y(1 - y))", x.grad, torch.zeros_like(x))
    return x.grad


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "non_leaf_grad_is_none": step_1_leaves_and_non_leaves(device, **cfg),
        "grad_fn_path": step_2_grad_fn_chain(device, **cfg),
        "retained_grad": step_3_retain_graph(device, **cfg),
        "detached_grad": step_4_detach_cuts_the_graph(device, **cfg),
        "define_by_run": step_5_define_by_run(device),
        "data_grad": step_6_data_vs_detach(device, **cfg),
    }
    print(f"summary: graph {' -> '.join(results['grad_fn_path'])}")
    return results


if __name__ == "__main__":
    main()
