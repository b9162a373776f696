"""Hooks: look at (and change) gradients and activations as they flow.

A tensor hook runs when a tensor's gradient is computed; a module hook runs around a layer's
forward or backward. They are how you inspect a network without editing its code.

Claims proven:
  1. A tensor hook on an intermediate ``h`` sees ``dL/dh`` (equal to the closed form).
  2. A hook that returns a new gradient replaces it: ``lambda g: -g`` at ``h`` (gradient
     reversal, as in domain-adversarial training) flips the sign of every gradient upstream
     of ``h`` (``x.grad``) and leaves those downstream (``c.grad``) alone.
  3. A module forward hook captures a layer's output: it equals recomputing that layer by hand.
  4. A full backward hook on a ``Linear`` receives ``grad_output = dL/d(out)`` and
     ``grad_input = grad_output @ W`` with the right shapes and values.
  5. ``handle.remove()`` detaches a hook: later passes no longer call it.
  6. A backward hook on ``nn.ReLU`` shows where gradients die: ``grad_input`` is
     ``grad_output`` where the input was positive and exactly 0 elsewhere.
  7. ``register_full_backward_hook`` gives the module's true ``dL/d(input)``; the deprecated
     ``register_backward_hook`` reports the last operation's inputs instead (wrong for
     ``3x + 1``: 1 where the answer is 3) and warns.

Run:  python autograd/04_hooks.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=16, d_in=8, hidden=32, d_out=4)
SMOKE = dict(batch=4, d_in=3, hidden=5, d_out=2)


def make_model(d_in: int, hidden: int, d_out: int, device: torch.device) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)).to(device)


def step_1_tensor_hook_sees_gradient(device: torch.device, batch: int) -> torch.Tensor:
    x = torch.randn(batch, device=device, requires_grad=True)
    c = torch.randn(batch, device=device)
    seen = []
    h = x**2                                    # (B,) intermediate
    h.register_hook(lambda grad: seen.append(grad.clone()))   # returns None: only looks
    (h * c).sum().backward()                    # L = sum(c * x^2): dL/dh = c, dL/dx = 2xc
    check("the hook ran once, during backward()", len(seen) == 1, detail=f"{len(seen)} call(s)")
    print(f"hook at h saw dL/dh = {seen[0][:4].cpu().numpy().round(3)} ...")
    # dL/dh is c itself (no arithmetic): 1e-6 is slack. 2xc for randn x, c is O(1-10) in
    # float32 and autograd multiplies in another order (c * 2x): a few ulps, under 1e-5.
    check("the gradient the hook saw == dL/dh == c (closed form)", seen[0], c, atol=1e-6)
    check("and x.grad == 2 x c as usual", x.grad, 2 * x.detach() * c, atol=1e-5)
    return seen[0]


def reverse_gradient(grad: torch.Tensor) -> torch.Tensor:
    return -grad                               # forward unchanged, backward sign-flipped


def step_2_gradient_reversal(device: torch.device, batch: int) -> torch.Tensor:
    x = torch.randn(batch, device=device, requires_grad=True)
    c = torch.randn(batch, device=device, requires_grad=True)
    h = x**2                                    # upstream of the hook: x
    h.register_hook(reverse_gradient)          # returns a tensor: it replaces dL/dh
    (h * c).sum().backward()                    # downstream of the hook: c
    print(f"hook returns -grad: x.grad[:4] = {x.grad[:4].cpu().numpy().round(3)}")
    # As in step 1: float32 products of O(1) randn values in another order (negation is
    # exact): a few ulps of values up to ~10, under 1e-5. x^2 for c is exact either way.
    check("upstream of the hook the gradient is reversed: x.grad == -2 x c", x.grad,
          -2 * x.detach() * c.detach(), atol=1e-5)
    check("downstream it is not: c.grad == x^2", c.grad, x.detach() ** 2, atol=1e-6)
    return x.grad


def step_3_forward_hook_captures(device, batch: int, d_in: int, hidden: int, d_out: int):
    model = make_model(d_in, hidden, d_out, device)
    captured = {}

    def save_output(module, inputs, output):    # runs right after module.forward
        captured["relu"] = output.detach()

    handle = model[1].register_forward_hook(save_output)
    x = torch.randn(batch, d_in, device=device)  # (B, d_in)
    model(x)
    handle.remove()
    print(f"forward hook on model[1] (ReLU) captured shape {tuple(captured['relu'].shape)}")
    by_hand = torch.relu(x @ model[0].weight.T + model[0].bias)  # (B, hidden)
    # Same float32 matmul; a different kernel may sum in another order.
    return check("captured activation == relu(x W1^T + b1) recomputed by hand",
                 captured["relu"], by_hand, atol=1e-5)


def step_4_backward_hook_and_removal(device, batch: int, d_in: int, hidden: int,
                                     d_out: int) -> dict:
    model = make_model(d_in, hidden, d_out, device)
    calls = []

    def save_grads(module, grad_input, grad_output):   # tuples, one entry per tensor in/out
        calls.append((grad_input[0].detach(), grad_output[0].detach()))

    handle = model[2].register_full_backward_hook(save_grads)
    x = torch.randn(batch, d_in, device=device)
    out = model(x)                                      # (B, d_out)
    (0.5 * (out**2).sum()).backward()                  # L = sum(out^2)/2  =>  dL/dout = out
    grad_in, grad_out = calls[0]
    print(f"backward hook on model[2]: grad_output {tuple(grad_out.shape)}, "
          f"grad_input {tuple(grad_in.shape)}")
    check("grad_output has the layer's output shape (B, d_out) and grad_input its input shape "
          "(B, hidden)", grad_out.shape == (batch, d_out) and grad_in.shape == (batch, hidden))
    # dL/dout = 0.5 * 2 * out: exact in float32, so 1e-6 is slack. grad_input is a float32
    # matmul over d_out <= 4 terms of O(1) values, maybe summed in another order: ~1e-7 << 1e-5.
    check("grad_output == dL/d(out) == out (closed form)", grad_out, out.detach(), atol=1e-6)
    # out = a W2^T + b2  =>  dL/da = dL/dout @ W2.
    check("grad_input == grad_output @ W2", grad_in, grad_out @ model[2].weight.detach(),
          atol=1e-5)

    handle.remove()
    (0.5 * (model(x) ** 2).sum()).backward()
    check("after handle.remove() the hook is no longer called", len(calls) == 1,
          detail=f"{len(calls)} call(s) over two backward passes")
    return {"grad_output": grad_out, "grad_input": grad_in, "calls": len(calls)}


def step_5_relu_backward_hook(device: torch.device, batch: int) -> torch.Tensor:
    relu = nn.ReLU()
    seen = {}
    relu.register_full_backward_hook(
        lambda module, grad_input, grad_output: seen.update(gin=grad_input[0],
                                                            gout=grad_output[0]))
    x = torch.randn(batch, device=device, requires_grad=True)
    relu(x).backward(torch.ones_like(x))          # upstream gradient 1 everywhere
    print(f"input[:4]       = {x[:4].detach().cpu().numpy().round(3)}")
    print(f"grad_input[:4]  = {seen['gin'][:4].cpu().numpy()} (grad_output was all 1)")
    check("ReLU's grad_input == grad_output where x > 0, exactly 0 where it is not",
          seen["gin"], seen["gout"] * (x.detach() > 0))
    return seen["gin"]


class ThreeXPlusOne(nn.Module):                   # two operations: mul, then add
    def forward(self, x):
        return 3 * x + 1


def step_6_full_vs_deprecated_hook(device: torch.device, batch: int) -> dict:
    got = {}
    full, old = ThreeXPlusOne(), ThreeXPlusOne()
    full.register_full_backward_hook(lambda m, gin, gout: got.update(full=gin[0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old.register_backward_hook(lambda m, gin, gout: got.update(old=gin[0]))
        x = torch.randn(batch, device=device, requires_grad=True)
        full(x).sum().backward()
        old(x).sum().backward()
    print(f"dL/dx is 3: full hook saw {got['full'][:3].tolist()}, deprecated hook "
          f"{got['old'][:3].tolist()}")
    check("register_full_backward_hook: grad_input == dL/dx == 3", got["full"],
          torch.full_like(x, 3.0))
    warned = [str(w.message) for w in caught if "non-full backward hook" in str(w.message)]
    check("register_backward_hook (deprecated) reports the add's input, 1, and warns",
          torch.equal(got["old"], torch.ones_like(x)) and len(warned) > 0,
          detail=f"{len(warned)} 'non-full backward hook' warning(s)")
    return got


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "seen_grad": step_1_tensor_hook_sees_gradient(device, cfg["batch"]),
        "reversed_grad": step_2_gradient_reversal(device, cfg["batch"]),
        "activation_error": step_3_forward_hook_captures(device, **cfg),
        "backward_hook": step_4_backward_hook_and_removal(device, **cfg),
        "relu_grad_input": step_5_relu_backward_hook(device, cfg["batch"]),
        "full_vs_old": step_6_full_vs_deprecated_hook(device, cfg["batch"]),
    }
    print("summary: hooks saw (and changed) exactly the gradients the chain rule predicts")
    return results


if __name__ == "__main__":
    main()
