"""Unit tests for advanced/multimodal: the CLIP loss and cross-attention blocks pinned against
PyTorch, and proof that each claim family can fail (a wrong piece patched into the note raises
ClaimError)."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from torchnotes import ClaimError

CPU = torch.device("cpu")
CLIP = "advanced/multimodal/01_clip_contrastive.py"
XATTN = "advanced/multimodal/02_cross_attention.py"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -------------------------------------------------------------------------------- 01 CLIP

@pytest.mark.parametrize("n", [1, 3, 16])
def test_clip_loss_is_mean_of_two_cross_entropies(note, n):
    mod = note(CLIP)
    img, txt = torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64)
    scale = torch.tensor(2.3, dtype=torch.float64)
    logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    labels = torch.arange(n)
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(mod.clip_loss(img, txt, scale), ref)
    # scale-invariant in the embeddings (they are L2-normalised)
    torch.testing.assert_close(mod.clip_loss(3 * img, 0.5 * txt, scale), ref)


def test_zero_shot_classify_uses_cosine_similarity(note):
    mod = note(CLIP)
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    images = torch.tensor([[10.0, 1.0], [0.1, 0.3], [-2.0, -2.1], [0.0, -5.0]])
    assert mod.zero_shot_classify(images, classes).tolist() == [0, 1, 2, 2]
    assert mod.zero_shot_classify(images, 100 * classes).tolist() == [0, 1, 2, 2]


def test_clip_one_direction_only_is_caught(note, monkeypatch):
    mod = note(CLIP)

    def image_to_text_only(img, txt, scale):
        logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
        return F.cross_entropy(logits, torch.arange(len(img)))

    monkeypatch.setattr(mod, "clip_loss", image_to_text_only)
    with pytest.raises(ClaimError, match="CE"):
        mod.step_1_loss_is_two_cross_entropies()


def test_clip_missing_clamp_is_caught(note, monkeypatch):
    mod = note(CLIP)
    monkeypatch.setattr(mod, "MAX_SCALE", math.log(1000.0))            # a clamp that never bites
    with pytest.raises(ClaimError, match="clamp"):
        mod.step_2_logit_scale_is_clamped(mod.SMOKE)


def test_clip_logit_scale_init_without_log_is_caught(note, monkeypatch):
    mod = note(CLIP)
    right = mod.TinyCLIP.__init__

    def no_log(self, *a):                                  # torch.tensor(1 / 0.07): exp -> 1.6e6
        right(self, *a)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07))

    monkeypatch.setattr(mod.TinyCLIP, "__init__", no_log)
    with pytest.raises(ClaimError, match="logit_scale starts at log"):
        mod.step_2_logit_scale_is_clamped(mod.SMOKE)


def test_tokenize_pads_and_text_embedding_ignores_padding(note):
    mod = note(CLIP)
    ids = mod.tokenize(["a handwritten one", "an image of a two"], CPU)
    pad = mod.WORDS.index(mod.PAD)
    assert ids.shape == (2, 5) and ids[0, 3:].tolist() == [pad, pad] and (ids[1] != pad).all()
    model = mod.TinyCLIP(4, 8)
    bag = model.text[0]
    words = ids[0, :3]
    torch.testing.assert_close(bag(ids[:1]), bag.weight[words].mean(0, keepdim=True))


def test_clip_padding_with_the_last_word_is_caught(note, monkeypatch):
    mod = note(CLIP)

    def repeat_last(captions, device):                     # the mean now depends on the batch
        ids = [[mod.WORDS.index(w) for w in c.split()] for c in captions]
        width = max(map(len, ids))
        return torch.tensor([r + r[-1:] * (width - len(r)) for r in ids], device=device)

    monkeypatch.setattr(mod, "tokenize", repeat_last)
    with pytest.raises(ClaimError, match="alone and padded inside a batch"):
        mod.step_3_padding_is_left_out(mod.TinyCLIP(4, 8), CPU)


def test_clip_pad_counted_in_the_mean_is_caught(note, monkeypatch):
    mod = note(CLIP)
    right = mod.TinyCLIP.__init__

    def no_padding_idx(self, *a):                          # <pad> is an ordinary word
        right(self, *a)
        self.text[0] = torch.nn.EmbeddingBag(len(mod.WORDS), self.text[0].embedding_dim,
                                             mode="mean")

    monkeypatch.setattr(mod.TinyCLIP, "__init__", no_padding_idx)
    with pytest.raises(ClaimError, match="alone and padded inside a batch"):
        mod.step_3_padding_is_left_out(mod.TinyCLIP(4, 8), CPU)


def test_clip_trained_model_sold_as_untrained_is_caught(note, monkeypatch, tmp_path):
    mod = note(CLIP)
    right = mod.step_4_zero_shot

    def twice(model, *a):                                  # "before" measured after training
        right(model, *a)
        return right(model, *a)

    monkeypatch.setattr(mod, "step_4_zero_shot", twice)
    with pytest.raises(ClaimError, match="before training, zero-shot accuracy is near chance"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])


def test_clip_broken_zero_shot_is_caught(note, monkeypatch, tmp_path):
    mod = note(CLIP)
    monkeypatch.setattr(mod, "zero_shot_classify",                     # argmin: least similar
                        lambda img, txt: (F.normalize(img, dim=-1)
                                          @ F.normalize(txt, dim=-1).T).argmin(-1))
    with pytest.raises(ClaimError, match="zero-shot accuracy"):
        mod.main(["--smoke", "--out-dir", str(tmp_path)])


# ---------------------------------------------------------------------- 02 cross-attention

def test_cross_attention_matches_sdpa_with_mask(note):
    mod = note(XATTN)
    attn = mod.CrossAttention(16, 12, 2).double()
    x, ctx = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 7, 12,
                                                                    dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7, [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    q, k, v = (m(t).view(3, -1, 2, 8).transpose(1, 2)
               for m, t in ((attn.q, x), (attn.k, ctx), (attn.v, ctx)))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    ref = attn.out(ref.transpose(1, 2).reshape(3, 5, 16))
    out = attn(x, ctx, mask)
    assert out.shape == (3, 5, 16)
    torch.testing.assert_close(out, ref)


def test_cross_attention_mask_hides_tokens(note):
    mod = note(XATTN)
    attn = mod.CrossAttention(8, 6, 2)
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    other = torch.where(mask[..., None], ctx, torch.randn(2, 5, 6) * 50)
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, other, mask))
    # with one visible token the output is out(v(that token)) for every query
    row = attn.out(attn.v(ctx[1, 0]))
    torch.testing.assert_close(attn(x, ctx, mask)[1], row.expand(3, 8))


def test_gated_block_is_identity_at_init_and_qformer_shapes(note):
    mod = note(XATTN)
    block = mod.GatedCrossAttention(8, 6, 2)
    x = torch.randn(2, 4, 8)
    assert torch.equal(block(x, torch.randn(2, 9, 6)), x)
    qf = mod.QFormerLite(3, 8, 6, 2)
    for s in (1, 20):
        assert qf(torch.randn(2, s, 6)).shape == (2, 3, 8)


def test_xattn_shifted_mask_is_caught(note, monkeypatch):
    mod = note(XATTN)
    right = mod.CrossAttention.forward

    def shifted(self, x, context, context_mask=None):          # off-by-one mask
        m = None if context_mask is None else context_mask.roll(1, dims=1)
        return right(self, x, context, m)

    monkeypatch.setattr(mod.CrossAttention, "forward", shifted)
    with pytest.raises(ClaimError, match="no effect|scaled_dot_product"):
        mod.step_2_mask_blocks_tokens(mod.SMOKE, CPU)
    with pytest.raises(ClaimError, match="scaled_dot_product"):
        mod.step_1_matches_pytorch(mod.SMOKE, CPU)


def test_xattn_missing_sqrt_d_is_caught(note, monkeypatch):
    mod = note(XATTN)
    monkeypatch.setattr(mod, "math", types.SimpleNamespace(sqrt=lambda d: 1.0))  # no 1/sqrt(d)
    with pytest.raises(ClaimError, match="scaled_dot_product"):
        mod.step_1_matches_pytorch(mod.SMOKE, CPU)


def test_gate_open_at_init_is_caught(note, monkeypatch):
    mod = note(XATTN)
    right = mod.GatedCrossAttention.__init__

    def open_gate(self, *a):
        right(self, *a)
        self.attn_gate.data.fill_(1.0)                                 # not Flamingo's 0

    monkeypatch.setattr(mod.GatedCrossAttention, "__init__", open_gate)
    with pytest.raises(ClaimError, match="identity"):
        mod.step_3_gated_identity(mod.SMOKE, CPU)


def test_qformer_with_positions_is_caught(note, monkeypatch):
    mod = note(XATTN)
    right = mod.QFormerLite.forward

    def positional(self, feats):                                       # order now matters
        pos = torch.linspace(0, 1, feats.shape[1])[None, :, None]
        return right(self, feats + pos)

    monkeypatch.setattr(mod.QFormerLite, "forward", positional)
    with pytest.raises(ClaimError, match="order"):
        mod.step_4_qformer(mod.SMOKE, CPU)
