"""Hooks: look at (and change) gradients and activations as they flow.

A tensor hook runs when a tensor's gradient is computed; a module hook runs around a layer's
forward or backward. They are how you inspect a network without editing its code.

Claims proven:
  1. A tensor hook on an intermediate ``h`` sees ``dL/dh`` (equal to the closed form).
  2. A hook that returns a new gradient replaces it: scaling by ``s`` at ``h`` scales the
     leaf's ``.grad`` by ``s`` too (chain rule downstream of the hook).
  3. A module forward hook captures a layer's output: it equals recomputing that layer by hand.
  4. A full backward hook on a ``Linear`` receives ``grad_output = dL/d(out)`` and
     ``grad_input = grad_output @ W`` with the right shapes and values.
  5. ``handle.remove()`` detaches a hook: later passes no longer call it.

Run:  python autograd/04_hooks.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import torch
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=16, d_in=8, hidden=32, d_out=4)
SMOKE = dict(batch=4, d_in=3, hidden=5, d_out=2)
SCALE = 0.5


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


def step_2_tensor_hook_rescales(device: torch.device, batch: int) -> torch.Tensor:
    x = torch.randn(batch, device=device, requires_grad=True)
    c = torch.randn(batch, device=device)
    h = x**2
    h.register_hook(lambda grad: grad * SCALE)  # returns a tensor: it replaces dL/dh
    (h * c).sum().backward()
    print(f"hook returns grad * {SCALE}: x.grad[:4] = {x.grad[:4].cpu().numpy().round(3)}")
    # As in step 1: float32 products of O(1) randn values in another order (scaling by 0.5 is
    # exact): a few ulps of values up to ~10, under 1e-5.
    return check(f"x.grad == {SCALE} * 2 x c: the rescaled gradient flowed on to the leaf",
                 x.grad, SCALE * 2 * x.detach() * c, atol=1e-5)


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


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "seen_grad": step_1_tensor_hook_sees_gradient(device, cfg["batch"]),
        "rescale_error": step_2_tensor_hook_rescales(device, cfg["batch"]),
        "activation_error": step_3_forward_hook_captures(device, **cfg),
        "backward_hook": step_4_backward_hook_and_removal(device, **cfg),
    }
    print("summary: hooks saw (and changed) exactly the gradients the chain rule predicts")
    return results


if __name__ == "__main__":
    main()
