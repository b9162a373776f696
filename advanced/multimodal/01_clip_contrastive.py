"""CLIP: the symmetric InfoNCE loss, the learnable temperature logit_scale, zero-shot classifying.

CLIP (Radford et al. 2021) trains an image encoder and a text encoder together: in a batch of
N (image, caption) pairs, each image must pick its own caption out of N and each caption its
own image. Afterwards a class is "described" by a prompt and images are classified zero-shot
by the most similar prompt.

Claims proven:
  1. ``clip_loss`` (written out with logsumexp) equals the mean of the image->text and
     text->image ``F.cross_entropy`` losses.
  2. ``TinyCLIP.logit_scale`` starts at log(1 / 0.07), so logits are first scaled by 14.3, and
     is clamped at log(100), as in CLIP: on separable pairs the loss always prefers a larger
     scale, so training drives it to the clamp, and never past it.
  3. Captions of different lengths are padded with a ``<pad>`` id that ``nn.EmbeddingBag``
     (``padding_idx``) leaves out of the mean: a caption's text embedding is the same alone and
     inside a batch of longer captions.
  4. Before training, zero-shot classification of held-out digits with prompts "a photo of the
     digit <name>" is near chance (10%); after a short training on (MNIST-shaped digit, caption)
     pairs it beats chance by a wide margin.

Role in LLaVA-style models: the contrastive image encoder is the part CLIP leaves behind. LLaVA
(Liu et al. 2023) takes CLIP's frozen ViT, drops the text tower, and feeds the ViT's patch
features through a small projection (a linear layer, later an MLP) into the token embeddings of
an LLM; because CLIP training already aligned those features with language, a projection trained
on image-caption pairs is enough for the LLM to "read" the image, and instruction tuning does
the rest. SEED, BLIP-2 and Flamingo likewise start from a contrastively trained image encoder.

Run:  python advanced/multimodal/01_clip_contrastive.py        (about 7 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from torchnotes import check, make_parser, progress, start
from torchnotes.datasets import (
    SyntheticMNIST,
    add_data_args,
    data_root,
    torchvision_errors,
    use_real,
)

FULL = dict(n_train=6000, n_test=1000, dim=32, hidden=128, steps=600, lr=2e-3, min_acc=0.8)
SMOKE = dict(n_train=512, n_test=200, dim=16, hidden=64, steps=100, lr=3e-3, min_acc=0.5)
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a photo of the digit {}", "a handwritten {}", "the number {} written by hand",
             "an image of a {}")
PAD = "<pad>"                            # fills short captions up to the batch's longest
WORDS = [PAD, *sorted({w for t in TEMPLATES for w in t.split() if w != "{}"} | set(NAMES))]
MAX_SCALE = math.log(100.0)              # CLIP: logits never scaled by more than 100


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021, Fig. 3; van den Oord 2018): (N, D), (N, D) -> ()."""
    img = F.normalize(image_emb, dim=-1)                                    # (N, D)
    txt = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * img @ txt.T                  # (N, N): pair i <-> i on diagonal
    diag = logits.diagonal()
    image_to_text = (logits.logsumexp(dim=1) - diag).mean()   # each row: softmax over captions
    text_to_image = (logits.logsumexp(dim=0) - diag).mean()   # each column: over images
    return (image_to_text + text_to_image) / 2


def zero_shot_classify(image_emb: torch.Tensor, class_text_emb: torch.Tensor) -> torch.Tensor:
    """Index of the most similar class prompt (cosine similarity): (N, D), (C, D) -> (N,)."""
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(class_text_emb, dim=-1).T   # (N, C)
    return sims.argmax(dim=-1)


class TinyCLIP(nn.Module):
    """Image tower: MLP on pixels. Text tower: mean of word embeddings. Both into dim."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                   nn.Linear(hidden, dim))
        # padding_idx: the <pad> id is left out of the mean (and never trained).
        self.text = nn.Sequential(nn.EmbeddingBag(len(WORDS), hidden, mode="mean",
                                                  padding_idx=WORDS.index(PAD)),
                                  nn.ReLU(), nn.Linear(hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))   # CLIP's init


def tokenize(captions: list[str], device) -> torch.Tensor:
    """Word ids, (N, L): captions have 3 to 6 words; shorter ones are filled with <pad>."""
    ids = [[WORDS.index(w) for w in c.split()] for c in captions]
    width = max(map(len, ids))
    pad = WORDS.index(PAD)
    return torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)


def load(args, train: bool, n: int):
    root = args.data_root or data_root()
    tf = torchvision.transforms.ToTensor()
    if use_real(args, "MNIST", verbose=train):
        with torchvision_errors("MNIST", root, args.download):
            ds = torchvision.datasets.MNIST(root, train=train, transform=tf,
                                            download=args.download)
    else:
        ds = SyntheticMNIST(train=train, transform=tf, size=n, seed=args.seed)
    return ds.data[:n].float().div(255).unsqueeze(1), ds.targets[:n]    # (n,1,28,28), (n,)


def step_1_loss_is_two_cross_entropies() -> float:
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(
        8, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    labels = torch.arange(8)
    ref = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return check("clip_loss == (CE(image->text) + CE(text->image)) / 2 (float64)",
                 clip_loss(img, txt, scale), ref, atol=1e-12)


def step_2_logit_scale_is_clamped(cfg) -> float:
    model = TinyCLIP(cfg["dim"], cfg["hidden"])                      # freshly built
    scale = model.logit_scale
    check("TinyCLIP's logit_scale starts at log(1 / 0.07): logit_scale.exp() == 1 / 0.07 = 14.29",
          scale.exp(), torch.tensor(1 / 0.07), atol=1e-4)              # float32: ~1e-6
    emb = 0.25 * torch.eye(8) + 1.0         # 8 pairs: own caption a little closer (cos 1 vs 0.99)
    opt = torch.optim.Adam([scale], lr=0.1)                          # train the scale alone
    start, peak = scale.exp().item(), 0.0
    for _ in range(60):
        loss = clip_loss(emb, emb, scale)   # separable: a larger scale always lowers the loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            scale.clamp_(0, MAX_SCALE)      # CLIP: clip the log-scale at log 100
        peak = max(peak, scale.exp().item())
    print(f"logit_scale.exp(): {start:.2f} -> {scale.exp().item():.2f} after 60 steps "
          f"(loss {loss.item():.2e})")
    return check("on separable pairs training drives logit_scale.exp() to the clamp, 100, "
                 "and never past it", abs(peak - 100) < 1e-3, detail=f"max {peak:.4f}")


def step_3_padding_is_left_out(model, device) -> float:
    caption = "a handwritten zero"                                   # 3 words
    batch = [caption, "the number seven written by hand", "a photo of the digit two"]
    ids = tokenize(batch, device)                                    # (3, 6)
    print(f"tokenize: {caption!r} inside a batch -> ids {ids[0].tolist()} "
          f"({WORDS.index(PAD)} = {PAD})")
    with torch.no_grad():
        alone, batched = model.text(tokenize([caption], device)), model.text(ids)[:1]
    # float32, the same three rows averaged either way: ~1e-7 apart.
    return check("a caption's text embedding is the same alone and padded inside a batch",
                 batched, alone, atol=1e-5)


def accuracy(model, x, y, device) -> float:
    prompts = tokenize([f"a photo of the digit {name}" for name in NAMES], device)
    with torch.no_grad():
        pred = zero_shot_classify(model.image(x), model.text(prompts))
    return (pred == y).float().mean().item()


def step_4_zero_shot(model, x, y, x_test, y_test, device, cfg) -> dict:
    acc0 = accuracy(model, x_test, y_test, device)
    # Untrained towers send each digit's images to an arbitrary prompt: 10% on average, and at
    # most 22% (smoke, 200 test digits) or 15% (full, 1000) over 200 seeds of data and init.
    check("before training, zero-shot accuracy is near chance (< 30%, 3x chance)", acc0 < 0.3,
          detail=f"{acc0:.1%}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(0)
    by_class = [torch.nonzero(y == c).flatten().cpu() for c in range(10)]
    losses = []
    for _ in progress(range(cfg["steps"]), desc="CLIP"):
        # One image per class: InfoNCE treats every other caption in the batch as wrong, so two
        # captions naming the same digit would be false negatives (web captions rarely repeat).
        idx = torch.stack([c[torch.randint(0, len(c), (1,), generator=g)] for c in by_class])[:, 0]
        words = [TEMPLATES[int(i) % len(TEMPLATES)].format(NAMES[int(y[i])]) for i in idx]
        loss = clip_loss(model.image(x[idx]), model.text(tokenize(words, device)),
                         model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_SCALE)        # as in step 2
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f} (mean of the last 20); "
          f"logit_scale.exp() now {model.logit_scale.exp().item():.1f}")
    acc = accuracy(model, x_test, y_test, device)
    print(f"zero-shot accuracy on held-out digits: {acc0:.1%} before -> {acc:.1%} after "
          f"(chance 10%)")
    check(f"after training, zero-shot accuracy >= {cfg['min_acc']:.0%} (chance is 10%)",
          acc >= cfg["min_acc"], detail=f"{acc:.1%}")
    return {"acc_before": acc0, "acc_after": acc, "loss_first": losses[0],
            "loss_last": sum(losses[-20:]) / 20}


def main(argv=None) -> dict:
    parser = add_data_args(make_parser(__file__, __doc__))
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    x, y = load(args, True, cfg["n_train"])
    x_test, y_test = load(args, False, cfg["n_test"])              # held-out digits
    results = {"loss_error": step_1_loss_is_two_cross_entropies(),
               "clamped": step_2_logit_scale_is_clamped(cfg)}
    model = TinyCLIP(cfg["dim"], cfg["hidden"]).to(device)
    results["padding_error"] = step_3_padding_is_left_out(model, device)
    results.update(step_4_zero_shot(model, x.to(device), y.to(device), x_test.to(device),
                                    y_test.to(device), device, cfg))
    print(f"summary: zero-shot {results['acc_before']:.1%} -> {results['acc_after']:.1%}")
    return results


if __name__ == "__main__":
    main()
