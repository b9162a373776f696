"""Bottleneck adapters (Houlsby 2019), serial vs gated insertion, and PEFT methods side by side.

An adapter is a small residual MLP h + up(act(down(h))) inserted into a frozen network: only
the adapter trains. With ``up`` zero-initialised it starts as the identity, so the adapted
model starts exactly at the pretrained one. It can sit after a layer (serial) or beside it
with a learned gate that starts closed (gated, parallel).

Claims proven:
  1. ``Adapter`` is the identity at initialisation; on the first step only ``up`` gets a
     gradient (``down``'s is exactly 0 while ``up`` = 0).
  2. Parameter counts for one d x d layer: full fine-tuning d^2 + d, LoRA 2dr (Hu 2021),
     adapter 2dm + d + m (Houlsby 2019), BitFit d (Ben Zaken 2021): the modules' counts equal
     the formulas (table printed).
  3. Serial insertion adapter(layer(x)) and gated insertion layer(x) + tanh(g) * adapter-branch(x)
     (gate g = 0 at start) both start exactly at the base model; the gated one's first
     gradient goes to the gate only.
  4. On the same tiny fine-tuning task as 01_lora_principle.py: full fine-tuning, LoRA (two
     ranks), serial and gated adapters and BitFit all lower the loss; LoRA with r at least the
     change's rank beats r = 1; BitFit (biases only) ends highest. The table of trainable
     parameters and loss reached is measured and printed.

Run:  python advanced/peft/02_adapter_layers.py      (about 6 s on a laptop CPU)
"""

from __future__ import annotations

import copy
import importlib

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

# LoRALinear, apply_lora, the task and the training loop come from note 01 (same folder).
lora_note = importlib.import_module("01_lora_principle")

FULL = dict(d_table=768, r_table=8, m_table=64, bottleneck=8, ranks=(1, 8),
            **lora_note.FULL)
SMOKE = dict(d_table=64, r_table=4, m_table=8, bottleneck=4, ranks=(1, 4),
             **lora_note.SMOKE)


class Adapter(nn.Module):
    """h + up(act(down(h))): d -> bottleneck -> d, up zero-initialised (Houlsby 2019, fig. 2)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)          # d * m + m
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)            # m * d + d
        nn.init.zeros_(self.up.weight)                  # near-identity in the paper; exact here
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:                    # (..., d)
        return h + self.up(self.act(self.down(h)))


class SerialAdapter(nn.Module):
    """adapter(layer(x)): after the frozen layer, on its output (Houlsby 2019)."""

    def __init__(self, layer: nn.Linear, bottleneck: int):
        super().__init__()
        self.layer = layer.requires_grad_(False)
        self.adapter = Adapter(layer.out_features, bottleneck)

    def forward(self, x):
        return self.adapter(self.layer(x))


class GatedAdapter(nn.Module):
    """layer(x) + tanh(gate) * up(act(down(x))): beside the layer, on its input, gate 0 at start.

    A parallel adapter (He 2022) with the zero-init gate of LLaMA-Adapter (Zhang 2023).
    """

    def __init__(self, layer: nn.Linear, bottleneck: int):
        super().__init__()
        self.layer = layer.requires_grad_(False)
        self.down = nn.Linear(layer.in_features, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, layer.out_features)   # random: the gate closes it
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.layer(x) + torch.tanh(self.gate) * self.up(self.act(self.down(x)))


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def step_1_identity_at_init(device, hidden, bottleneck, **_) -> dict:
    adapter = Adapter(hidden, bottleneck).to(device)
    h = torch.randn(8, hidden, device=device)
    check("Adapter(h) == h exactly at init (up = 0)", adapter(h), h, atol=0.0)
    adapter(h).pow(2).sum().backward()
    down, up = adapter.down.weight.grad.abs().max().item(), adapter.up.weight.grad.norm().item()
    check("first step: only up gets a gradient (down's is 0 while up = 0)",
          down == 0.0 and up > 0, detail=f"|grad down|max {down:.2g}, |grad up| {up:.3g}")
    return {"grad_up_at_init": up}


def step_2_parameter_table(d_table, r_table, m_table, **_) -> dict:
    d, r, m = d_table, r_table, m_table
    layer = nn.Linear(d, d, device="meta")                   # shapes only, no memory
    bitfit = layer.bias.numel()                              # BitFit trains the bias alone
    lora = lora_note.LoRALinear(layer, r=r, alpha=2 * r)
    counts = {"full fine-tuning": (n_params(layer), d * d + d),
              f"LoRA r={r}": (n_params(lora, trainable_only=True), 2 * d * r),
              f"adapter m={m}": (n_params(Adapter(d, m).to("meta")), 2 * d * m + d + m),
              "BitFit (bias only)": (bitfit, d)}
    print(f"one {d} x {d} Linear layer:")
    print(f"{'method':<20}{'trainable':>12}{'formula':>12}{'% of full':>11}")
    for name, (measured, formula) in counts.items():
        print(f"{name:<20}{measured:>12,}{formula:>12,}{100 * measured / (d * d + d):>10.2f}%")
    check("each module's trainable count equals its formula",
          all(measured == formula for measured, formula in counts.values()))
    return {name: measured for name, (measured, _) in counts.items()}


def step_3_serial_vs_gated(base, x, bottleneck, **_) -> dict:
    models = {}
    for kind, wrap in (("serial", SerialAdapter), ("gated", GatedAdapter)):
        model = copy.deepcopy(base).requires_grad_(False)
        model.fc1, model.fc2 = wrap(model.fc1, bottleneck), wrap(model.fc2, bottleneck)
        with torch.no_grad():
            check(f"{kind} adapters: the model starts exactly at the base", model(x), base(x),
                  atol=0.0)
        models[kind] = model
    gated = models["gated"]
    F.mse_loss(gated(x), torch.zeros_like(gated(x))).backward()
    grads = {n: p.grad.abs().max().item() for n, p in gated.named_parameters() if p.requires_grad}
    gate_grad = max(v for n, v in grads.items() if n.endswith("gate"))
    other = max(v for n, v in grads.items() if not n.endswith("gate"))
    gated.zero_grad(set_to_none=True)
    check("gated: the first gradient goes to the gate only (down, up get 0 while tanh(g) = 0)",
          gate_grad > 0 and other == 0.0, detail=f"gate {gate_grad:.3g}, others {other:.2g}")
    return models


def step_4_compare(base, x, y, adapters, ranks, steps, lr, **cfg) -> dict:
    total = n_params(base)
    models = {"full fine-tuning": copy.deepcopy(base).requires_grad_(True)}
    for r in ranks:
        models[f"LoRA r={r}"] = lora_note.apply_lora(copy.deepcopy(base), ["fc1", "fc2"],
                                                     r=r, alpha=2 * r)
    models["serial adapters"], models["gated adapters"] = adapters["serial"], adapters["gated"]
    bitfit = copy.deepcopy(base).requires_grad_(False)
    for name, p in bitfit.named_parameters():
        p.requires_grad_(name.endswith("bias"))                    # Ben Zaken 2021
    models["BitFit (biases)"] = bitfit
    table = {}
    for name, model in models.items():
        losses = lora_note.train(model, x, y, steps, lr)
        table[name] = (n_params(model, trainable_only=True), losses[0], losses[-1])
    print(f"same task, {steps} Adam steps each (base model: {total:,} parameters; on so narrow "
          f"a model the % are large, step 2's table gives them for a {cfg['d_table']}-wide layer)")
    print(f"{'method':<18}{'trainable':>10}{'% of base':>10}{'MSE start':>11}{'MSE end':>10}")
    for name, (n, first, last) in table.items():
        print(f"{name:<18}{n:>10,}{100 * n / total:>9.1f}%{first:>11.4f}{last:>10.5f}")
    check("every method lowers the loss",
          all(last < first for _, first, last in table.values()),
          detail=", ".join(f"{first / last:.1f}x" for _, first, last in table.values()))
    lo, hi = (table[f"LoRA r={r}"][2] for r in ranks)
    check(f"LoRA r={ranks[1]} (>= the change's rank {cfg['delta_rank']}) beats r={ranks[0]}",
          hi < lo, detail=f"{hi:.5f} < {lo:.5f}")
    bit = table["BitFit (biases)"][2]
    check("BitFit ends highest: shifting biases cannot express a change of the weights",
          all(bit > last for name, (_, _, last) in table.items() if name != "BitFit (biases)"),
          detail=f"BitFit {bit:.5f}")
    return table


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = step_1_identity_at_init(device, **cfg)
    results["param_table"] = step_2_parameter_table(**cfg)
    base, x, y = lora_note.make_task(device, **cfg)
    adapters = step_3_serial_vs_gated(base, x, **cfg)
    results["peft_table"] = step_4_compare(base, x, y, adapters, **cfg)
    best = min(results["peft_table"], key=lambda k: results["peft_table"][k][2])
    print(f"summary: lowest MSE by {best}; see the table for the parameter cost of each")
    return results


if __name__ == "__main__":
    main()
