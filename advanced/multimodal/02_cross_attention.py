"""Cross-attention: text queries attend to image tokens; Flamingo's gated block; a BLIP-2 Q-Former.

In self-attention queries, keys and values come from one sequence; in cross-attention the
queries come from one modality (text tokens x) and the keys and values from another (image
tokens, the "context"). That is how a language model looks at an image.

Claims proven:
  1. ``CrossAttention`` (written out: softmax(Q K^T / sqrt(d)) V per head) equals
     ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` given the same weights,
     and its output follows the query's shape (B, T, dim) whatever the context length S.
  2. A context mask blocks masked tokens: changing their values changes nothing, while
     changing an unmasked token does.
  3. ``GatedCrossAttention`` (Alayrac et al. 2022, Flamingo) is the identity at init
     (tanh(0) = 0), so it can be inserted into a pretrained LM without changing it, yet the
     gate receives a gradient and can open.
  4. ``QFormerLite`` (Li et al. 2023, BLIP-2) turns any number of image tokens into a fixed
     number of query tokens, and ignores the order of the image tokens.

Run:  python advanced/multimodal/02_cross_attention.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, float64_device, make_parser, start

FULL = dict(batch=4, text_len=7, dim=64, context_dim=48, heads=4, queries=8)
SMOKE = dict(batch=2, text_len=5, dim=32, context_dim=24, heads=4, queries=4)


class CrossAttention(nn.Module):
    """Multi-head attention with queries from x and keys/values from context (Vaswani 2017)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)               # context lives in its own width
        self.v = nn.Linear(context_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context, context_mask=None):
        B, T, D = x.shape
        S, h = context.shape[1], self.heads
        q = self.q(x).view(B, T, h, D // h).transpose(1, 2)            # (B, h, T, d)
        k = self.k(context).view(B, S, h, D // h).transpose(1, 2)      # (B, h, S, d)
        v = self.v(context).view(B, S, h, D // h).transpose(1, 2)      # (B, h, S, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // h)            # (B, h, T, S)
        if context_mask is not None:                                   # (B, S), True = attend
            scores = scores.masked_fill(~context_mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v                                    # (B, h, T, d)
        return self.out(out.transpose(1, 2).reshape(B, T, D))         # (B, T, D)


class GatedCrossAttention(nn.Module):
    """Flamingo's GATED XATTN-DENSE block (Alayrac et al. 2022): y = x + tanh(a) * xattn(x, c),
    then y + tanh(b) * ffw(y); the gates a, b start at 0."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, context_dim, num_heads)
        self.ffw = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.ffw_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x, context, context_mask=None):
        x = x + self.attn_gate.tanh() * self.attn(self.norm1(x), context, context_mask)
        return x + self.ffw_gate.tanh() * self.ffw(self.norm2(x))


class QFormerLite(nn.Module):
    """BLIP-2's idea (Li et al. 2023) in one block: learned queries self-attend, cross-attend to
    the (frozen) image features, then an MLP; the output is num_queries tokens for the LLM."""

    def __init__(self, num_queries: int, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, dim))     # (Q, dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross = CrossAttention(dim, context_dim, num_heads)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, image_features):                          # (B, S, context_dim)
        q = self.queries.expand(image_features.shape[0], -1, -1)            # (B, Q, dim)
        n = self.norms[0](q)
        q = q + self.self_attn(n, n, n, need_weights=False)[0]
        q = q + self.cross(self.norms[1](q), image_features)
        return q + self.mlp(self.norms[2](q))                               # (B, Q, dim)


def step_1_matches_pytorch(cfg, device) -> float:
    B, T, D, C, H = cfg["batch"], cfg["text_len"], cfg["dim"], cfg["context_dim"], cfg["heads"]
    device = float64_device(device)                       # MPS has no float64: use the CPU
    attn = CrossAttention(D, C, H).to(device).double()
    x = torch.randn(B, T, D, device=device, dtype=torch.float64)
    ctx = torch.randn(B, 9, C, device=device, dtype=torch.float64)
    mask = torch.rand(B, 9, device=device) > 0.3
    mask[:, 0] = True                                     # every row attends to something
    ours = attn(x, ctx, mask)
    heads = [m(t).view(B, -1, H, D // H).transpose(1, 2)
             for m, t in ((attn.q, x), (attn.k, ctx), (attn.v, ctx))]
    sdpa = F.scaled_dot_product_attention(*heads, attn_mask=mask[:, None, None, :])
    sdpa = attn.out(sdpa.transpose(1, 2).reshape(B, T, D))
    check("CrossAttention == F.scaled_dot_product_attention (float64, masked)", ours, sdpa,
          atol=1e-12)
    mha = nn.MultiheadAttention(D, H, kdim=C, vdim=C, batch_first=True).to(device).double()
    with torch.no_grad():                                 # separate q/k/v weights for kdim != dim
        for name, lin in (("q", attn.q), ("k", attn.k), ("v", attn.v)):
            getattr(mha, f"{name}_proj_weight").copy_(lin.weight)
        mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
        mha.out_proj.weight.copy_(attn.out.weight)
        mha.out_proj.bias.copy_(attn.out.bias)
    ref = mha(x, ctx, ctx, key_padding_mask=~mask, need_weights=False)[0]  # True = ignore
    check("CrossAttention == nn.MultiheadAttention(kdim, vdim) with the same weights", ours, ref,
          atol=1e-12)
    shapes = {S: tuple(attn(x, torch.randn(B, S, C, device=device, dtype=torch.float64)).shape)
              for S in (1, 16, 100)}
    print(f"output shape for context lengths S = 1, 16, 100: {set(shapes.values())}")
    return check("output shape follows the query (B, T, dim) for every S",
                 set(shapes.values()) == {(B, T, D)})


def step_2_mask_blocks_tokens(cfg, device) -> float:
    B, T, D, C, H = cfg["batch"], cfg["text_len"], cfg["dim"], cfg["context_dim"], cfg["heads"]
    attn = CrossAttention(D, C, H).to(device)
    x, ctx = torch.randn(B, T, D, device=device), torch.randn(B, 10, C, device=device)
    mask = torch.ones(B, 10, dtype=torch.bool, device=device)
    mask[:, 6:] = False                                 # the last 4 tokens are padding
    base = attn(x, ctx, mask)
    junk = ctx.clone()
    junk[:, 6:] = 100 * torch.randn_like(junk[:, 6:])   # rewrite the padding
    changed = ctx.clone()
    changed[:, 2] += 1.0                                # nudge one real token
    diff_masked = (attn(x, junk, mask) - base).abs().max().item()
    diff_real = (attn(x, changed, mask) - base).abs().max().item()
    print(f"max change: masked tokens rewritten {diff_masked:.1e}, one real token {diff_real:.1e}")
    check("masked context tokens have no effect on the output", diff_masked < 1e-6,
          detail=f"{diff_masked:.1e}")
    return check("... while an unmasked token does", diff_real > 1e-3,
                 detail=f"{diff_real:.2e}")


def step_3_gated_identity(cfg, device) -> float:
    B, T, D, C, H = cfg["batch"], cfg["text_len"], cfg["dim"], cfg["context_dim"], cfg["heads"]
    block = GatedCrossAttention(D, C, H).to(device)
    x, ctx = torch.randn(B, T, D, device=device), torch.randn(B, 12, C, device=device)
    y = block(x, ctx)
    check("gated cross-attention is the identity at init (gates = 0)", y, x, atol=0.0)
    y.pow(2).sum().backward()
    grad = block.attn_gate.grad.abs().item()
    check("... yet the attention gate gets a gradient (d tanh / da = 1 at 0)", grad > 1e-6,
          detail=f"|dL/da| = {grad:.3g}")
    with torch.no_grad():
        block.attn_gate.fill_(0.5)
    return check("an opened gate lets the image in: the output differs from x",
                 (block(x, ctx) - x).abs().max().item() > 1e-3)


def step_4_qformer(cfg, device) -> float:
    B, D, C, H, Q = cfg["batch"], cfg["dim"], cfg["context_dim"], cfg["heads"], cfg["queries"]
    qf = QFormerLite(Q, D, C, H).to(device).eval()
    shapes = {S: tuple(qf(torch.randn(B, S, C, device=device)).shape) for S in (1, 49, 257)}
    print(f"Q-Former output for S = 1, 49, 257 image tokens: {shapes}")
    check(f"QFormerLite: any number of image tokens -> ({B}, {Q}, {D})",
          set(shapes.values()) == {(B, Q, D)})
    feats = torch.randn(B, 49, C, device=device)
    perm = torch.randperm(49, device=device)
    return check("QFormerLite ignores the order of image tokens (no positions in cross-attn)",
                 qf(feats[:, perm]), qf(feats), atol=1e-5)


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {"shape_ok": step_1_matches_pytorch(cfg, device),
               "mask_effect": step_2_mask_blocks_tokens(cfg, device),
               "gate_open": step_3_gated_identity(cfg, device),
               "qformer_perm_error": step_4_qformer(cfg, device)}
    print("summary: cross-attention == SDPA == MHA; masks block; gated = identity; Q-Former fixed")
    return results


if __name__ == "__main__":
    main()
