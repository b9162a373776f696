"""Unit tests for advanced/peft: LoRA and adapters pinned against their formulas and plain
nn.Linear, and proof that each claim family can fail (a broken piece raises ClaimError)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchnotes import ClaimError

CPU = torch.device("cpu")
F64 = torch.float64
LORA = "advanced/peft/01_lora_principle.py"
ADAPTER = "advanced/peft/02_adapter_layers.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def smoke(mod, tmp_path):
    return mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])


# ------------------------------------------------------------------------------- 01 LoRA

@pytest.mark.parametrize("d_in,d_out,r,alpha,bias", [(6, 4, 2, 4, True), (5, 9, 3, 1, False),
                                                     (8, 8, 8, 16, True)])
def test_lora_linear_forward_and_merge_match_the_formula(note, d_in, d_out, r, alpha, bias):
    mod = note(LORA)
    base = nn.Linear(d_in, d_out, bias=bias).double()
    lora = mod.LoRALinear(base, r=r, alpha=alpha)
    x = torch.randn(3, 2, d_in, dtype=F64)
    assert lora.lora_A.weight.shape == (r, d_in) and lora.lora_B.weight.shape == (d_out, r)
    assert lora.lora_A.bias is None and lora.lora_B.bias is None
    assert torch.equal(lora.lora_B.weight, torch.zeros(d_out, r, dtype=F64))
    assert lora.scaling == alpha / r
    assert not any(p.requires_grad for p in base.parameters())
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)
    with torch.no_grad():
        lora.lora_B.weight.normal_()                        # as if trained
    W = base.weight + alpha / r * lora.lora_B.weight @ lora.lora_A.weight
    b = base.bias if bias else torch.zeros(d_out, dtype=F64)
    torch.testing.assert_close(lora(x), x @ W.T + b)
    merged = lora.merge()
    assert type(merged) is nn.Linear and (merged.bias is None) == (not bias)
    torch.testing.assert_close(merged(x), lora(x))


def test_lora_dropout_only_in_training(note):
    mod = note(LORA)
    lora = mod.LoRALinear(nn.Linear(16, 16), r=4, alpha=8, dropout=0.5)
    with torch.no_grad():
        lora.lora_B.weight.normal_()
    x = torch.randn(32, 16)
    assert not torch.allclose(lora(x), lora.merge()(x))        # train mode: dropout on the path
    lora.eval()
    torch.testing.assert_close(lora(x), lora.merge()(x))


def test_apply_lora_replaces_matching_children_and_freezes_the_rest(note):
    mod = note(LORA)
    model = nn.Sequential(nn.ModuleDict({"q": nn.Linear(4, 4), "k": nn.Linear(4, 4),
                                         "v": nn.Linear(4, 4)}), nn.Linear(4, 2))
    x_model = mod.apply_lora(model, ["q", "v"], r=2, alpha=4)
    assert x_model is model
    attn = model[0]
    assert isinstance(attn["q"], mod.LoRALinear) and isinstance(attn["v"], mod.LoRALinear)
    assert type(attn["k"]) is nn.Linear and type(model[1]) is nn.Linear
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.q.lora_A.weight", "0.q.lora_B.weight",
                         "0.v.lora_A.weight", "0.v.lora_B.weight"]
    with pytest.raises(ValueError, match="no nn.Linear child"):
        mod.apply_lora(nn.Sequential(nn.Linear(2, 2)), ["q"])


def test_01_b_not_zero_initialised_is_caught(note, monkeypatch, tmp_path):
    mod = note(LORA)
    right = mod.LoRALinear.__init__

    def random_b(self, *args, **kwargs):                    # B ~ Kaiming like A
        right(self, *args, **kwargs)
        nn.init.kaiming_uniform_(self.lora_B.weight)

    monkeypatch.setattr(mod.LoRALinear, "__init__", random_b)
    with pytest.raises(ClaimError, match="B = 0"):
        smoke(mod, tmp_path)


def test_01_merge_without_scaling_is_caught(note, monkeypatch, tmp_path):
    mod = note(LORA)
    right = mod.LoRALinear.merge

    def no_scaling(self):                                   # W0 + B A, alpha / r forgotten
        merged = right(self)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.lora_B.weight @ self.lora_A.weight)
        return merged

    monkeypatch.setattr(mod.LoRALinear, "merge", no_scaling)
    with pytest.raises(ClaimError, match="merge"):
        smoke(mod, tmp_path)


def test_01_unfrozen_base_is_caught(note, monkeypatch, tmp_path):
    mod = note(LORA)
    right = mod.apply_lora

    def leaky(model, target_names, r=8, alpha=16):          # forgot to freeze the base
        right(model, target_names, r, alpha).requires_grad_(True)
        return model

    monkeypatch.setattr(mod, "apply_lora", leaky)
    with pytest.raises(ClaimError, match="exactly the A and B"):
        smoke(mod, tmp_path)


def test_01_training_that_does_not_learn_is_caught(note, monkeypatch):
    mod = note(LORA)
    base, x, y = mod.make_task(CPU, **mod.SMOKE)
    model = mod.apply_lora(base, ["fc1", "fc2"], r=2, alpha=4)
    with pytest.raises(ClaimError, match="loss fell"):
        mod.step_3_fine_tune(model, x, y, **{**mod.SMOKE, "lr": 0.0})


# --------------------------------------------------------------------------- 02 adapters

@pytest.mark.parametrize("dim,m", [(8, 2), (16, 16), (5, 3)])
def test_adapter_identity_and_parameter_count(note, dim, m):
    mod = note(ADAPTER)
    adapter = mod.Adapter(dim, m)
    h = torch.randn(4, 3, dim)
    torch.testing.assert_close(adapter(h), h, rtol=0, atol=0)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * dim * m + dim + m
    with torch.no_grad():
        adapter.up.weight.normal_()
    expected = h + adapter.up(adapter.act(adapter.down(h)))
    torch.testing.assert_close(adapter(h), expected)
    assert not torch.allclose(adapter(h), h)


def test_serial_and_gated_insertion(note):
    mod = note(ADAPTER)
    layer = nn.Linear(6, 10)
    x = torch.randn(5, 6)
    serial, gated = mod.SerialAdapter(layer, 3), mod.GatedAdapter(layer, 3)
    torch.testing.assert_close(serial(x), layer(x), rtol=0, atol=0)
    torch.testing.assert_close(gated(x), layer(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in layer.parameters())
    with torch.no_grad():
        gated.gate.fill_(0.5)
        serial.adapter.up.weight.normal_()
    torch.testing.assert_close(
        gated(x), layer(x) + torch.tanh(torch.tensor(0.5)) * gated.up(gated.act(gated.down(x))))
    torch.testing.assert_close(serial(x), serial.adapter(layer(x)))


def test_02_adapter_up_not_zero_is_caught(note, monkeypatch):
    mod = note(ADAPTER)
    right = mod.Adapter.__init__

    def random_up(self, dim, bottleneck):
        right(self, dim, bottleneck)
        nn.init.normal_(self.up.weight)

    monkeypatch.setattr(mod.Adapter, "__init__", random_up)
    with pytest.raises(ClaimError, match="exactly at init"):
        mod.step_1_identity_at_init(CPU, **mod.SMOKE)


def test_02_open_gate_is_caught(note, monkeypatch):
    mod = note(ADAPTER)
    right = mod.GatedAdapter.__init__

    def open_gate(self, layer, bottleneck):
        right(self, layer, bottleneck)
        self.gate.data.fill_(1.0)

    monkeypatch.setattr(mod.GatedAdapter, "__init__", open_gate)
    base, x, _ = mod.lora_note.make_task(CPU, **mod.SMOKE)
    with pytest.raises(ClaimError, match="gated adapters: the model starts exactly"):
        mod.step_3_serial_vs_gated(base, x, **mod.SMOKE)


def test_02_comparison_claims_can_fail(note, tmp_path):
    mod = note(ADAPTER)
    base, x, y = mod.lora_note.make_task(CPU, **mod.SMOKE)
    adapters = mod.step_3_serial_vs_gated(base, x, **mod.SMOKE)
    with pytest.raises(ClaimError, match="lowers the loss"):       # nothing moves at lr = 0
        mod.step_4_compare(base, x, y, adapters, **{**mod.SMOKE, "lr": 0.0})

