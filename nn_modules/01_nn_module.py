"""A minimal custom nn.Module: forward() runs through __call__, attributes register parameters.

An ``nn.Module`` is a class with a ``forward()``; you call the *module* (``model(x)``), and its
``__call__`` runs the hooks around ``forward``. Tensors become part of the model only when they
are registered: an ``nn.Parameter`` attribute (learned), a buffer (saved, not learned) or a
sub-module; a plain tensor attribute is invisible to ``parameters()``, ``state_dict()`` and
``.to()``.

Claims proven:
  1. ``model(x)`` computes ``forward(x)``: with scale 2, the input [1, -2, 0.5, 3] becomes
     [3, -3, 2, 7] (worked by hand: x * 2 + 1).
  2. ``model(x)`` runs forward hooks; calling ``model.forward(x)`` directly skips them.
  3. ``parameters()`` lists the ``nn.Parameter`` attributes and those of sub-modules, never
     buffers or plain tensors.
  4. ``state_dict()`` holds parameters *and* buffers, never plain tensors.
  5. ``model.half()`` converts registered tensors; a plain tensor attribute is left behind.

Run:  python nn_modules/01_nn_module.py        (under 1 s after imports on a laptop CPU)
"""

from __future__ import annotations

import torch
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=8, features=4)
SMOKE = dict(batch=2, features=4)


class Moli(nn.Module):
    """A minimal module (``forward`` returns ``x * scale + 1``), plus a sub-module, a buffer and a
    plain tensor, to show which of them the module registers."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((features,), 2.0))   # learned: a Parameter
        # A sub-module: its parameters register too (even though forward() below ignores it).
        self.inner = nn.Linear(features, features)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # saved, not learned
        self.plain = torch.ones(features)                          # plain tensor: unregistered

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # x: (B, F)
        self.calls += 1
        return x * self.scale + 1                                  # (B, F)


def step_1_call_runs_forward(model: Moli) -> float:
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]], device=model.scale.device)   # (1, 4)
    out = model(x)                                 # calls __call__, which calls forward(x)
    print(f"input x    = {x[0].tolist()}")
    print(f"model(x)   = {out[0].tolist()}   (scale = 2)")
    # Worked by hand: 1*2+1, -2*2+1, 0.5*2+1, 3*2+1; small binary fractions, exact in float32.
    return check("model(x) == [3, -3, 2, 7] (x * 2 + 1, worked by hand)", out,
                 torch.tensor([[3.0, -3.0, 2.0, 7.0]]))


def step_2_hooks_run_only_through_call(model: Moli, x: torch.Tensor) -> dict:
    seen = []
    handle = model.register_forward_hook(lambda mod, inputs, output: seen.append("hook"))
    via_call = model(x)
    after_call = len(seen)
    via_forward = model.forward(x)            # bypasses __call__: no hooks, no pre-hooks
    after_forward = len(seen)
    handle.remove()
    print(f"hook calls after model(x): {after_call}; after model.forward(x): {after_forward}")
    check("model(x) ran the forward hook once", after_call == 1, detail=f"{after_call} call(s)")
    check("model.forward(x) skipped the hook", after_forward == after_call,
          detail=f"still {after_forward}")
    print(f"both paths give the same numbers: {torch.equal(via_forward, via_call)}")
    return {"hook_calls_call": after_call, "hook_calls_forward": after_forward - after_call}


def step_3_registration(model: Moli) -> dict:
    params = [name for name, _ in model.named_parameters()]
    state = list(model.state_dict().keys())
    print(f"named_parameters(): {params}")
    print(f"state_dict() keys : {state}")
    check("parameters() = the Parameter attribute + the sub-module's (no buffer, no plain)",
          sorted(params) == ["inner.bias", "inner.weight", "scale"], detail=str(params))
    check("state_dict() = parameters + the buffer 'calls', without 'plain'",
          sorted(state) == ["calls", "inner.bias", "inner.weight", "scale"], detail=str(state))
    return {"parameters": params, "state_dict": state}


def step_4_conversion_skips_plain(model: Moli) -> dict:
    model.half()                              # converts floating Parameters and buffers
    dtypes = {"scale": model.scale.dtype, "inner.weight": model.inner.weight.dtype,
              "plain": model.plain.dtype}
    print(f"after model.half(): {', '.join(f'{k}={v}' for k, v in dtypes.items())}")
    check("registered parameters became float16",
          dtypes["scale"] == dtypes["inner.weight"] == torch.float16)
    check("the plain tensor attribute stayed float32 (the module does not know it)",
          dtypes["plain"] == torch.float32)
    return {k: str(v) for k, v in dtypes.items()}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    model = Moli(cfg["features"]).to(device)
    x = torch.randn(cfg["batch"], cfg["features"], device=device)   # (B, F)
    results = {
        "forward_error": step_1_call_runs_forward(model),
        "hooks": step_2_hooks_run_only_through_call(model, x),
        "registered": step_3_registration(model),
        "dtypes": step_4_conversion_skips_plain(model),
    }
    n_numbers = sum(p.numel() for p in model.parameters())
    print(f"summary: forward() ran {int(model.calls)} times; "
          f"{len(results['registered']['parameters'])} parameter tensors ({n_numbers} numbers) "
          f"registered")
    return results


if __name__ == "__main__":
    main()
