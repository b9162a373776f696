"""Training tricks built on autograd: accumulation, clipping, gradcheck, frozen parameters.

``.grad`` adds up across ``backward()`` calls (the trap of 02) and that is exactly what
gradient accumulation uses; the other tricks are small tools every training loop reaches for.

Claims proven:
  1. Accumulating over k equal micro-batches, each loss scaled by 1/k, gives the same gradient
     (and the same optimiser step) as one big batch; without the 1/k it is k times too big.
  2. ``clip_grad_norm_`` returns the pre-clip total norm (equal to the norm computed by hand),
     leaves a total norm of at most ``max_norm``, and keeps the gradient's direction.
  3. A central difference written by hand, ``(f(x + h e_i) - f(x - h e_i)) / 2h`` in float64,
     equals autograd's gradient; ``gradcheck`` automates exactly that, and rejects a gradient
     that a hook deliberately doubles.
  4. Frozen parameters (``requires_grad_(False)``) get no gradient (``.grad`` stays ``None``)
     and an optimiser step, even AdamW with weight decay, leaves them unchanged.
  5. The caveat: a layer frozen after it was trained, whose ``.grad`` is then a zero tensor
     rather than ``None`` (``zero_grad(set_to_none=False)``), *is* changed by AdamW's weight
     decay, to ``w (1 - lr wd)``. An optimiser built from
     ``filter(lambda p: p.requires_grad, ...)`` never touches it.
  6. ``torch.inference_mode()`` is ``no_grad`` made stricter (and faster): its tensors are
     marked as inference tensors and autograd rejects them later.

Run:  python autograd/06_gradient_accumulation_and_tricks.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from torchnotes import check, check_raises, float64_device, make_parser, start

FULL = dict(micro_batch=64, k=8, d_in=16, hidden=64)
SMOKE = dict(micro_batch=4, k=4, d_in=4, hidden=8)


def make_model(d_in: int, hidden: int, device: torch.device) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(device)


def grads_of(model: nn.Module) -> torch.Tensor:
    """Every parameter's gradient, flattened into one vector."""
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def full_batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()          # mean over the whole batch
    return grads_of(model)


def accumulated_gradient(model, x, y, k: int, scale: bool = True) -> torch.Tensor:
    """k backward() calls on k equal chunks; .grad sums them. Scaling by 1/k turns the sum of
    k chunk means into the mean over the whole batch (true only for equal-size chunks and a
    mean loss; BatchNorm, which sees each chunk separately, would also break it)."""
    model.zero_grad()
    for xb, yb in zip(x.chunk(k), y.chunk(k), strict=True):
        loss = nn.functional.mse_loss(model(xb), yb)
        (loss / k if scale else loss).backward()              # no zero_grad in between
    return grads_of(model)


def params_after_sgd_step(model: nn.Module, fill_grads, lr: float = 0.1) -> torch.Tensor:
    """Copy the model, fill its .grad with ``fill_grads(copy)``, take one SGD step."""
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=lr)
    fill_grads(clone)
    opt.step()
    return torch.cat([p.detach().flatten() for p in clone.parameters()])


def step_1_accumulation(device, micro_batch: int, k: int, d_in: int, hidden: int) -> float:
    model = make_model(d_in, hidden, device)
    x = torch.randn(micro_batch * k, d_in, device=device)    # (k*m, d_in)
    y = torch.randn(micro_batch * k, 1, device=device)       # (k*m, 1)
    big = full_batch_gradient(model, x, y)
    acc = accumulated_gradient(model, x, y, k)
    print(f"{k} micro-batches of {micro_batch} vs one batch of {micro_batch * k}: "
          f"|grad| = {acc.norm():.4f} vs {big.norm():.4f}")
    # float32, O(1) gradients, summed in a different order: differences of ~1e-7.
    err = check(f"accumulated (loss/{k}) gradient == big-batch gradient", acc, big, atol=2e-6)
    unscaled = accumulated_gradient(model, x, y, k, scale=False)
    # k times larger values carry k times larger rounding: k times the tolerance.
    check(f"without the 1/{k} the accumulated gradient is {k}x the big-batch one", unscaled,
          k * big, atol=k * 2e-6)

    after_big = params_after_sgd_step(model, lambda m: full_batch_gradient(m, x, y))
    after_acc = params_after_sgd_step(model, lambda m: accumulated_gradient(m, x, y, k))
    # Parameters are O(1) in float32 (an ulp ~1e-7); the two gradients differ by ~1e-7 and
    # lr = 0.1 shrinks that: the updated parameters agree to an ulp or two, under 1e-6.
    check("one SGD step after accumulation == one step on the big batch", after_acc, after_big,
          atol=1e-6)
    return err


def step_2_clipping(device, d_in: int, hidden: int, max_norm: float = 1.0) -> dict:
    model = make_model(d_in, hidden, device)
    x, y = torch.randn(32, d_in, device=device), torch.randn(32, 1, device=device)
    (100 * nn.functional.mse_loss(model(x), y)).backward()   # a deliberately big gradient
    before = grads_of(model).clone()
    by_hand = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    returned = nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    after = grads_of(model)
    print(f"total grad norm: by hand {by_hand:.3f}, returned {returned:.3f}, "
          f"after clipping {after.norm():.4f} (max_norm={max_norm})")
    # Both are float32 norms of the same numbers, summed in another order (clip_grad_norm_
    # takes a norm per parameter, then the norm of those): ~1e-7 relative, so rtol 1e-5.
    check("clip_grad_norm_ returns the pre-clip norm == sqrt(sum of squared grads)",
          returned, by_hand, rtol=1e-5)
    # clip_grad_norm_ multiplies by max_norm / (norm + 1e-6), so it lands just under max_norm;
    # recomputing the norm in float32 may round up by an ulp or two, hence the 1e-6 slack.
    check(f"after clipping the total norm is <= max_norm = {max_norm}",
          after.norm().item() <= max_norm * (1 + 1e-6), detail=f"{after.norm().item():.7f}")
    # Only rescaled: the direction is kept (cosine 1: float32 sums of ~d numbers, ~1e-7 off).
    cosine = nn.functional.cosine_similarity(after, before, dim=0)
    check("clipping only rescales: the gradient keeps its direction (cosine == 1)", cosine,
          torch.tensor(1.0, device=device), atol=1e-6)
    return {"pre_clip_norm": returned.item(), "post_clip_norm": after.norm().item()}


def central_difference(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / 2h, one pair of calls per entry of x."""
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[i] = h                                      # h in entry i, 0 elsewhere
        grad.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)    # error O(h^2)
    return grad


def step_3_finite_differences(device: torch.device, d_in: int) -> bool:
    dev = float64_device(device)
    # float64: a difference quotient divides rounding error by h=1e-6; float32's ~1e-7 of the
    # value would swamp the derivative.
    x = torch.randn(3, d_in, device=dev, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_in, 2, device=dev, dtype=torch.float64, requires_grad=True)

    def layer(x, w):
        return torch.tanh(x @ w)                                 # (3, 2)

    layer(x, w).sum().backward()
    by_hand = central_difference(lambda w_: layer(x.detach(), w_).sum(), w.detach())
    # Truncation O(h^2) ~ 1e-12 plus rounding ~1e-16 / h ~ 1e-10: 1e-8 leaves room, and an
    # O(h) one-sided difference (error ~1e-6) would not fit.
    check("autograd's dL/dw == a central difference by hand (float64)", w.grad, by_hand,
          atol=1e-8)

    def layer_with_wrong_gradient(x, w):
        xw = x @ w
        xw.register_hook(lambda grad: 2 * grad)                  # 04's hook, used to sabotage
        return torch.tanh(xw)

    ok = torch.autograd.gradcheck(layer, (x, w), raise_exception=False)
    check("gradcheck(tanh(x @ w)) passes in float64", ok)
    caught = not torch.autograd.gradcheck(layer_with_wrong_gradient, (x, w),
                                          raise_exception=False)
    return check("gradcheck fails when a hook doubles the gradient (it is a real test)", caught)


def step_4_frozen_parameters(device: torch.device, d_in: int, hidden: int) -> dict:
    model = make_model(d_in, hidden, device)
    model[0].requires_grad_(False)                               # freeze the first layer
    frozen_before = [p.detach().clone() for p in model[0].parameters()]
    head_before = [p.detach().clone() for p in model[2].parameters()]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"trainable parameters: {trainable} of {total}")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = torch.randn(8, d_in, device=device), torch.randn(8, 1, device=device)
    nn.functional.mse_loss(model(x), y).backward()
    check("frozen layer: .grad stays None; the head's .grad is filled",
          all(p.grad is None for p in model[0].parameters())
          and all(p.grad is not None for p in model[2].parameters()))
    opt.step()          # AdamW skips parameters whose .grad is None: no update, no decay
    check("after AdamW.step() the frozen weights are bit-for-bit unchanged",
          all(torch.equal(a, b) for a, b in zip(model[0].parameters(), frozen_before,
                                                strict=True)))
    check("... while the trainable head did change",
          all(not torch.equal(a, b) for a, b in zip(model[2].parameters(), head_before,
                                                    strict=True)))
    return {"trainable": trainable, "total": total}


def step_5_weight_decay_caveat(device: torch.device, d_in: int, hidden: int,
                               lr: float = 0.1, wd: float = 0.1) -> dict:
    model = make_model(d_in, hidden, device)
    x, y = torch.randn(8, d_in, device=device), torch.randn(8, 1, device=device)
    every = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    nn.functional.mse_loss(model(x), y).backward()               # trained with the rest ...
    model[0].requires_grad_(False)                               # ... then frozen
    every.zero_grad(set_to_none=False)                           # .grad: zeros, not None
    before = model[0].weight.detach().clone()
    nn.functional.mse_loss(model(x), y).backward()
    every.step()
    print(f"AdamW over all parameters: frozen weight scaled by "
          f"{(model[0].weight / before).mean().item():.4f} (1 - lr*wd = {1 - lr * wd})")
    # AdamW: w <- w (1 - lr wd), then the Adam step, which is 0 for a zero gradient. float32.
    check("the frozen layer was still decayed: w == w_before * (1 - lr * wd)",
          model[0].weight, before * (1 - lr * wd), atol=1e-7)

    model[0].weight.copy_(before)             # reset (frozen: in place is allowed); redo
    trainable = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()),
                                  lr=lr, weight_decay=wd)
    nn.functional.mse_loss(model(x), y).backward()
    trainable.step()
    check("with filter(lambda p: p.requires_grad, ...) the frozen weights stay put",
          torch.equal(model[0].weight, before))
    return {"optimised_tensors": len(trainable.param_groups[0]["params"])}


def step_6_inference_mode(device: torch.device, d_in: int, hidden: int) -> bool:
    model = make_model(d_in, hidden, device)
    x = torch.randn(4, d_in, device=device)
    with torch.inference_mode():                                 # for evaluation and serving
        features = model[0](x)                                   # (4, hidden)
    print(f"made in inference_mode: requires_grad={features.requires_grad}, "
          f"is_inference()={features.is_inference()}")
    head = nn.Linear(hidden, 1).to(device)
    check_raises("an inference tensor cannot be saved for backward later (RuntimeError)",
                 RuntimeError, head, features, match="Inference tensors cannot be saved")
    out = head(features.clone())                                 # a clone is a normal tensor
    return check("its .clone() is a normal tensor that autograd accepts",
                 out.requires_grad and not features.clone().is_inference())


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        "accumulation_error": step_1_accumulation(device, **cfg),
        "clipping": step_2_clipping(device, cfg["d_in"], cfg["hidden"]),
        "gradcheck_caught_wrong_grad": step_3_finite_differences(device, cfg["d_in"]),
        "frozen": step_4_frozen_parameters(device, cfg["d_in"], cfg["hidden"]),
        "filtered": step_5_weight_decay_caveat(device, cfg["d_in"], cfg["hidden"]),
        "inference_mode": step_6_inference_mode(device, cfg["d_in"], cfg["hidden"]),
    }
    clip = results["clipping"]
    print(f"summary: accumulation matched the big batch (max |error| "
          f"{results['accumulation_error']:.1e}); clipping took the gradient norm "
          f"{clip['pre_clip_norm']:.2f} -> {clip['post_clip_norm']:.2f}")
    return results


if __name__ == "__main__":
    main()
