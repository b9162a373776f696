"""Attention from scratch: scaled dot-product attention, the causal mask, multi-head attention.

Attention (Vaswani 2017) mixes the value vectors of a sequence with weights softmax(QK^T/sqrt(d)):
each query takes a weighted average of the values whose keys it matches. Written out here
and compared with PyTorch's own ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``.

Claims proven:
  1. The hand-written attention equals ``F.scaled_dot_product_attention``, without a mask and
     with a causal mask (PyTorch's ``is_causal=True``); every row of weights sums to 1 and the
     masked (future) weights are exactly 0.
  2. ``MultiHeadAttention`` with weights copied from ``nn.MultiheadAttention`` gives the same
     output, with and without the causal mask (whose boolean convention is the opposite there).
  3. With the causal mask, output t does not change when the tokens after t change; without
     it, it does.
  4. The 1/sqrt(d) scale keeps the logits' variance near 1 (unscaled it is near d, and softmax
     saturates: each row's largest weight takes most of the row).

Run:  python advanced/model_architecture/01_attention_mechanism.py      (about 3 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import save_image

from torchnotes import check, float64_device, make_parser, output_file, start

FULL = dict(batch=4, seq_len=32, embed_dim=64, num_heads=8, head_dim=64, var_samples=8)
SMOKE = dict(batch=2, seq_len=8, embed_dim=16, num_heads=2, head_dim=64, var_samples=16)


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Logits QK^T / sqrt(d): (..., T_q, D) x (..., T_k, D) -> (..., T_q, T_k)."""
    # Vaswani 2017, eq. 1: dot products grow like sqrt(d); dividing keeps their variance ~1.
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(QK^T / sqrt(d)) V.  mask: bool, True = may attend, broadcast to (..., T_q, T_k).

    Returns ``(out, weights)``: out (..., T_q, D_v), weights (..., T_q, T_k).
    """
    scores = attention_scores(q, k)                               # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))         # exp(-inf) = 0 exactly
    weights = scores.softmax(dim=-1)                              # each query's row sums to 1
    return weights @ v, weights                                   # (..., T_q, D_v)


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: token t may see tokens 0..t only."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


class MultiHeadAttention(nn.Module):
    """Self-attention with H heads of size D = E / H (Vaswani 2017, section 3.2.2)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)   # W_q, W_k, W_v stacked
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)      # W_o

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        B, T, E = x.shape
        H = self.num_heads
        q, k, v = self.in_proj(x).split(E, dim=-1)                      # 3 x (B, T, E)
        # (B, T, E) -> (B, T, H, D) -> (B, H, T, D): each head attends on its own slice.
        q, k, v = (t.view(B, T, H, E // H).transpose(1, 2) for t in (q, k, v))
        out, _ = scaled_dot_product_attention(q, k, v, mask)            # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, E)                      # heads concatenated
        return self.out_proj(out)                                       # (B, T, E)


def step_1_equals_pytorch_sdpa(device, batch, seq_len, num_heads, head_dim, out_dir, **_):
    dev = float64_device(device)
    q, k, v = torch.randn(3, batch, num_heads, seq_len, head_dim, device=dev,
                          dtype=torch.float64)                          # each (B, H, T, D)
    mask = causal_mask(seq_len, device=dev)
    out, w = scaled_dot_product_attention(q, k, v)
    out_c, w_c = scaled_dot_product_attention(q, k, v, mask)
    # float64 on both sides: only summation order differs, ~1e-15; 1e-10 leaves room.
    check("hand attention == F.scaled_dot_product_attention (no mask)", out,
          F.scaled_dot_product_attention(q, k, v), atol=1e-10)
    check("hand attention + causal_mask == F.scaled_dot_product_attention(is_causal=True)",
          out_c, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-10)
    check("every row of attention weights sums to 1", w_c.sum(-1), torch.ones_like(w_c[..., 0]),
          atol=1e-12)
    check("weights on future tokens (above the diagonal) are exactly 0",
          bool((w_c[..., ~mask] == 0).all()) and bool((w[..., ~mask] > 0).all()),
          detail="causal: 0 above the diagonal; unmasked: > 0 there")
    print(f"causal weights, head 0, first 4 rows:\n{w_c[0, 0, :4, :4].cpu().numpy().round(3)}")
    grid = w_c[0].unsqueeze(1).float()                                  # (H, 1, T, T)
    grid = F.interpolate(grid / grid.amax(), scale_factor=8, mode="nearest")
    path = output_file(out_dir, "causal_attention_weights.png")
    save_image(grid, path, nrow=num_heads, padding=2)
    print(f"saved {path} (one tile per head)")
    return {"row_sum_error": (w_c.sum(-1) - 1).abs().max().item()}


def step_2_equals_nn_multiheadattention(device, batch, seq_len, embed_dim, num_heads, **_):
    ref = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True, device=device)
    ours = MultiHeadAttention(embed_dim, num_heads).to(device)
    with torch.no_grad():                          # same weights: q, k, v rows stacked alike
        ours.in_proj.weight.copy_(ref.in_proj_weight)
        ours.in_proj.bias.copy_(ref.in_proj_bias)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    x = torch.randn(batch, seq_len, embed_dim, device=device)           # (B, T, E)
    mask = causal_mask(seq_len, device=device)
    # nn.MultiheadAttention's bool attn_mask means the opposite: True = NOT allowed.
    ref_plain, _ = ref(x, x, x, need_weights=False)
    ref_causal, _ = ref(x, x, x, attn_mask=~mask, need_weights=False)
    # float32, two summation orders over E terms: ~1e-6; 1e-5 is a few ulps of |out| ~ 1.
    check("MultiHeadAttention == nn.MultiheadAttention (same weights)", ours(x), ref_plain,
          atol=1e-5)
    err = check("... and with the causal mask (ours: True = attend; theirs: ~mask)",
                ours(x, mask), ref_causal, atol=1e-5)
    return {"mha_error": err}


def step_3_causal_means_no_peeking(device, seq_len, embed_dim, num_heads, **_):
    mha = MultiHeadAttention(embed_dim, num_heads).to(device)
    x = torch.randn(1, seq_len, embed_dim, device=device)
    t = seq_len // 2
    x_new_future = x.clone()
    x_new_future[:, t + 1:] = torch.randn_like(x[:, t + 1:])     # change every token after t
    mask = causal_mask(seq_len, device=device)
    with torch.no_grad():
        past = (mha(x, mask) - mha(x_new_future, mask))[:, : t + 1].abs().max().item()
        future = (mha(x, mask) - mha(x_new_future, mask))[:, t + 1:].abs().max().item()
        unmasked = (mha(x) - mha(x_new_future))[:, : t + 1].abs().max().item()
    print(f"tokens after t={t} replaced: max change at positions <= t: masked {past:.2g}, "
          f"unmasked {unmasked:.3f}; after t (masked): {future:.3f}")
    check("causal mask: outputs 0..t unchanged when tokens after t change", past <= 1e-6,
          detail=f"max change {past:.2g}")
    check("the change was real: later outputs and the unmasked outputs moved",
          future > 1e-3 and unmasked > 1e-3, detail=f"{future:.3f}, {unmasked:.3f}")
    return {"masked_past_change": past, "unmasked_past_change": unmasked}


def step_4_scale_keeps_variance(device, batch, num_heads, seq_len, head_dim, var_samples, **_):
    d = head_dim
    q = torch.randn(batch * var_samples, num_heads, seq_len, d, device=device)   # entries ~N(0,1)
    k = torch.randn_like(q)
    raw = q @ k.transpose(-2, -1)                        # each a sum of d products: variance d
    scaled = attention_scores(q, k)
    print(f"d = {d}: var(q.k) = {raw.var().item():.1f}, var(q.k / sqrt(d)) = "
          f"{scaled.var().item():.3f}")
    # Tens of thousands of samples: the variance estimate is within a few % of the truth.
    check("scaled logits have variance near 1 (0.8..1.25)", 0.8 < scaled.var().item() < 1.25,
          detail=f"{scaled.var().item():.3f}")
    check("unscaled logits have variance near d (0.8d..1.25d)",
          0.8 * d < raw.var().item() < 1.25 * d, detail=f"{raw.var().item():.1f} vs d = {d}")
    # Saturation: how much of each row goes to its single largest weight (1.0 = one-hot).
    _, weights = scaled_dot_product_attention(q, k, k)                # what attention really uses
    peak_raw = raw.softmax(-1).amax(-1).mean().item()
    peak = weights.amax(-1).mean().item()
    print(f"mean of each row's largest softmax weight: unscaled {peak_raw:.2f}, scaled "
          f"{peak:.2f} (1.0 = one-hot, saturated; uniform is 1/{seq_len})")
    # Over 200 seeds: unscaled 0.85..0.89 (smoke, T=8) and 0.81..0.82 (full, T=32); scaled
    # 0.35..0.38 and 0.16..0.17. The bounds 0.75 and 0.5 sit well outside both ranges.
    check("unscaled, softmax saturates: the largest weight takes > 0.75 of a row on average, "
          "scaled < 0.5", peak_raw > 0.75 and peak < 0.5,
          detail=f"unscaled {peak_raw:.2f}, scaled {peak:.2f}")
    return {"scaled_var": scaled.var().item(), "raw_var": raw.var().item(),
            "peak_weight": peak, "peak_weight_unscaled": peak_raw}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        **step_1_equals_pytorch_sdpa(device, out_dir=args.out_dir, **cfg),
        **step_2_equals_nn_multiheadattention(device, **cfg),
        **step_3_causal_means_no_peeking(device, **cfg),
        **step_4_scale_keeps_variance(device, **cfg),
    }
    print(f"summary: logit variance {results['raw_var']:.1f} -> {results['scaled_var']:.3f} "
          f"with 1/sqrt(d); MHA matches PyTorch to {results['mha_error']:.1g}")
    return results


if __name__ == "__main__":
    main()
