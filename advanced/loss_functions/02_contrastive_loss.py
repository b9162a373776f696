"""Contrastive losses: InfoNCE, NT-Xent (SimCLR) and the triplet loss, written out by hand.

A contrastive loss pulls an anchor towards its positive and pushes it away from negatives. In
InfoNCE the positive's similarity must win a softmax against the negatives', so the loss is a
cross-entropy whose "class" is the positive; in-batch negatives reuse the other rows' keys.

Claims proven:
  1. ``info_nce`` (-s_pos/t + log sum_j exp(s_j/t), van den Oord et al. 2018) equals
     ``F.cross_entropy`` over the cosine-similarity logits, with in-batch negatives and with a
     shared bank of negatives.
  2. ``nt_xent`` (SimCLR, Chen et al. 2020: 2B views, each view's positive is its twin, the other
     2B - 2 are negatives) equals cross-entropy over the masked 2B x 2B similarity matrix, and is
     symmetric: nt_xent(z1, z2) == nt_xent(z2, z1).
  3. ``triplet_loss`` max(d(a,p) - d(a,n) + margin, 0) (Schroff et al. 2015) equals
     ``nn.TripletMarginLoss``.
  4. Lower temperature sharpens: autograd's gradient of InfoNCE w.r.t. the similarities is
     (softmax(s / t) - onehot(positive)) / t, the softmax gets lower entropy as t falls, and the
     hardest negative takes a larger share of the negatives' gradient.
  5. A small encoder trained with in-batch InfoNCE on two noisy views of synthetic points: the
     loss falls by a stated factor and a view retrieves its twin among the batch.

Run:  python advanced/loss_functions/02_contrastive_loss.py        (about 4 s on a laptop CPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchnotes import check, make_parser, start

FULL = dict(batch=32, dim=16, negatives=50, steps=300, train_batch=128)
SMOKE = dict(batch=8, dim=16, negatives=12, steps=100, train_batch=64)

# float32 cosine similarities / t (|.| <= 1 / 0.1) and a logsumexp over <= 256 terms: 1e-5.
ATOL = 1e-5


def info_nce_from_similarities(sim, positive, temperature=0.1):
    """-s_pos/t + log sum_j exp(s_j/t) per row, averaged. sim: (B, K) similarities; positive:
    (B,) the column holding each row's positive key."""
    logits = sim / temperature                                           # (B, K)
    pos = logits.gather(1, positive[:, None])[:, 0]                      # (B,)
    return (-pos + torch.logsumexp(logits, dim=1)).mean()       # -log softmax(logits)[pos]


def info_nce(query, positive_key, negative_keys=None, temperature=0.1):
    """InfoNCE with cosine similarity. query, positive_key: (B, D); negative_keys: (M, D) or None.

    None: in-batch negatives (row i's positive is key i, the other B - 1 keys are negatives).
    """
    q = F.normalize(query, dim=-1)                                       # (B, D), unit rows
    k = F.normalize(positive_key, dim=-1)                                # (B, D)
    if negative_keys is None:
        sim = q @ k.T                                                    # (B, B), diag = pos
        positive = torch.arange(len(q), device=q.device)                 # (B,)
    else:
        n = F.normalize(negative_keys, dim=-1)                           # (M, D)
        sim = torch.cat([(q * k).sum(-1, keepdim=True), q @ n.T], dim=1)  # (B, 1 + M)
        positive = torch.zeros(len(q), dtype=torch.long, device=q.device)   # column 0
    return info_nce_from_similarities(sim, positive, temperature)


def nt_xent(z1, z2, temperature=0.5):
    """NT-Xent (SimCLR): z1, z2 (B, D) are two views; each of the 2B views has one positive."""
    B = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)                         # (2B, D)
    sim = z @ z.T / temperature                                          # (2B, 2B)
    self_mask = torch.eye(2 * B, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))                      # a view is not its pair
    twin = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)   # (2B,)
    pos = sim[torch.arange(2 * B, device=z.device), twin]                # (2B,)
    return (-pos + torch.logsumexp(sim, dim=1)).mean()


def triplet_loss(anchor, positive, negative, margin=1.0):
    """max(||a - p|| - ||a - n|| + margin, 0), averaged over the batch. Inputs (B, D)."""
    d_ap = (anchor - positive).pow(2).sum(-1).sqrt()                     # (B,)
    d_an = (anchor - negative).pow(2).sum(-1).sqrt()                     # (B,)
    return (d_ap - d_an + margin).clamp(min=0).mean()


def step_1_info_nce_is_cross_entropy(device, batch: int, dim: int, negatives: int) -> dict:
    q, k = torch.randn(batch, dim, device=device), torch.randn(batch, dim, device=device)
    bank = torch.randn(negatives, dim, device=device)
    qn, kn, bn = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(bank, dim=-1)
    ref_in = F.cross_entropy(qn @ kn.T / 0.1, torch.arange(batch, device=device))
    logits = torch.cat([(qn * kn).sum(-1, keepdim=True), qn @ bn.T], dim=1) / 0.1
    ref_bank = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device))
    ours_in, ours_bank = info_nce(q, k), info_nce(q, k, bank)
    print(f"InfoNCE in-batch: {ours_in.item():.4f} (log B = {torch.log(torch.tensor(batch)):.4f}"
          f" is chance); with {negatives} shared negatives: {ours_bank.item():.4f}")
    check("info_nce, in-batch negatives == F.cross_entropy(q k^T / t, arange(B))", ours_in,
          ref_in, atol=ATOL, rtol=ATOL)
    check("info_nce, shared negatives == F.cross_entropy([pos | q n^T] / t, class 0)", ours_bank,
          ref_bank, atol=ATOL, rtol=ATOL)
    return {"in_batch": ours_in.item(), "bank": ours_bank.item()}


def step_2_nt_xent(device, batch: int, dim: int) -> float:
    z1, z2 = torch.randn(batch, dim, device=device), torch.randn(batch, dim, device=device)
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))                  # (2B, 2B)
    labels = (torch.arange(2 * batch, device=device) + batch) % (2 * batch)
    ours = nt_xent(z1, z2)
    print(f"NT-Xent: {ours.item():.4f} over {2 * batch} views "
          f"({2 * batch - 2} negatives each)")
    check("nt_xent == F.cross_entropy(masked 2B x 2B similarities, twin index)", ours,
          F.cross_entropy(sim, labels), atol=ATOL, rtol=ATOL)
    return check("nt_xent is symmetric: nt_xent(z1, z2) == nt_xent(z2, z1)", ours,
                 nt_xent(z2, z1), atol=ATOL, rtol=ATOL)


def step_3_triplet(device, batch: int, dim: int) -> float:
    a, p = torch.randn(batch, dim, device=device), torch.randn(batch, dim, device=device)
    n = torch.randn(batch, dim, device=device)
    ours = triplet_loss(a, p, n, margin=1.0)
    ref = nn.TripletMarginLoss(margin=1.0)(a, p, n)
    active = ((a - p).norm(dim=-1) - (a - n).norm(dim=-1) + 1.0 > 0).float().mean().item()
    print(f"triplet loss: {ours.item():.4f}; {active:.0%} of triplets violate the margin")
    # TripletMarginLoss measures ||a - p + 1e-6||: distances of ~5 shift by ~1e-6 * sqrt(D).
    return check("triplet_loss == nn.TripletMarginLoss(margin=1.0)", ours, ref, atol=1e-5)


def step_4_temperature_sharpens(device, dim: int, negatives: int,
                                temps=(1.0, 0.5, 0.1, 0.05)) -> dict:
    q = torch.randn(1, dim, device=device)
    keys = torch.randn(negatives + 1, dim, device=device)                # key 0 is the positive
    sims = F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).T          # (1, 1 + M)
    positive = torch.zeros(1, dtype=torch.long, device=device)
    rows, grads, closed = {}, [], []
    for t in temps:
        sim = sims.clone().requires_grad_(True)
        grad, = torch.autograd.grad(info_nce_from_similarities(sim, positive, t), sim)
        prob = F.softmax(sims / t, dim=-1)                               # (1, 1 + M)
        # d loss / d s_j = (prob_j - [j is the positive]) / t: the positive is pulled with
        # -(1 - prob_pos) / t, each negative pushed with prob_j / t.
        grads.append(grad[0])                                            # (1 + M,)
        closed.append((prob - F.one_hot(positive, sims.shape[1]))[0] / t)
        entropy = -(prob * prob.log()).sum().item()
        neg = grad[0, 1:]                                     # the negatives' gradient weights
        rows[t] = (entropy, (neg.max() / neg.sum()).item())
        print(f"t = {t:4.2f}: entropy {entropy:.3f}, gradient at the positive "
              f"{grad[0, 0].item():+7.3f}, hardest negative's share {rows[t][1]:.1%}")
    # float32: logsumexp's backward forms exp(s/t - lse), and lse (up to 1/t = 20) rounds by
    # ~1e-6, so each prob errs by ~1e-6 relative, times 1/t: up to ~2e-5 of max |grad| = 20.
    check("autograd d info_nce / d s == (softmax(s / t) - onehot(positive)) / t at every t",
          torch.stack(grads), torch.stack(closed), atol=1e-6, rtol=5e-6)
    ent = [e for e, _ in rows.values()]
    share = [s for _, s in rows.values()]
    check("lower temperature -> sharper softmax (entropy falls as t falls)",
          all(x > y for x, y in zip(ent, ent[1:], strict=False)),
          detail=" > ".join(f"{e:.3f}" for e in ent))
    check("lower temperature -> the hardest negative dominates the gradient",
          all(x < y for x, y in zip(share, share[1:], strict=False)),
          detail=" < ".join(f"{s:.1%}" for s in share))
    return rows


def step_5_train(device, steps: int, train_batch: int) -> dict:
    latent = torch.randn(4096, 8, device=device)                    # the "content" of a sample
    mix = torch.randn(8, 32, device=device)                         # how content shows in inputs
    encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=3e-3)

    def two_views(idx):                                             # two noisy looks at a sample
        clean = latent[idx] @ mix                                   # (B, 32)
        return (clean + torch.randn_like(clean), clean + torch.randn_like(clean))

    losses = []
    for _ in range(steps):
        idx = torch.randint(0, latent.shape[0], (train_batch,), device=device)
        v1, v2 = two_views(idx)
        loss = info_nce(encoder(v1), encoder(v2), temperature=0.1)  # in-batch negatives
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        v1, v2 = two_views(torch.arange(train_batch, device=device))
        e1, e2 = F.normalize(encoder(v1), dim=-1), F.normalize(encoder(v2), dim=-1)
        top1 = ((e1 @ e2.T).argmax(-1) == torch.arange(train_batch, device=device)).float()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"InfoNCE training: loss {first:.3f} -> {last:.3f} ({first / last:.1f}x); a view "
          f"finds its twin among {train_batch}: {top1.mean().item():.1%} (chance "
          f"{1 / train_batch:.1%})")
    check("InfoNCE training: the loss falls at least 2.5x", last < first / 2.5,
          detail=f"{first:.3f} -> {last:.3f}")
    check("trained views retrieve their twin (top-1) >= 90% of the time",
          top1.mean().item() >= 0.9, detail=f"{top1.mean().item():.1%}")
    return {"first": first, "last": last, "top1": top1.mean().item()}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    b, d, m = cfg["batch"], cfg["dim"], cfg["negatives"]
    results = {
        "info_nce": step_1_info_nce_is_cross_entropy(device, b, d, m),
        "nt_xent_symmetry_error": step_2_nt_xent(device, b, d),
        "triplet_error": step_3_triplet(device, b, d),
        "temperature": step_4_temperature_sharpens(device, d, m),
        "train": step_5_train(device, cfg["steps"], cfg["train_batch"]),
    }
    t = results["train"]
    print(f"summary: InfoNCE loss {t['first']:.2f} -> {t['last']:.2f}, twin retrieval "
          f"{t['top1']:.1%}")
    return results


if __name__ == "__main__":
    main()
