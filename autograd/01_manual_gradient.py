"""Manual gradients: the chain rule by hand for a line fit, checked against autograd.

Before trusting autograd, do its job once: derive ``dL/dw`` and ``dL/db`` for the mean squared
error of ``y_hat = w*x + b`` with the chain rule, then use them to fit ``y = 2x + 1``.

Claims proven:
  1. The hand-derived gradients equal a central finite difference of the loss (float64).
  2. The hand-derived gradients equal autograd's ``backward()`` at random ``(w, b)``.
  3. Gradient descent with the hand gradients fits noisy ``y = 2x + 1``: the loss goes down
     and ``(w, b)`` reaches ``(2, 1)``.
  4. The same descent driven by autograd's gradients follows the same path: the loss agrees
     at every step, and so does the final ``(w, b)``.
  5. Descent lands on the least-squares answer: the normal equations ``X^T X theta = X^T y``
     (solved in one line, no iterations) give the same ``(w, b)``.
  6. The step size has a bound: for this quadratic loss descent converges only when
     ``lr < 2 / lambda_max`` (the largest eigenvalue of the loss's Hessian ``2 X^T X / N``).
     Just under it the loss falls; just over it the loss blows up.

Run:  python autograd/01_manual_gradient.py        (about 1 s on a laptop CPU)
"""

from __future__ import annotations

import torch

from torchnotes import check, float64_device, make_parser, start

FULL = dict(n_points=256, steps=300, lr=0.1)
SMOKE = dict(n_points=32, steps=300, lr=0.1)
TRUE_W, TRUE_B = 2.0, 1.0


def manual_gradients(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Loss and (dL/dw, dL/db) for L = mean((w*x + b - y)^2), by the chain rule.

    Forward, keeping every intermediate:   y_hat = w*x + b,  r = y_hat - y,  L = mean(r^2).
    Backward, from L back to the inputs:
      dL/dr_i     = 2 r_i / N                  (derivative of mean(r^2))
      dL/dy_hat_i = dL/dr_i * 1                (r = y_hat - y)
      dL/dw       = sum_i dL/dy_hat_i * x_i    (y_hat_i = w x_i + b; w is shared by all i)
      dL/db       = sum_i dL/dy_hat_i * 1
    """
    n = x.shape[0]
    y_hat = w * x + b                       # (N,)
    r = y_hat - y                           # (N,)
    loss = (r**2).mean()                    # ()
    d_r = 2 * r / n                         # (N,)
    d_w = (d_r * x).sum()                   # ()
    d_b = d_r.sum()                         # ()
    return loss, d_w, d_b


def make_data(n_points: int, device: torch.device, dtype=torch.float32):
    x = torch.linspace(-1, 1, n_points, device=device, dtype=dtype)          # (N,)
    y = TRUE_W * x + TRUE_B + 0.05 * torch.randn(n_points, device=device, dtype=dtype)
    return x, y


def step_1_hand_equals_finite_difference(device: torch.device, n_points: int) -> float:
    dev = float64_device(device)
    x, y = make_data(n_points, dev, torch.float64)
    w = torch.tensor(0.3, device=dev, dtype=torch.float64)
    b = torch.tensor(-0.7, device=dev, dtype=torch.float64)
    _, d_w, d_b = manual_gradients(w, b, x, y)
    h = 1e-6

    def loss(w_, b_):
        return ((w_ * x + b_ - y) ** 2).mean()

    fd_w = (loss(w + h, b) - loss(w - h, b)) / (2 * h)     # central difference: error O(h^2)
    fd_b = (loss(w, b + h) - loss(w, b - h)) / (2 * h)
    print(f"hand (dL/dw, dL/db)        = ({d_w.item():.6f}, {d_b.item():.6f})")
    print(f"finite difference, h=1e-6  = ({fd_w.item():.6f}, {fd_b.item():.6f})")
    # The loss is quadratic, so the central difference is exact up to float64 rounding:
    # ~1e-16 * |L| / h ~ 1e-10.
    return check("hand gradient == central finite difference (float64)",
                 torch.stack([d_w, d_b]), torch.stack([fd_w, fd_b]), atol=1e-8)


def step_2_hand_equals_autograd(device: torch.device, n_points: int, trials: int = 3) -> float:
    x, y = make_data(n_points, device)
    hand, auto = [], []
    for _ in range(trials):
        w = torch.randn((), device=device, requires_grad=True)
        b = torch.randn((), device=device, requires_grad=True)
        _, d_w, d_b = manual_gradients(w.detach(), b.detach(), x, y)
        ((w * x + b - y) ** 2).mean().backward()          # autograd fills w.grad, b.grad
        print(f"w={w.item():+.3f} b={b.item():+.3f}: hand ({d_w.item():+.5f}, {d_b.item():+.5f})"
              f"  autograd ({w.grad.item():+.5f}, {b.grad.item():+.5f})")
        hand.append(torch.stack([d_w, d_b]))
        auto.append(torch.stack([w.grad, b.grad]))
    # float32: the same math, possibly summed in a different order; gradients are O(1-10).
    return check(f"hand (dL/dw, dL/db) == autograd's (w.grad, b.grad) at {trials} random points",
                 torch.stack(hand), torch.stack(auto), atol=1e-5)


def descend(x, y, steps: int, lr: float, grad_fn):
    """Plain gradient descent from (0, 0); ``grad_fn(w, b) -> (loss, d_w, d_b)``."""
    w = torch.zeros((), device=x.device)
    b = torch.zeros((), device=x.device)
    losses = []
    for _ in range(steps):
        loss, d_w, d_b = grad_fn(w, b)
        w, b = w - lr * d_w, b - lr * d_b
        losses.append(loss.item())
    return w, b, losses


def autograd_gradients(x, y):
    def grad_fn(w, b):
        w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        loss = ((w * x + b - y) ** 2).mean()
        d_w, d_b = torch.autograd.grad(loss, (w, b))
        return loss.detach(), d_w, d_b
    return grad_fn


def step_3_fit_with_hand_gradients(device, n_points: int, steps: int, lr: float) -> dict:
    x, y = make_data(n_points, device)
    w, b, losses = descend(x, y, steps, lr, lambda w, b: manual_gradients(w, b, x, y))
    print(f"hand gradients: w = {w.item():.3f}, b = {b.item():.3f} after {steps} steps "
          f"(loss {losses[0]:.3f} -> {losses[-1]:.4f})")
    check("the loss went down", losses[-1] < 0.1 * losses[0],
          detail=f"{losses[0]:.3f} -> {losses[-1]:.4f}")
    # Noise 0.05 on N points: least squares lands within a few hundredths of the truth, and
    # 60+ steps at lr 0.1 close the gap from (0, 0) to well under that.
    check("fitted (w, b) reaches the true (2, 1)", torch.stack([w, b]),
          torch.tensor([TRUE_W, TRUE_B]), atol=0.05)
    return {"w": w.item(), "b": b.item(), "losses": losses}


def step_4_autograd_follows_the_same_path(device, n_points: int, steps: int, lr: float,
                                          hand: dict) -> dict:
    x, y = make_data(n_points, device)
    w_a, b_a, losses = descend(x, y, steps, lr, autograd_gradients(x, y))
    print(f"autograd gradients: w = {w_a.item():.3f}, b = {b_a.item():.3f} "
          f"(loss {losses[0]:.3f} -> {losses[-1]:.4f})")
    # Identical updates up to float32 rounding: the losses are O(1) (at most ~2.5), where an
    # ulp is ~2e-7, so a few ulps of drift over the steps stays under 1e-6.
    check(f"descent with autograd's gradients has the same loss at all {steps} steps",
          losses, hand["losses"], atol=1e-6)
    # w, b (~2 and ~1) accumulate every step's rounding: a few ulps of 2 is ~1e-6; 1e-5.
    check("descent with autograd's gradients ends at the same (w, b)",
          torch.stack([w_a, b_a]), torch.tensor([hand["w"], hand["b"]]), atol=1e-5)
    return {"w": w_a.item(), "b": b_a.item(), "losses": losses}


def design_matrix(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, torch.ones_like(x)], dim=1)    # (N, 2): y_hat = X @ (w, b)


def step_5_normal_equations(device, n_points: int, fit: dict) -> torch.Tensor:
    dev = float64_device(device)
    x, y = (t.to(dev, torch.float64) for t in make_data(n_points, device))
    X = design_matrix(x)                                               # (N, 2)
    theta = torch.linalg.solve(X.T @ X, X.T @ y)                       # (2,) = (w, b)
    print(f"normal equations: w = {theta[0].item():.5f}, b = {theta[1].item():.5f}; "
          f"descent: w = {fit['w']:.5f}, b = {fit['b']:.5f}")
    # Both fit the same data (float32 descent vs float64 solve). The slowest direction of the
    # descent shrinks by (1 - lr * lambda_min) ~ 0.93 a step: 300 steps leave ~1e-9, so what
    # is left is float32 rounding of w, b (an ulp of 2 is 2.4e-7): 1e-5.
    check("descent's (w, b) == the normal-equation solution (X^T X)^-1 X^T y",
          torch.tensor([fit["w"], fit["b"]]), theta, atol=1e-5)
    return theta


def lr_bound(x: torch.Tensor) -> float:
    """2 / lambda_max of the Hessian of mean((w x + b - y)^2), which is 2 X^T X / N."""
    X = design_matrix(x)
    hessian = 2 * X.T @ X / x.shape[0]                                 # (2, 2), constant
    return 2 / torch.linalg.eigvalsh(hessian).max().item()


def step_6_learning_rate_bound(device, n_points: int, steps: int = 50) -> dict:
    x, y = make_data(n_points, device)
    bound = lr_bound(x)
    ends = {}
    for factor in (0.9, 1.1):
        _, _, losses = descend(x, y, steps, factor * bound,
                               lambda w, b: manual_gradients(w, b, x, y))
        ends[factor] = losses
        print(f"lr = {factor} x bound = {factor * bound:.3f}: loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3g} after {steps} steps")
    check(f"just under the bound {bound:.3f} the loss falls",
          ends[0.9][-1] < 0.01 * ends[0.9][0], detail=f"{ends[0.9][-1]:.3g}")
    check("just over it the loss grows step after step (descent diverges)",
          ends[1.1][-1] > 10 * ends[1.1][0], detail=f"{ends[1.1][-1]:.3g}")
    return {"bound": bound, "under": ends[0.9][-1], "over": ends[1.1][-1]}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "finite_difference_error": step_1_hand_equals_finite_difference(device,
                                                                        cfg["n_points"]),
        "autograd_error": step_2_hand_equals_autograd(device, cfg["n_points"]),
    }
    torch.manual_seed(args.seed)           # the same noisy data for steps 3 and 4
    results["fit"] = step_3_fit_with_hand_gradients(device, **cfg)
    torch.manual_seed(args.seed)
    results["fit_autograd"] = step_4_autograd_follows_the_same_path(device, **cfg,
                                                                    hand=results["fit"])
    torch.manual_seed(args.seed)
    results["normal_equations"] = step_5_normal_equations(device, cfg["n_points"], results["fit"])
    results["lr_bound"] = step_6_learning_rate_bound(device, cfg["n_points"])
    print(f"summary: y = {results['fit']['w']:.3f} x + {results['fit']['b']:.3f} "
          f"with gradients derived by hand")
    return results


if __name__ == "__main__":
    main()
