"""LoRA from scratch: W = W0 + (alpha/r) B A, a frozen base and two small trainable matrices.

LoRA (Hu 2021) fine-tunes a pretrained Linear layer without touching its weight W0: it learns
a low-rank update B A (B: out x r, A: r x in, r << min(in, out)) added beside it. B starts at
zero, so the fine-tuned model starts exactly where the pretrained one is; after training the
update can be merged into W0, so inference costs nothing extra.

Claims proven:
  1. At initialisation ``LoRALinear`` equals its base layer exactly (B = 0), and only B gets a
     gradient on the first step (A's is exactly 0 while B = 0).
  2. ``apply_lora`` replaces the named Linear layers and freezes everything else: the trainable
     parameters are exactly the A and B matrices, r * (in + out) per layer (ratio printed).
  3. On a small fine-tuning task (a new target whose ideal weights differ from the base by a
     low-rank change, LoRA's hypothesis) the loss falls by the stated factor, while every base
     weight stays bit-identical.
  4. ``merge()`` gives one plain ``nn.Linear`` with W0 + (alpha/r) B A whose output equals the
     unmerged LoRA layer's; the merged model has the base model's parameter count.

Run:  python advanced/peft/01_lora_principle.py      (about 4 s on a laptop CPU)
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, progress, start

FULL = dict(d_in=32, hidden=64, d_out=16, n=512, delta_rank=4, r=4, alpha=8, steps=300, lr=1e-2,
            min_drop=10)
SMOKE = dict(d_in=16, hidden=32, d_out=8, n=128, delta_rank=2, r=2, alpha=4, steps=40, lr=1e-2,
             min_drop=3)


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B(A(dropout(x))), base frozen (Hu 2021, eq. 3)."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)                  # W0 (and its bias) never train
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(base.in_features, r, **kw)      # A: (r, in), random (Kaiming)
        self.lora_B = nn.Linear(r, base.out_features, **kw)     # B: (out, r), zero at start
        nn.init.zeros_(self.lora_B.weight)                      # so B A = 0: starts at the base
        self.scaling = alpha / r                                # keeps the step size ~ alpha
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (..., in)
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def merge(self) -> nn.Linear:
        """One ``nn.Linear`` with weight W0 + scaling * B @ A: no extra cost at inference."""
        b = self.base
        merged = nn.Linear(b.in_features, b.out_features, bias=b.bias is not None,
                           device=b.weight.device, dtype=b.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(b.weight + self.scaling * self.lora_B.weight @ self.lora_A.weight)
            if b.bias is not None:
                merged.bias.copy_(b.bias)
        return merged


def apply_lora(model: nn.Module, target_names, r: int = 8, alpha: float = 16) -> nn.Module:
    """Freeze ``model`` and wrap each ``nn.Linear`` child whose name is in ``target_names``."""
    model.requires_grad_(False)
    targets = [(parent, name) for parent in model.modules()
               for name, child in parent.named_children()
               if name in target_names and isinstance(child, nn.Linear)]
    if not targets:
        raise ValueError(f"no nn.Linear child named any of {list(target_names)} in the model")
    for parent, name in targets:
        setattr(parent, name, LoRALinear(getattr(parent, name), r=r, alpha=alpha))
    return model


class TinyMLP(nn.Module):
    """The "pretrained" model of the fine-tuning task (shared with 02_adapter_layers.py)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def make_task(device, d_in, hidden, d_out, n, delta_rank, **_):
    """A base model and data from the same model with a rank-``delta_rank`` change in fc1, fc2."""
    base = TinyMLP(d_in, hidden, d_out).to(device)
    teacher = copy.deepcopy(base)
    with torch.no_grad():
        for layer in (teacher.fc1, teacher.fc2):
            out_f, in_f = layer.weight.shape
            u = torch.randn(out_f, delta_rank, device=device)
            v = torch.randn(delta_rank, in_f, device=device)
            layer.weight += u @ v / math.sqrt(in_f * delta_rank)       # entries ~ W0's scale
    x = torch.randn(n, d_in, device=device)
    with torch.no_grad():
        y = teacher(x)
    return base, x, y


def train(model: nn.Module, x, y, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the MSE, over the parameters that require a gradient."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in progress(range(steps), desc="fine-tune", enabled=steps > 100):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.mse_loss(model(x), y).item())                  # after the last step
    return losses


def step_1_starts_at_the_base(device, d_in, hidden, r, alpha, **_) -> dict:
    base = nn.Linear(d_in, hidden, device=device)
    lora = LoRALinear(base, r=r, alpha=alpha)
    x = torch.randn(8, d_in, device=device)
    check("at init LoRALinear(x) == base(x) exactly (B = 0)", lora(x), base(x), atol=0.0)
    lora(x).pow(2).sum().backward()
    a_grad, b_grad = lora.lora_A.weight.grad.abs().max().item(), lora.lora_B.weight.grad.norm()
    print(f"first backward: |grad A|max = {a_grad:.2g}, |grad B| = {b_grad.item():.3g}, "
          f"base weight grad = {base.weight.grad}")
    check("first step: only B gets a gradient (dL/dA = B^T ... = 0 while B = 0)",
          a_grad == 0.0 and b_grad.item() > 0, detail=f"A {a_grad:.2g}, B {b_grad.item():.3g}")
    return {"grad_B_at_init": b_grad.item()}


def step_2_apply_lora(model: nn.Module, r, alpha, **_) -> dict:
    total = sum(p.numel() for p in model.parameters())
    apply_lora(model, ["fc1", "fc2"], r=r, alpha=alpha)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        print(f"  trainable: {name} {tuple(model.get_parameter(name).shape)}")
    expected = {f"{layer}.lora_{m}.weight" for layer in ("fc1", "fc2") for m in "AB"}
    check("trainable parameters are exactly the A and B of fc1 and fc2", set(trainable) == expected,
          detail=", ".join(sorted(trainable)))
    formula = sum(r * (model.get_submodule(f"{n}.base").in_features
                       + model.get_submodule(f"{n}.base").out_features) for n in ("fc1", "fc2"))
    n_train = sum(trainable.values())
    check("trainable count == sum of r * (in + out)", n_train == formula,
          detail=f"{n_train} == {formula}")
    print(f"trainable {n_train:,} of {total + n_train:,} parameters = "
          f"{100 * n_train / (total + n_train):.1f}% (the base has {total:,})")
    return {"trainable": n_train, "base_params": total, "ratio": n_train / (total + n_train)}


def step_3_fine_tune(model, x, y, steps, lr, min_drop, **_) -> dict:
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train(model, x, y, steps, lr)
    print(f"LoRA fine-tuning: MSE {losses[0]:.4f} -> {losses[-1]:.5f} in {steps} steps")
    check(f"the loss fell by more than {min_drop}x", losses[-1] * min_drop < losses[0],
          detail=f"{losses[0]:.4f} -> {losses[-1]:.5f}, {losses[0] / losses[-1]:.0f}x")
    same = all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    check(f"all {len(frozen)} base tensors are bit-identical after training", same)
    moved = all(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters()
                if n in lora_before)
    check("... while every A and B did change", moved)
    return {"losses": losses}


def step_4_merge(model, x, r, **_) -> dict:
    merged_model = copy.deepcopy(model)
    for name in ("fc1", "fc2"):
        lora = model.get_submodule(name)
        merged = lora.merge()
        delta = lora.lora_B.weight.double() @ lora.lora_A.weight.double()   # (out, in)
        print(f"{name}: merged weight {tuple(merged.weight.shape)}, rank of the update B A: "
              f"{torch.linalg.matrix_rank(delta.detach()).item()} (r = {r})")
        h = torch.randn(len(x), lora.base.in_features, device=x.device)     # this layer's input
        # float32: W0 h + s B (A h) and (W0 + s B A) h round differently, ~1e-6 of |y| ~ 1.
        check(f"{name}.merge()(h) == LoRALinear(h)", merged(h), lora(h), atol=1e-5)
        setattr(merged_model, name, merged)
    with torch.no_grad():
        err = check("the merged model == the LoRA model", merged_model(x), model(x), atol=1e-5)
    n_merged = sum(p.numel() for p in merged_model.parameters())
    print(f"merged model: {n_merged:,} parameters, plain nn.Linear layers (no LoRA at inference)")
    return {"merge_error": err, "merged_params": n_merged}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = step_1_starts_at_the_base(device, **cfg)
    base, x, y = make_task(device, **cfg)
    model = copy.deepcopy(base)
    results |= step_2_apply_lora(model, **cfg)
    with torch.no_grad():
        check("the LoRA model equals the base model before training", model(x), base(x), atol=0.0)
    results |= step_3_fine_tune(model, x, y, **cfg)
    results |= step_4_merge(model, x, **cfg)
    check("merged parameter count == the base model's", results["merged_params"],
          results["base_params"])
    first, last = results["losses"][0], results["losses"][-1]
    print(f"summary: {results['trainable']:,} trainable parameters "
          f"({100 * results['ratio']:.1f}%), MSE {first:.4f} -> {last:.5f}")
    return results


if __name__ == "__main__":
    main()
