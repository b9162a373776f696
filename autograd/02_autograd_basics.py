"""Autograd basics: requires_grad, backward(), the gradient-accumulation trap and no_grad().

Autograd records the operations on tensors that have ``requires_grad=True`` and ``backward()``
walks that record in reverse to fill each leaf's ``.grad``.

Claims proven:
  1. ``backward()`` on ``y = sum(x**2 + 3x)`` gives ``dy/dx = 2x + 3`` (closed form).
  2. A second ``backward()`` *adds* to ``.grad`` instead of replacing it (the trap).
  3. Zeroing ``.grad`` between steps fixes it: each step then sees one step's gradient.
  4. Accumulating is by design: ``backward()`` of two losses, one after the other, leaves
     the gradient of their sum (what multi-loss models and gradient accumulation rely on).
  5. Under ``torch.no_grad()`` nothing is recorded: results have ``requires_grad=False``
     and no ``grad_fn``. Updating a leaf in place *without* it raises ``RuntimeError``.
  6. Three ways to read a value: ``.item()`` gives a Python float (for logging);
     ``.detach()`` and ``.data`` give a tensor that shares the leaf's memory and needs no grad
     (03 shows why ``.detach()`` is the safe one).
  7. A linear model fitted with these pieces recovers its true weights (loss goes down).

Run:  python autograd/02_autograd_basics.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import torch

from torchnotes import check, check_raises, make_parser, start

FULL = dict(n_points=256, steps=300, lr=0.1)
SMOKE = dict(n_points=32, steps=60, lr=0.1)


def step_1_backward_matches_closed_form(device: torch.device) -> float:
    x = torch.linspace(-2, 2, 5, device=device, requires_grad=True)  # (5,) a leaf
    y = (x**2 + 3 * x).sum()                                          # () a scalar
    y.backward()                                                      # fills x.grad
    print(f"x        = {x.detach().cpu().tolist()}")
    print(f"x.grad   = {x.grad.cpu().tolist()}")
    # x is -2, -1, 0, 1, 2, so 2x + 3 is exact in float32 on both sides; 1e-6 only leaves room
    # for a kernel that rounds differently (an ulp of |2x + 3| <= 7 is ~5e-7).
    return check("x.grad == 2x + 3 (closed form)", x.grad, 2 * x.detach() + 3, atol=1e-6)


def step_2_grad_accumulates(device: torch.device) -> torch.Tensor:
    w = torch.tensor([1.0, -2.0], device=device, requires_grad=True)
    for call in (1, 2, 3):
        (w * 5).sum().backward()           # d/dw of sum(5w) is 5 for each entry, every call
        print(f"after backward() call {call}: w.grad = {w.grad.cpu().tolist()}")
    # Three calls without zeroing: 5 + 5 + 5.
    check("grad accumulates across backward() calls: 3 calls -> 3 * 5", w.grad,
          torch.full_like(w, 15.0))
    return w.grad.clone()


def step_3_zeroing_fixes_it(device: torch.device) -> torch.Tensor:
    w = torch.tensor([1.0, -2.0], device=device, requires_grad=True)
    for _ in range(3):
        w.grad = None                      # what optimizer.zero_grad() does by default
        (w * 5).sum().backward()
    check("with .grad reset before each backward(), the gradient is one step's: 5", w.grad,
          torch.full_like(w, 5.0))
    return w.grad.clone()


def step_4_accumulation_is_by_design(device: torch.device) -> torch.Tensor:
    w = torch.tensor([1.0, -2.0], device=device, requires_grad=True)
    loss_a = (w**2).sum()                  # say, a reconstruction loss:  grad 2w
    loss_b = (3 * w).sum()                 # and a regulariser:           grad 3
    loss_a.backward()
    loss_b.backward()                      # adds onto .grad: no need to build loss_a + loss_b
    print(f"after loss_a.backward(); loss_b.backward(): w.grad = {w.grad.cpu().tolist()}")
    # 2w + 3 with w = (1, -2) is exact in float32.
    check("two backward() calls leave the gradient of the sum: w.grad == 2w + 3", w.grad,
          2 * w.detach() + 3)
    return w.grad.clone()


def step_5_no_grad_records_nothing(device: torch.device) -> bool:
    w = torch.randn(3, device=device, requires_grad=True)
    tracked = w * 2
    with torch.no_grad():
        untracked = w * 2
    print(f"outside no_grad: requires_grad={tracked.requires_grad}, grad_fn={tracked.grad_fn}")
    print(f"inside  no_grad: requires_grad={untracked.requires_grad}, "
          f"grad_fn={untracked.grad_fn}")
    check("inside no_grad() nothing is recorded (no grad_fn, requires_grad=False)",
          tracked.grad_fn is not None and not untracked.requires_grad
          and untracked.grad_fn is None)
    (w * 2).sum().backward()

    def update_without_no_grad():
        w.sub_(0.1 * w.grad)               # the same update as step 7's, but recorded

    check_raises("updating a leaf in place outside no_grad() raises", RuntimeError,
                 update_without_no_grad, match="leaf Variable that requires grad")
    return True


def step_6_item_detach_data(device: torch.device) -> dict:
    w = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = (w**2).sum()
    value = loss.item()                    # Python float: copies one number to the host
    detached, data = w.detach(), w.data    # tensors on w's storage, outside the graph
    print(f"loss.item() = {value!r} ({type(value).__name__}); w.detach() = {detached} "
          f"(requires_grad={detached.requires_grad}); w.data = {data}")
    check(".item() is a Python float with the loss's value", isinstance(value, float)
          and value == 5.0, detail=f"{type(value).__name__} {value}")
    detached[0] = 10.0                     # a write through either one...
    data[1] = 20.0
    print(f"after detached[0] = 10 and data[1] = 20: w = {w.detach().cpu().tolist()}")
    check("detach() and .data share w's memory: both writes show in w (no copy, no grad)",
          w.detach().cpu().tolist() == [10.0, 20.0] and not detached.requires_grad
          and not data.requires_grad)
    return {"item": value, "w": w.detach()}


def step_7_fit_a_line(device: torch.device, n_points: int, steps: int, lr: float) -> dict:
    true_w, true_b = 2.0, 1.0
    x = torch.linspace(-1, 1, n_points, device=device)                 # (N,)
    y = true_w * x + true_b + 0.05 * torch.randn(n_points, device=device)
    w = torch.zeros((), device=device, requires_grad=True)
    b = torch.zeros((), device=device, requires_grad=True)
    losses = []
    for _ in range(steps):
        loss = ((w * x + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():              # the update itself must not be recorded
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad = None                      # step 3's lesson: zero before the next backward()
        b.grad = None
        losses.append(loss.item())
    print(f"fitted w = {w.item():.3f}, b = {b.item():.3f} after {steps} steps "
          f"(loss {losses[0]:.3f} -> {losses[-1]:.4f})")
    check("the loss fell below a tenth of its first value", losses[-1] < 0.1 * losses[0],
          detail=f"{losses[0]:.3f} -> {losses[-1]:.4f}")
    # Noise 0.05 on N points: the least-squares fit is within a few hundredths of the truth.
    check("fitted (w, b) recovers the true (2, 1)", torch.stack([w, b]),
          torch.tensor([true_w, true_b]), atol=0.05)
    return {"w": w.item(), "b": b.item(), "losses": losses}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "closed_form_error": step_1_backward_matches_closed_form(device),
        "accumulated_grad": step_2_grad_accumulates(device),
        "zeroed_grad": step_3_zeroing_fixes_it(device),
        "sum_of_grads": step_4_accumulation_is_by_design(device),
        "no_grad_ok": step_5_no_grad_records_nothing(device),
        "read_values": step_6_item_detach_data(device),
        "fit": step_7_fit_a_line(device, **cfg),
    }
    print(f"summary: fitted w={results['fit']['w']:.3f}, b={results['fit']['b']:.3f}")
    return results


if __name__ == "__main__":
    main()
