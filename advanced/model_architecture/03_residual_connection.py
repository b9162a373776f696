"""Residual connections: gradient flow, ResNet's BasicBlock, Post-LN vs Pre-LN, RMSNorm.

A residual block computes y = x + F(x) (He 2016), so the gradient has an identity path
dy/dx = I + dF/dx straight back to the first layer; a plain stack multiplies one Jacobian per
layer and the gradient fades. Transformers wrap every sublayer this way, with a norm before
(Pre-LN) or after (Post-LN) the addition.

Claims proven:
  1. In a deep plain tanh stack the first layer's gradient vanishes as depth grows; in the same
     stack with skip connections it does not (measured norms, a depth table).
  2. ``BasicBlock`` (He 2016) equals torchvision's ``resnet.BasicBlock`` with the same weights:
     shape kept with an identity shortcut, (C, H, W) -> (C', H/2, W/2) with a 1x1 projection.
  3. Post-LN LN(x + F(x)) (Vaswani 2017) and Pre-LN x + F(LN(x)) (Xiong 2020) blocks equal
     ``nn.TransformerEncoderLayer(norm_first=False / True)``; Pre-LN's residual stream is a
     running sum that grows with depth (Post-LN's LayerNorm resets it to norm sqrt(E) after every
     block, by definition: printed, not checked).
  4. ``RMSNorm`` x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019) equals ``nn.RMSNorm``.

Run:  python advanced/model_architecture/03_residual_connection.py      (about 4 s on a laptop CPU)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from torchnotes import check, float64_device, make_parser, start

FULL = dict(width=64, batch=128, depths=(2, 8, 32, 64), channels=(64, 128), image=16,
            embed_dim=64, heads=4, layers=12, seq_len=16)
SMOKE = dict(width=16, batch=16, depths=(2, 8, 32), channels=(8, 16), image=8,
             embed_dim=16, heads=2, layers=8, seq_len=8)


class DeepStack(nn.Module):
    """depth x (Linear -> tanh), plain h = F(h) or residual h = h + F(h)."""

    def __init__(self, depth: int, width: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh())
                                    for _ in range(depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = h + layer(h) if self.residual else layer(h)    # He 2016: y = x + F(x)
        return h


class BasicBlock(nn.Module):
    """ResNet-18/34 block (He 2016): relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()              # shapes match: add x itself, no parameters
        if stride != 1 or in_ch != out_ch:         # projection shortcut: 1x1 conv to the new shape
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # (B, C, H, W)
        out = F.relu(self.bn1(self.conv1(x)))                        # (B, C', H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))                        # the residual addition


class TransformerBlock(nn.Module):
    """Attention + feed-forward sublayers, each wrapped in a residual; names as in PyTorch's."""

    def __init__(self, dim: int, heads: int, pre_ln: bool):
        super().__init__()
        self.pre_ln = pre_ln
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def _sa(self, x):
        return self.self_attn(x, x, x, need_weights=False)[0]

    def _ff(self, x):
        return self.linear2(F.relu(self.linear1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:            # (B, T, E)
        if self.pre_ln:                        # Xiong 2020: x + F(LN(x)), the stream untouched
            x = x + self._sa(self.norm1(x))
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x))        # Vaswani 2017: LN(x + F(x)), after the addition
        return self.norm2(x + self._ff(x))


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019: y = x / sqrt(mean(x^2) + eps) * g; no mean subtracted, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # (..., dim)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def step_1_gradient_flow(device, width, batch, depths, **_) -> dict:
    x = torch.randn(batch, width, device=device)
    table = {}
    for depth in depths:
        row, plain = [], DeepStack(depth, width, residual=False).to(device)
        for residual in (False, True):
            stack = copy.deepcopy(plain)                   # the same weights for both stacks
            stack.residual = residual
            stack(x).pow(2).mean().backward()
            row.append(stack.layers[0][0].weight.grad.norm().item())   # first layer's gradient
        table[depth] = row
    print(f"{'depth':>6}{'plain |grad W_1|':>20}{'residual |grad W_1|':>22}")
    for depth, (plain, res) in table.items():
        print(f"{depth:>6}{plain:>20.3g}{res:>22.3g}")
    shallow, deep = depths[0], depths[-1]
    check(f"plain stack: first-layer gradient shrinks > 1000x from depth {shallow} to {deep}",
          table[deep][0] < 1e-3 * table[shallow][0],
          detail=f"{table[shallow][0]:.3g} -> {table[deep][0]:.3g}")
    check(f"residual stack: it does not shrink (depth {deep} >= depth {shallow})",
          table[deep][1] >= table[shallow][1],
          detail=f"{table[shallow][1]:.3g} -> {table[deep][1]:.3g}")
    return {"grad_norms": table}


def step_2_basic_block(device, channels, image, **_) -> dict:
    c_in, c_out = channels
    shapes = {}
    for in_ch, out_ch, stride in ((c_in, c_in, 1), (c_in, c_out, 2)):
        ours = BasicBlock(in_ch, out_ch, stride).to(device)
        down = (nn.Sequential(resnet.conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
                if stride != 1 or in_ch != out_ch else None)
        ref = resnet.BasicBlock(in_ch, out_ch, stride, downsample=down).to(device)
        ref.load_state_dict({k.replace("shortcut", "downsample"): v
                             for k, v in ours.state_dict().items()})
        x = torch.randn(4, in_ch, image, image, device=device)
        y = ours(x)
        kind = "identity" if isinstance(ours.shortcut, nn.Identity) else "1x1 projection"
        n_short = sum(p.numel() for p in ours.shortcut.parameters())
        print(f"BasicBlock({in_ch}, {out_ch}, stride={stride}): {tuple(x.shape)} -> "
              f"{tuple(y.shape)}, {kind} shortcut ({n_short} parameters)")
        check(f"BasicBlock({in_ch}, {out_ch}, stride={stride}) == torchvision's (same weights)",
              y, ref(x), atol=1e-5)                    # float32 convolutions, two code paths
        check(f"... output shape is (B, {out_ch}, {image // stride}, {image // stride})",
              tuple(y.shape) == (4, out_ch, image // stride, image // stride))
        shapes[(in_ch, out_ch, stride)] = tuple(y.shape)
    return {"block_shapes": shapes}


def step_3_post_ln_vs_pre_ln(device, embed_dim, heads, layers, seq_len, **_) -> dict:
    x = torch.randn(4, seq_len, embed_dim, device=device)
    stream_norms = {}
    for pre_ln in (False, True):
        name = "Pre-LN" if pre_ln else "Post-LN"
        blocks = [TransformerBlock(embed_dim, heads, pre_ln).to(device) for _ in range(layers)]
        ref = nn.TransformerEncoderLayer(embed_dim, heads, 4 * embed_dim, dropout=0.0,
                                         batch_first=True, norm_first=pre_ln, device=device)
        ref.load_state_dict(blocks[0].state_dict())
        check(f"{name} block == nn.TransformerEncoderLayer(norm_first={pre_ln})", blocks[0](x),
              ref(x), atol=1e-5)
        h, norms = x, []
        with torch.no_grad():
            for block in blocks:
                h = block(h)
                norms.append(h.norm(dim=-1).mean().item())        # mean |h_t| after each block
        stream_norms[name] = norms
        print(f"{name:>7}: mean token norm after blocks 1..{layers}: "
              + " ".join(f"{n:.2f}" for n in norms))
    sqrt_e = embed_dim ** 0.5
    post, pre = stream_norms["Post-LN"], stream_norms["Pre-LN"]
    # Not a check: LayerNorm (no gain or bias yet at init) outputs norm sqrt(E) by definition.
    print(f"Post-LN ends each block with LayerNorm: the stream's norm is reset to sqrt(E) = "
          f"{sqrt_e:g} (max deviation {max(abs(n - sqrt_e) for n in post):.1g})")
    check(f"Pre-LN: the stream is a running sum; its norm grows (block {layers} > 1.15 x block 1)",
          pre[-1] > 1.15 * pre[0], detail=f"{pre[0]:.2f} -> {pre[-1]:.2f}")
    return {"stream_norms": stream_norms}


def step_4_rmsnorm(device, embed_dim, **_) -> float:
    dev = float64_device(device)
    ours, ref = RMSNorm(embed_dim), nn.RMSNorm(embed_dim, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(embed_dim))                # a trained-looking gain
        ref.weight.copy_(ours.weight)
    ours, ref = ours.to(dev, torch.float64), ref.to(dev, torch.float64)
    for shape in ((5, embed_dim), (2, 3, embed_dim)):
        x = 3 * torch.randn(*shape, device=dev, dtype=torch.float64) + 1
        err = check(f"RMSNorm == nn.RMSNorm on {shape} (float64)", ours(x), ref(x), atol=1e-12)
    x = torch.randn(3, embed_dim, device=dev, dtype=torch.float64)
    shift = (ours(x + 5) - ours(x)).abs().max().item()
    ln_shift = (F.layer_norm(x + 5, (embed_dim,)) - F.layer_norm(x, (embed_dim,))).abs().max()
    print(f"adding 5 to every feature changes RMSNorm's output by {shift:.2f}, LayerNorm's by "
          f"{ln_shift.item():.1g} (LayerNorm subtracts the mean, RMSNorm does not)")
    print(f"parameters for dim {embed_dim}: RMSNorm {embed_dim} (gain), LayerNorm "
          f"{2 * embed_dim} (gain + bias)")
    return err


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {
        **step_1_gradient_flow(device, **cfg),
        **step_2_basic_block(device, **cfg),
        **step_3_post_ln_vs_pre_ln(device, **cfg),
        "rmsnorm_error": step_4_rmsnorm(device, **cfg),
    }
    deep = cfg["depths"][-1]
    plain, res = results["grad_norms"][deep]
    print(f"summary: depth {deep}, first-layer gradient norm plain {plain:.2g} vs residual "
          f"{res:.2g}")
    return results


if __name__ == "__main__":
    main()
