"""Custom autograd.Function: write forward and backward yourself, then prove backward right.

When an operation has no useful derivative (rounding) or you want a cheaper or more stable
one, subclass ``torch.autograd.Function``. ``gradcheck`` in float64 is how you test it.

Claims proven:
  1. A hand-written ``MyReLU`` equals ``torch.relu`` exactly, forward and backward (even at 0).
  2. ``MyReLU`` passes ``gradcheck`` in float64 (inputs kept away from the kink at 0).
  3. A straight-through estimator (forward ``round``, backward identity) rounds like
     ``torch.round`` and passes the upstream gradient through unchanged, where ``torch.round``'s
     own gradient is zero; ``gradcheck`` rightly rejects it (its gradient is a deliberate lie).
  4. That lie is useful: gradient descent on ``(round(w) - 3)^2`` moves ``w`` to round to 3
     with the STE, while with ``torch.round`` ``w`` never moves.
  5. A two-input ``f(x, y) = x*y + sin x`` returns both gradients ``(y + cos x, x)``, equal to
     autograd on the same expression, and passes ``gradcheck`` for both inputs.
  6. Non-tensor arguments (``clamp(x, lo, hi)``'s bounds) are kept on ``ctx`` as attributes,
     and ``backward`` returns ``None`` as their gradient: one entry per forward input.
     Forget the ``None``s and ``backward()`` raises ``RuntimeError``.
  7. Why ``.apply``: it records one graph node that runs *your* backward (``grad_fn`` is
     ``MyReLUBackward``); calling an instance, ``MyReLU()(x)``, raises ``RuntimeError``.
  8. Sign STE vs clipped STE: both binarise with ``sign``; the plain STE passes every gradient
     through, the clipped one only where ``|x| < 1`` (the gradient of ``hardtanh``, 0 at +-1
     itself): a weight far beyond +-1, where ``sign`` no longer changes, gets no gradient.

Run:  python autograd/07_custom_autograd_function.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import warnings

import torch
from torch.autograd import Function, gradcheck

from torchnotes import check, check_raises, float64_device, make_parser, start

FULL = dict(n=64, steps=100)
SMOKE = dict(n=8, steps=30)


class MyReLU(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)              # backward needs to know where x was positive
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out):              # one gradient per forward output
        (x,) = ctx.saved_tensors
        return grad_out * (x > 0).to(grad_out.dtype)   # one gradient per forward input


class RoundSTE(Function):
    """Straight-through estimator: round in the forward pass, pretend it was identity in the
    backward pass, so that quantised values can still be trained."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out                       # d round(x)/dx is 0 almost everywhere; we say 1


class XYSin(Function):
    """f(x, y) = x*y + sin(x); df/dx = y + cos(x), df/dy = x."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y + torch.sin(x)

    @staticmethod
    def backward(ctx, grad_out):
        x, y = ctx.saved_tensors
        grad_x = grad_y = None                # None for an input that needs no gradient
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * (y + torch.cos(x))
        if ctx.needs_input_grad[1]:
            grad_y = grad_out * x
        return grad_x, grad_y


def away_from(x: torch.Tensor, points: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Shift entries of x that lie within ``margin`` of a kink or jump, so the finite
    differences gradcheck takes (eps=1e-6) never straddle one."""
    near = (x.unsqueeze(-1) - points).abs().min(-1).values < margin
    return torch.where(near, x + 2 * margin, x)


def step_1_relu_matches_torch(device: torch.device, n: int) -> float:
    x = torch.randn(n, device=device)
    x[0] = 0.0                                          # the kink: both say gradient 0 there
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    out_mine, out_torch = MyReLU.apply(a), torch.relu(b)
    v = torch.randn(n, device=device)                   # an arbitrary upstream gradient
    out_mine.backward(v)
    out_torch.backward(v)
    print(f"x[:4] = {x[:4].cpu().numpy().round(3)} -> MyReLU: "
          f"{out_mine[:4].detach().cpu().numpy().round(3)}")
    check("MyReLU forward == torch.relu (exactly)", out_mine, out_torch)
    return check("MyReLU backward == torch.relu's backward (exactly, including at x = 0)",
                 a.grad, b.grad)


def step_2_relu_gradcheck(device: torch.device, n: int) -> bool:
    dev = float64_device(device)
    # float64: gradcheck divides rounding error by eps=1e-6; float32's ~1e-7 would swamp it.
    x = torch.randn(n, device=dev, dtype=torch.float64)
    x = away_from(x, torch.zeros(1, device=dev, dtype=torch.float64)).requires_grad_(True)
    return check("gradcheck(MyReLU) passes in float64", gradcheck(MyReLU.apply, (x,),
                                                                  raise_exception=False))


def step_3_straight_through(device: torch.device, n: int) -> dict:
    x = 3 * torch.randn(n, device=device)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    v = torch.randn(n, device=device)
    out = RoundSTE.apply(a)
    out.backward(v)
    torch.round(b).backward(v)
    print(f"x[:4]        = {x[:4].cpu().numpy().round(3)}")
    print(f"RoundSTE[:4] = {out[:4].detach().cpu().numpy()}; STE grad == upstream, "
          f"torch.round grad[:4] = {b.grad[:4].cpu().numpy()}")
    check("RoundSTE forward == torch.round", out, torch.round(x))
    check("RoundSTE backward is exactly the identity: x.grad == upstream gradient", a.grad, v)
    check("torch.round's own gradient is zero everywhere (nothing to learn from)",
          b.grad, torch.zeros_like(v))
    # gradcheck compares against finite differences of round(): 0 between the jumps, huge
    # across one. The STE says 1 on purpose, so a correct gradcheck must say "wrong".
    dev = float64_device(device)
    halves = torch.arange(-20, 21, device=dev, dtype=torch.float64) + 0.5    # round's jumps
    xs = away_from(x.to(dev, torch.float64), halves).requires_grad_(True)
    rejected = not gradcheck(RoundSTE.apply, (xs,), raise_exception=False)
    check("gradcheck rejects the STE (finite differences of round() are 0, the STE says 1)",
          rejected)
    return {"ste_grad": a.grad, "round_grad": b.grad}


def step_4_ste_trains(device: torch.device, steps: int, lr: float = 0.1) -> dict:
    ends = {}
    for name, rounding in (("STE", RoundSTE.apply), ("torch.round", torch.round)):
        w = torch.tensor(0.2, device=device, requires_grad=True)
        for _ in range(steps):
            loss = (rounding(w) - 3.0) ** 2
            (grad,) = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w -= lr * grad
        ends[name] = w.item()
        print(f"{name:>11}: w 0.200 -> {w.item():.3f}, round(w) = {round(w.item())}")
    check("with the STE, w learns to round to the target 3", round(ends["STE"]) == 3,
          detail=f"w = {ends['STE']:.3f}")
    check("with torch.round, w never moves (zero gradient)",
          ends["torch.round"] == torch.tensor(0.2).item(), detail=f"w = {ends['torch.round']}")
    return ends


def step_5_two_inputs(device: torch.device, n: int) -> float:
    x = torch.randn(n, device=device, requires_grad=True)
    y = torch.randn(n, device=device, requires_grad=True)
    XYSin.apply(x, y).sum().backward()
    x2, y2 = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    (x2 * y2 + torch.sin(x2)).sum().backward()                # the same expression, torch ops
    # float32: cos and a product, the same kernels either way; allow a few ulps.
    check("XYSin grads == (y + cos x, x) (closed form)", torch.stack([x.grad, y.grad]),
          torch.stack([y.detach() + torch.cos(x.detach()), x.detach()]), atol=1e-6)
    err = check("XYSin grads == autograd of x*y + sin(x)", torch.stack([x.grad, y.grad]),
                torch.stack([x2.grad, y2.grad]), atol=1e-6)
    dev = float64_device(device)
    xd = torch.randn(n, device=dev, dtype=torch.float64, requires_grad=True)
    yd = torch.randn(n, device=dev, dtype=torch.float64, requires_grad=True)
    check("gradcheck(XYSin) passes for both inputs in float64",
          gradcheck(XYSin.apply, (xd, yd), raise_exception=False))
    return err


class Clamp(Function):
    """clamp(x, lo, hi): x is a tensor; lo and hi are plain Python floats."""

    @staticmethod
    def forward(ctx, x, lo: float, hi: float):
        ctx.save_for_backward(x)              # tensors: save_for_backward
        ctx.lo, ctx.hi = lo, hi               # anything else: a plain attribute on ctx
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        inside = (x > ctx.lo) & (x < ctx.hi)  # strictly: at a bound torch.clamp passes 0
        return grad_out * inside, None, None  # one per forward input; floats get None


class ClampForgotTheNones(Clamp):
    @staticmethod
    def backward(ctx, grad_out):
        return Clamp.backward(ctx, grad_out)[0]      # only x's gradient: a common slip


def step_6_non_tensor_arguments(device: torch.device, n: int) -> float:
    x = 2 * torch.randn(n, device=device)
    x[0], x[1] = -1.0, 1.0                    # exactly on the bounds: the convention matters
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v = torch.randn(n, device=device)
    Clamp.apply(a, -1.0, 1.0).backward(v)
    torch.clamp(b, -1.0, 1.0).backward(v)
    print(f"x[:4] = {x[:4].cpu().numpy().round(3)} -> grad {a.grad[:4].cpu().numpy().round(3)}")
    err = check("Clamp(x, -1.0, 1.0) backward == torch.clamp's (exactly)", a.grad, b.grad)
    check_raises("a backward that returns 1 gradient for 3 inputs raises RuntimeError",
                 RuntimeError, lambda: ClampForgotTheNones.apply(a, -1.0, 1.0).sum().backward(),
                 match="incorrect number of gradients")
    return err


def step_7_why_apply(device: torch.device, n: int) -> str:
    x = torch.randn(n, device=device, requires_grad=True)
    node = type(MyReLU.apply(x).grad_fn).__name__
    print(f"MyReLU.apply(x).grad_fn: {node}")
    check("MyReLU.apply records one node that runs our backward: grad_fn is MyReLUBackward",
          node == "MyReLUBackward", detail=node)
    with warnings.catch_warnings():        # instantiating also warns before it fails
        warnings.simplefilter("ignore", DeprecationWarning)
        check_raises("calling an instance, MyReLU()(x), raises RuntimeError (old-style API)",
                     RuntimeError, lambda: MyReLU()(x), match="Legacy autograd function")
    return node


class SignSTE(Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)                  # binarise: -1, 0 or +1

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out                       # pretend sign was the identity


class ClippedSignSTE(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * (x.abs() < 1)       # pretend sign was hardtanh (clip to [-1, 1])


def step_8_sign_ste_vs_clipped(device: torch.device, n: int) -> dict:
    x = 2 * torch.randn(n, device=device)
    x[0], x[1], x[2] = 0.5, 3.0, 1.0          # inside [-1, 1], far outside, on the edge
    a, b, c = (x.clone().requires_grad_(True) for _ in range(3))
    v = torch.randn(n, device=device)
    SignSTE.apply(a).backward(v)
    ClippedSignSTE.apply(b).backward(v)
    torch.nn.functional.hardtanh(c).backward(v)         # the oracle for the clipped one
    print(f"x[:3] = {x[:3].tolist()}: plain STE grad {a.grad[:3].cpu().numpy().round(3)}, "
          f"clipped {b.grad[:3].cpu().numpy().round(3)} (upstream {v[:3].cpu().numpy().round(3)})")
    check("both forwards == torch.sign", torch.stack([SignSTE.apply(x), ClippedSignSTE.apply(x)]),
          torch.sign(x).expand(2, n))
    check("plain sign STE: x.grad == upstream gradient everywhere", a.grad, v)
    check("clipped STE: x.grad == hardtanh's gradient (upstream where |x| < 1, else 0)",
          b.grad, c.grad)
    return {"plain": a.grad, "clipped": b.grad}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "relu_backward_error": step_1_relu_matches_torch(device, cfg["n"]),
        "relu_gradcheck": step_2_relu_gradcheck(device, cfg["n"]),
        "straight_through": step_3_straight_through(device, cfg["n"]),
        "ste_training": step_4_ste_trains(device, cfg["steps"]),
        "two_input_error": step_5_two_inputs(device, cfg["n"]),
        "clamp_error": step_6_non_tensor_arguments(device, cfg["n"]),
        "apply_node": step_7_why_apply(device, cfg["n"]),
        "sign_ste": step_8_sign_ste_vs_clipped(device, cfg["n"]),
    }
    print(f"summary: 6 custom Functions verified; STE took w to "
          f"{results['ste_training']['STE']:.2f}")
    return results


if __name__ == "__main__":
    main()
