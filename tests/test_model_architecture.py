"""Unit tests for advanced/model_architecture: the exposed pieces pinned against PyTorch's own
implementations, and proof that each claim family can fail (a broken piece raises ClaimError)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from torchnotes import ClaimError

CPU = torch.device("cpu")
F64 = torch.float64
ATTN = "advanced/model_architecture/01_attention_mechanism.py"
PE = "advanced/model_architecture/02_positional_encoding.py"
RES = "advanced/model_architecture/03_residual_connection.py"
NORM = "advanced/model_architecture/04_normalization.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def smoke(mod, tmp_path):
    return mod.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])


# ------------------------------------------------------------------------------ 01 attention

@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (1, 1, 7, 4), (3, 6, 16)])
def test_sdpa_matches_pytorch_with_and_without_masks(note, shape):
    mod = note(ATTN)
    q, k, v = torch.randn(3, *shape, dtype=F64)
    T = shape[-2]
    for mask in (None, mod.causal_mask(T), (torch.rand(T, T) > 0.3) | torch.eye(T, dtype=bool)):
        out, w = mod.scaled_dot_product_attention(q, k, v, mask)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1], dtype=F64))
    torch.testing.assert_close(mod.scaled_dot_product_attention(q, k, v, mod.causal_mask(T))[0],
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sdpa_cross_attention_and_padding_mask(note):
    mod = note(ATTN)
    q = torch.randn(2, 4, 3, 8, dtype=F64)                      # T_q = 3
    k, v = torch.randn(2, 2, 4, 6, 8, dtype=F64)                # T_k = 6
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2]).view(2, 1, 1, 6)   # (B,1,1,T_k)
    out, w = mod.scaled_dot_product_attention(q, k, v, pad)
    assert out.shape == (2, 4, 3, 8) and w.shape == (2, 4, 3, 6)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=pad))
    assert (w[1, ..., 4:] == 0).all()


def test_causal_mask(note):
    mod = note(ATTN)
    m = mod.causal_mask(5)
    assert m.dtype == torch.bool and m.shape == (5, 5)
    assert torch.equal(m, torch.tril(torch.ones(5, 5)).bool())


@pytest.mark.parametrize("E,H,bias", [(16, 4, True), (12, 3, False), (8, 1, True)])
def test_mha_matches_nn_multiheadattention(note, E, H, bias):
    mod = note(ATTN)
    ref = nn.MultiheadAttention(E, H, bias=bias, batch_first=True).double()
    ours = mod.MultiHeadAttention(E, H, bias=bias).double()
    assert ours.in_proj.weight.shape == (3 * E, E) and ours.out_proj.weight.shape == (E, E)
    with torch.no_grad():
        ours.in_proj.weight.copy_(ref.in_proj_weight)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        if bias:
            ours.in_proj.bias.copy_(ref.in_proj_bias)
            ours.out_proj.bias.copy_(ref.out_proj.bias)
    x = torch.randn(3, 7, E, dtype=F64)
    mask = mod.causal_mask(7)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])
    torch.testing.assert_close(ours(x, mask), ref(x, x, x, attn_mask=~mask, need_weights=False)[0])


def test_01_shifted_causal_mask_is_caught(note, monkeypatch, tmp_path):
    mod = note(ATTN)                                              # token t also sees t + 1
    monkeypatch.setattr(mod, "causal_mask",
                        lambda T, device=None: torch.ones(T, T, dtype=bool, device=device).tril(1))
    with pytest.raises(ClaimError, match="is_causal"):
        smoke(mod, tmp_path)
    with pytest.raises(ClaimError, match="unchanged when tokens after t change"):
        mod.step_3_causal_means_no_peeking(CPU, **mod.SMOKE)


def test_01_wrong_scale_is_caught(note, monkeypatch, tmp_path):
    mod = note(ATTN)
    monkeypatch.setattr(mod, "attention_scores", lambda q, k: q @ k.transpose(-2, -1) / q.size(-1))
    with pytest.raises(ClaimError, match="F.scaled_dot_product_attention"):
        smoke(mod, tmp_path)
    with pytest.raises(ClaimError, match="variance near 1"):
        mod.step_4_scale_keeps_variance(CPU, **mod.SMOKE)


def test_01_attention_without_the_scale_is_caught(note, monkeypatch):
    mod = note(ATTN)

    def unscaled(q, k, v, mask=None):                      # q @ k^T inline, no 1/sqrt(d)
        scores = q @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        return weights @ v, weights

    monkeypatch.setattr(mod, "scaled_dot_product_attention", unscaled)
    for cfg in (mod.SMOKE, mod.FULL):                      # saturated weights in both presets
        with pytest.raises(ClaimError, match="softmax saturates"):
            mod.step_4_scale_keeps_variance(CPU, **cfg)


def test_01_heads_split_without_transpose_is_caught(note, monkeypatch):
    mod = note(ATTN)

    def forward(self, x, mask=None):                        # (B, T, E) viewed as (B, H, T, D)
        B, T, E = x.shape
        q, k, v = (t.reshape(B, self.num_heads, T, -1) for t in self.in_proj(x).split(E, -1))
        out, _ = mod.scaled_dot_product_attention(q, k, v, mask)
        return self.out_proj(out.reshape(B, T, E))

    monkeypatch.setattr(mod.MultiHeadAttention, "forward", forward)
    with pytest.raises(ClaimError, match="nn.MultiheadAttention"):
        mod.step_2_equals_nn_multiheadattention(CPU, **mod.SMOKE)


# ------------------------------------------------------------------------- 02 positional

def hf_llama_rope(x, positions, base=10000.0):
    """The Hugging Face LLaMA recipe, written the way transformers does it."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(x.dtype) / dim))
    freqs = positions[..., None].to(x.dtype) * inv_freq                  # (..., T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


@pytest.mark.parametrize("T,D", [(1, 2), (7, 8), (33, 64)])
def test_sinusoidal_encoding_formula(note, T, D):
    mod = note(PE)
    pe = mod.sinusoidal_encoding(T, D)
    assert pe.shape == (T, D)
    p = torch.arange(T, dtype=F64)[:, None]
    i = torch.arange(0, D, 2, dtype=F64)
    torch.testing.assert_close(pe[:, 0::2].double(), torch.sin(p / 10000 ** (i / D)),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[:, 1::2].double(), torch.cos(p / 10000 ** (i / D)),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 9, 16), (4, 6, 32)])
def test_apply_rope_matches_the_hf_llama_recipe(note, shape):
    mod = note(PE)
    x = torch.randn(shape, dtype=F64)
    T = shape[-2]
    torch.testing.assert_close(mod.apply_rope(x), hf_llama_rope(x, torch.arange(T)))
    pos = torch.arange(T) + 17
    torch.testing.assert_close(mod.apply_rope(x, pos, base=500.0),
                               hf_llama_rope(x, pos, base=500.0))
    torch.testing.assert_close(mod.apply_rope(x).norm(dim=-1), x.norm(dim=-1))
    assert mod.apply_rope(x.float()).dtype == torch.float32


def test_02_swapped_rope_pairing_is_caught(note, monkeypatch):
    mod = note(PE)

    def interleaved(x, positions=None, base=10000.0):   # GPT-NeoX vs GPT-J mix-up: pairs (2i, 2i+1)
        T, D = x.shape[-2:]
        pos = torch.arange(T, device=x.device) if positions is None else positions
        ang = pos.to(x.dtype)[:, None] * base ** (-torch.arange(0, D, 2, dtype=x.dtype) / D)
        ang = torch.cat((ang, ang), -1)                  # rotate-half angles ...
        rot = torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)   # ... interleaved turn
        return x * ang.cos() + rot * ang.sin()

    monkeypatch.setattr(mod, "apply_rope", interleaved)
    with pytest.raises(ClaimError, match="Su 2021"):
        mod.step_5_rope_is_complex_rotation(CPU, **mod.SMOKE)
    with pytest.raises(ClaimError, match="norm"):
        mod.step_6_rope_relative(CPU, **mod.SMOKE)


def test_02_swapped_sin_cos_is_caught(note, monkeypatch, tmp_path):
    mod = note(PE)
    right = mod.sinusoidal_encoding
    monkeypatch.setattr(mod, "sinusoidal_encoding",
                        lambda T, d: right(T, d).view(T, d // 2, 2).flip(-1).reshape(T, d))
    with pytest.raises(ClaimError, match="formula"):
        smoke(mod, tmp_path)


def test_02_causal_attention_is_not_equivariant(note, monkeypatch):
    mod = note(PE)

    def causal(x, w_q, w_k, w_v, rope=False):              # the mask itself carries order
        q, k = (mod.apply_rope(x @ w_q), mod.apply_rope(x @ w_k)) if rope else (x @ w_q, x @ w_k)
        return F.scaled_dot_product_attention(q, k, x @ w_v, is_causal=True)

    monkeypatch.setattr(mod, "self_attention", causal)
    with pytest.raises(ClaimError, match="permutation-equivariant"):
        mod.step_1_attention_ignores_order(CPU, **mod.SMOKE)


@pytest.mark.parametrize("broken", ["sinusoidal", "rope"])
def test_02_encoding_without_position_is_caught(note, monkeypatch, broken):
    mod = note(PE)
    if broken == "sinusoidal":                             # every row is PE(0): pos forgotten
        right = mod.sinusoidal_encoding
        monkeypatch.setattr(mod, "sinusoidal_encoding",
                            lambda T, d: right(1, d).expand(T, d))
    else:                                                  # every token rotated as position 0
        right = mod.apply_rope
        monkeypatch.setattr(mod, "apply_rope", lambda x, positions=None, base=10000.0:
                            right(x, torch.zeros(x.shape[-2], dtype=torch.long), base))
    with pytest.raises(ClaimError, match="order now matters"):
        mod.step_1_attention_ignores_order(CPU, **mod.SMOKE)


# -------------------------------------------------------------------------- 03 residual

@pytest.mark.parametrize("shape,eps", [((4, 8), 1e-6), ((2, 3, 16), 1e-5), ((5, 1, 7), 1e-3)])
def test_rmsnorm_matches_torch(note, shape, eps):
    mod = note(RES)
    ours, ref = mod.RMSNorm(shape[-1], eps=eps).double(), nn.RMSNorm(shape[-1], eps=eps).double()
    assert torch.equal(ours.weight, torch.ones(shape[-1], dtype=F64))
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(shape, dtype=F64) * 4 + 1
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("c_in,c_out,stride", [(4, 4, 1), (4, 8, 2), (4, 8, 1), (6, 6, 2)])
def test_basic_block_matches_torchvision(note, c_in, c_out, stride):
    mod = note(RES)
    ours = mod.BasicBlock(c_in, c_out, stride)
    projected = stride != 1 or c_in != c_out
    assert isinstance(ours.shortcut, nn.Identity) != projected
    down = (nn.Sequential(resnet.conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
            if projected else None)
    ref = resnet.BasicBlock(c_in, c_out, stride, downsample=down)
    ref.load_state_dict({k.replace("shortcut", "downsample"): v
                         for k, v in ours.state_dict().items()})
    x = torch.randn(3, c_in, 9, 9)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        torch.testing.assert_close(ours(x), ref(x))
    assert ours(x).shape == (3, c_out, (9 - 1) // stride + 1, (9 - 1) // stride + 1)


def test_03_plain_stack_sold_as_residual_is_caught(note, monkeypatch):
    mod = note(RES)

    def plain(self, h):                                     # forgot the "h +"
        for layer in self.layers:
            h = layer(h)
        return h

    monkeypatch.setattr(mod.DeepStack, "forward", plain)
    with pytest.raises(ClaimError, match="residual stack"):
        mod.step_1_gradient_flow(CPU, **mod.SMOKE)


def test_03_swapped_ln_placement_is_caught(note, monkeypatch):
    mod = note(RES)
    right = mod.TransformerBlock.__init__

    def swapped(self, dim, heads, pre_ln):
        right(self, dim, heads, not pre_ln)

    monkeypatch.setattr(mod.TransformerBlock, "__init__", swapped)
    with pytest.raises(ClaimError, match="norm_first"):
        mod.step_3_post_ln_vs_pre_ln(CPU, **mod.SMOKE)


def test_03_layernorm_sold_as_rmsnorm_is_caught(note, monkeypatch):
    mod = note(RES)
    monkeypatch.setattr(mod.RMSNorm, "forward",            # subtracts the mean: LayerNorm
                        lambda self, x: F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight)
    with pytest.raises(ClaimError, match="nn.RMSNorm"):
        mod.step_4_rmsnorm(CPU, **mod.SMOKE)


# ----------------------------------------------------------------------- 04 normalization

@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 7), (2, 6, 4, 5), (2, 6, 3, 2, 2)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_norms_match_pytorch(note, shape, eps):
    mod = note(NORM)
    x = torch.randn(shape, dtype=F64) * 3 + 2
    torch.testing.assert_close(mod.batch_norm(x, eps),
                               F.batch_norm(x, None, None, training=True, eps=eps))
    for k in range(1, x.dim()):
        torch.testing.assert_close(mod.layer_norm(x, k, eps),
                                   F.layer_norm(x, x.shape[-k:], eps=eps))
    for g in (1, 2, 3, 6):
        torch.testing.assert_close(mod.group_norm(x, g, eps), F.group_norm(x, g, eps=eps))
    if x.dim() > 2:
        torch.testing.assert_close(mod.instance_norm(x, eps), F.instance_norm(x, eps=eps))


def test_04_unbiased_variance_is_caught(note, monkeypatch, tmp_path):
    mod = note(NORM)

    def unbiased(x, dims, eps):                             # eval-style running-var slip
        return (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, keepdim=True) + eps)

    monkeypatch.setattr(mod, "_normalize", unbiased)
    with pytest.raises(ClaimError, match="batch_norm == F.batch_norm"):
        smoke(mod, tmp_path)


def test_04_wrong_axes_are_caught(note, monkeypatch):
    mod = note(NORM)
    norm = mod._normalize
    monkeypatch.setattr(mod, "layer_norm",                  # includes the batch axis
                        lambda x, k, eps=1e-5: norm(x, (0, *range(x.dim() - k, x.dim())), eps))
    with pytest.raises(ClaimError, match="layer_norm"):
        mod.step_1_equal_pytorch(CPU, **mod.SMOKE)
    with pytest.raises(ClaimError, match="do not"):
        mod.step_3_batch_of_one(CPU, **mod.SMOKE)


def test_04_tf_style_momentum_is_caught(note, monkeypatch):
    mod = note(NORM)
    # Keras/TF's momentum weighs the old value (0.99); PyTorch's weighs the new batch (0.1).
    tf_style = types.SimpleNamespace(BatchNorm2d=lambda *a, momentum, **k: nn.BatchNorm2d(
        *a, momentum=1 - momentum, **k))
    monkeypatch.setattr(mod, "nn", tf_style)
    with pytest.raises(ClaimError, match="running_mean == EMA"):
        mod.step_4_running_statistics(CPU, **mod.SMOKE)


def test_04_biased_running_variance_is_caught(note, monkeypatch):
    mod = note(NORM)

    class BiasedBN(nn.BatchNorm2d):                        # running var with 1/n, not 1/(n - 1)
        def forward(self, x):
            if not self.training:
                return super().forward(x)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * x.mean((0, 2, 3)))
                self.running_var.mul_(1 - m).add_(m * x.var((0, 2, 3), correction=0))
            return F.batch_norm(x, None, None, training=True, eps=self.eps)

    monkeypatch.setattr(mod, "nn", types.SimpleNamespace(BatchNorm2d=BiasedBN))
    with pytest.raises(ClaimError, match="running_var == EMA of the unbiased"):
        mod.step_4_running_statistics(CPU, **mod.SMOKE)


def test_04_strided_groups_are_caught(note, monkeypatch):
    mod = note(NORM)
    norm = mod._normalize

    def strided(x, G, eps=1e-5):                            # channel c in group c % G
        N, C = x.shape[:2]
        g = x.reshape(N, C // G, G, -1).transpose(1, 2)
        return norm(g, (2, 3), eps).transpose(1, 2).reshape(x.shape)

    monkeypatch.setattr(mod, "group_norm", strided)
    with pytest.raises(ClaimError, match="group_norm == F.group_norm"):
        mod.step_1_equal_pytorch(CPU, **mod.SMOKE)
