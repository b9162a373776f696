"""Positional encodings: sinusoidal (Vaswani 2017), learnable (BERT), rotary RoPE (Su 2021).

Attention by itself ignores token order (permute the tokens, the outputs permute alike), so
position is added to the inputs (sinusoidal, learnable) or rotated into q and k (RoPE).

Claims proven:
  1. The premise: self-attention without positions (and without a causal mask, which itself
     carries order) is permutation-equivariant, attn(x[:, perm]) == attn(x)[:, perm]; once
     sinusoidal PE is added to x, or RoPE is applied to q and k, shuffled tokens get different
     outputs.
  2. ``sinusoidal_encoding`` equals the formula PE[p, 2i] = sin(p / 10000^(2i/d)),
     PE[p, 2i+1] = cos(p / 10000^(2i/d)), element by element.
  3. PE(p + k) is a fixed linear map of PE(p): one rotation matrix M_k, built from k alone,
     takes every row p to row p + k.
  4. A learnable PE (BERT, Devlin 2019) is an ``nn.Embedding`` over positions: a lookup of
     weight rows, trained only on the positions it has seen, undefined past ``max_len``
     (an IndexError); its parameter cost beside sinusoidal and RoPE (zero) is printed.
  5. ``apply_rope`` (rotate-half layout, dimension i paired with i + D/2, as in the Hugging
     Face LLaMA code) equals the complex-number form (x_i + i x_{i+D/2}) e^{i p theta_i}.
  6. RoPE preserves each vector's norm, and q.k after RoPE depends only on the relative offset:
     shifting both positions leaves the score unchanged.

Run:  python advanced/model_architecture/02_positional_encoding.py      (about 3 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.utils import save_image

from torchnotes import check, check_raises, float64_device, make_parser, output_file, start

FULL = dict(seq_len=128, dim=64, max_len=512, pe_shifts=(1, 7, 100), shifts=(1, 7, 100, 1000))
SMOKE = dict(seq_len=16, dim=16, max_len=32, pe_shifts=(1, 5), shifts=(1, 5, 1000))


def sinusoidal_encoding(seq_len: int, dim: int) -> torch.Tensor:
    """(seq_len, dim): even dims sin, odd dims cos (Vaswani 2017, section 3.5)."""
    pos = torch.arange(seq_len, dtype=torch.float64).unsqueeze(1)            # (T, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angles = pos * inv_freq                                                  # (T, dim/2)
    pe = torch.zeros(seq_len, dim, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.to(torch.get_default_dtype())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, positions=None, base: float = 10000.0) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of x (..., T, D) by angle p * base^(-2i/D).

    Su 2021 (RoFormer), eq. 34, in the rotate-half layout of the Hugging Face LLaMA code.
    positions: (T,) or broadcastable to x.shape[:-1]; default 0..T-1.
    """
    T, D = x.shape[-2:]
    dtype = torch.promote_types(x.dtype, torch.float32)          # angles never in half precision
    if positions is None:
        positions = torch.arange(T, device=x.device)
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=dtype) / D)   # (D/2,)
    angles = positions.to(dtype).unsqueeze(-1) * inv_freq                         # (..., T, D/2)
    angles = torch.cat((angles, angles), dim=-1)                 # dim i and i + D/2 share an angle
    return (x * angles.cos() + rotate_half(x) * angles.sin()).to(x.dtype)


def self_attention(x, w_q, w_k, w_v, rope: bool = False) -> torch.Tensor:
    """One head, no mask: softmax(q k^T / sqrt(D)) v, q = x W_q, k = x W_k, v = x W_v: (B, T, D)."""
    q, k, v = x @ w_q, x @ w_k, x @ w_v                                      # each (B, T, D)
    if rope:
        q, k = apply_rope(q), apply_rope(k)                  # position rotated into q and k only
    return nn.functional.scaled_dot_product_attention(q, k, v)


def step_1_attention_ignores_order(device, seq_len, dim, **_) -> dict:
    w = torch.randn(3, dim, dim, device=device) / math.sqrt(dim)           # W_q, W_k, W_v
    x = torch.randn(2, seq_len, dim, device=device)                  # (B, T, E), no positions
    perm = torch.randperm(seq_len).to(device)                        # shuffle the tokens
    pe = sinusoidal_encoding(seq_len, dim).to(device)                # row p stays at position p
    with torch.no_grad():
        plain = (self_attention(x[:, perm], *w), self_attention(x, *w)[:, perm])
        diffs = {"no positions": plain[0] - plain[1],
                 "sinusoidal PE added": (self_attention(x[:, perm] + pe, *w)
                                         - self_attention(x + pe, *w)[:, perm]),
                 "RoPE on q, k": (self_attention(x[:, perm], *w, rope=True)
                                  - self_attention(x, *w, rope=True)[:, perm])}
    diffs = {name: d.abs().max().item() for name, d in diffs.items()}
    print("max |attn(x[:, perm]) - attn(x)[:, perm]|: "
          + ", ".join(f"{name} {d:.2g}" for name, d in diffs.items()))
    # float32: the same weighted sums taken in another order, ~1e-7; 1e-5 leaves room.
    check("without positions, self-attention is permutation-equivariant: "
          "attn(x[:, perm]) == attn(x)[:, perm]", plain[0], plain[1], atol=1e-5)
    moved = min(diffs["sinusoidal PE added"], diffs["RoPE on q, k"])
    check("with sinusoidal PE added, or RoPE applied, it is not: order now matters",
          moved > 1e-2, detail=f"smallest change {moved:.2g}")
    return {"permutation_change": diffs}


def step_2_sinusoid_formula(seq_len, dim, out_dir, **_):
    pe = sinusoidal_encoding(seq_len, dim)
    formula = torch.tensor([[math.sin(p / 10000 ** (j / dim)) if j % 2 == 0
                             else math.cos(p / 10000 ** ((j - 1) / dim)) for j in range(dim)]
                            for p in range(seq_len)])                   # the paper, one entry each
    print(f"PE shape {tuple(pe.shape)}; PE[1, :4] = {pe[1, :4].numpy().round(4).tolist()}")
    # Computed in float64, rounded to float32 once: within an ulp of |PE| <= 1, ~6e-8.
    check("sinusoidal_encoding == sin/cos formula, every entry", pe, formula, atol=1e-6)
    image = ((pe.T + 1) / 2).unsqueeze(0)                               # (1, dim, T) in [0, 1]
    path = output_file(out_dir, "sinusoidal_pe.png")
    save_image(image.repeat_interleave(4, 1).repeat_interleave(4, 2), path)
    print(f"saved {path} (rows: dimensions, columns: positions)")
    return pe


def step_3_shift_is_linear(pe: torch.Tensor, dim: int, pe_shifts, **_) -> float:
    # sin(a + b) = sin a cos b + cos a sin b, cos(a + b) = cos a cos b - sin a sin b: each
    # (sin, cos) pair turns by the angle k * w_i, which depends on k only, never on p.
    worst = 0.0
    for k in pe_shifts:
        w = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim) * k
        M = torch.zeros(dim, dim, dtype=torch.float64)
        M[0::2, 0::2] = torch.diag(w.cos())
        M[0::2, 1::2] = torch.diag(w.sin())
        M[1::2, 0::2] = torch.diag(-w.sin())
        M[1::2, 1::2] = torch.diag(w.cos())
        shifted = pe[:-k].double() @ M.T                                 # row p -> row p + k
        worst = max(worst, check(f"PE(p + {k}) == M_{k} PE(p) for every p (one matrix)",
                                 shifted, pe[k:], atol=1e-6))
    return worst


def step_4_learnable_embedding(device, seq_len, dim, max_len, **_) -> dict:
    pos_emb = nn.Embedding(max_len, dim, device=device)             # BERT: one row per position
    positions = torch.arange(seq_len, device=device)                # (T,)
    x = torch.randn(2, seq_len, dim, device=device)                 # (B, T, E) token embeddings
    h = x + pos_emb(positions)                                      # (B, T, E), broadcast over B
    one_hot = nn.functional.one_hot(positions, max_len).float()     # (T, max_len)
    check("pos_emb(positions) == one_hot(positions) @ weight (a lookup)", h - x,
          (one_hot @ pos_emb.weight).expand_as(x), atol=1e-6)
    h.pow(2).sum().backward()
    seen = pos_emb.weight.grad.abs().sum(-1) > 0                    # (max_len,)
    check("only the rows of positions seen in training get a gradient",
          bool(seen[:seq_len].all()) and not bool(seen[seq_len:].any()),
          detail=f"rows 0..{seq_len - 1} of {max_len}")
    # The lookup is done on the CPU: on CUDA an out-of-range index is a device-side assert.
    check_raises(f"position {max_len} (= max_len) has no row: a learned PE cannot extrapolate",
                 IndexError, nn.functional.embedding, torch.tensor([max_len]),
                 pos_emb.weight.detach().cpu(), match="index out of range")
    costs = {"sinusoidal": 0, "learned nn.Embedding": sum(p.numel() for p in pos_emb.parameters()),
             "RoPE": 0}
    print(f"{'positional encoding':<22}{'parameters':>12}  (max_len={max_len}, dim={dim})")
    for name, n in costs.items():
        print(f"{name:<22}{n:>12,}")
    return costs


def step_5_rope_is_complex_rotation(device, seq_len, dim, **_) -> float:
    dev = float64_device(device)
    x = torch.randn(2, 3, seq_len, dim, device=dev, dtype=torch.float64)   # (B, H, T, D)
    half = dim // 2
    theta = 10000.0 ** (-torch.arange(half, device=dev, dtype=torch.float64) * 2 / dim)
    p = torch.arange(seq_len, device=dev, dtype=torch.float64)
    z = torch.complex(x[..., :half], x[..., half:])                 # pair i with i + D/2
    z = z * torch.polar(torch.ones_like(theta), p[:, None] * theta)  # times e^{i p theta_i}
    expected = torch.cat((z.real, z.imag), dim=-1)
    return check("apply_rope == (x_i + i x_{i+D/2}) * e^{i p theta_i} (Su 2021, eq. 34)",
                 apply_rope(x), expected, atol=1e-10)


def step_6_rope_relative(device, seq_len, dim, shifts, **_) -> dict:
    dev = float64_device(device)
    x = torch.randn(4, seq_len, dim, device=dev, dtype=torch.float64)
    check("RoPE preserves every vector's norm", apply_rope(x).norm(dim=-1), x.norm(dim=-1),
          atol=1e-10)
    q, k = torch.randn(2, dim, device=dev, dtype=torch.float64)     # one query, one key

    def score(m, n):                                                # q at position m, k at n
        pos = torch.tensor([m, n], device=dev)
        rq, rk = apply_rope(torch.stack([q, k]), pos)
        return (rq @ rk).item()

    m, n = 3, 1
    scores = {s: score(m + s, n + s) for s in (0, *shifts)}
    print(f"q.k with offset m - n = {m - n}, both positions shifted by s: "
          + ", ".join(f"s={s}: {v:.6f}" for s, v in scores.items()))
    # Angles up to ~1000 rad in float64: rounding ~1e-13 per angle; 1e-9 is ample.
    check("q.k after RoPE depends only on m - n (same for every shift s)",
          torch.tensor(list(scores.values())), torch.full((len(scores),), scores[0]), atol=1e-9)
    other = score(m, m)                                             # offset 0 instead of 2
    check("... and a different offset gives a different score", abs(other - scores[0]) > 1e-3,
          detail=f"offset 2: {scores[0]:.4f}, offset 0: {other:.4f}")
    return {"rope_scores": scores}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = step_1_attention_ignores_order(device, **cfg)
    pe = step_2_sinusoid_formula(out_dir=args.out_dir, **cfg)
    results |= {
        "shift_error": step_3_shift_is_linear(pe, **cfg),
        "param_costs": step_4_learnable_embedding(device, **cfg),
        "rope_complex_error": step_5_rope_is_complex_rotation(device, **cfg),
        **step_6_rope_relative(device, **cfg),
    }
    print(f"summary: sinusoidal and RoPE cost 0 parameters, a learned table "
          f"{results['param_costs']['learned nn.Embedding']:,}; RoPE scores are shift-invariant")
    return results


if __name__ == "__main__":
    main()
