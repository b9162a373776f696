"""Sampling strategies: greedy, temperature, top-k, top-p (nucleus) and the repetition penalty.

A language model gives logits over the vocabulary for the next token; a decoding strategy turns
them into one token. Each filter below rewrites the logits (dropped tokens get -inf), then
``torch.multinomial`` draws from the softmax of what is left.

Claims proven:
  1. top-k with k = 1 and temperature -> 0 both pick exactly the greedy (argmax) token.
  2. top-k keeps every token tied with the k-th largest; top-p keeps the smallest set whose
     probability reaches p, never fewer than one token (checked by hand on a known distribution).
  3. The repetition penalty (CTRL, Keskar 2019, with the sign fix Hugging Face transformers
     uses): a seen token's positive logit is divided by the penalty, a negative one multiplied;
     on a looping toy model it breaks the loop.
  4. Many draws of ``sample_next`` match the filtered distribution (total-variation bound), and
     no filtered-out token is ever drawn.

Run:  python advanced/evaluation_inference/01_sampling_strategies.py    (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import math

import torch

from torchnotes import check, make_parser, start

FULL = dict(vocab=50, batch=256, n_draws=200_000, gen_len=30)
SMOKE = dict(vocab=20, batch=64, n_draws=20_000, gen_len=12)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (B, V); ties with the k-th value are kept too."""
    kth = logits.topk(k, dim=-1).values[..., -1:]                       # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches p; the top token is always kept."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)         # (B, V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs                # mass of the tokens ranked above
    drop_sorted = mass_before >= p                        # the set already reached p without it
    drop_sorted[..., 0] = False                           # at least one token
    drop = drop_sorted.scatter(-1, order, drop_sorted)   # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, prev_tokens: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) with the sign fix of Hugging Face's
    ``RepetitionPenaltyLogitsProcessor``: for tokens already generated, divide a positive logit
    by ``penalty`` and multiply a negative one, so both become less likely. (CTRL divides every
    seen logit, which makes a negative one *more* likely.) (B, V), (B, t)."""
    seen = logits.gather(-1, prev_tokens)                               # (B, t)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, prev_tokens, seen)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator=None) -> torch.Tensor:
    """One token per row: logits / T, then top-k, then top-p, then draw from the softmax."""
    logits = logits / temperature                         # T < 1 sharpens, T > 1 flattens
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)                                          # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def step_1_greedy_limits(device, vocab: int, batch: int) -> bool:
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, vocab, generator=g, device=device)
    greedy = logits.argmax(-1)                                          # (B,)
    k1 = torch.stack([sample_next(logits, top_k=1, generator=g) for _ in range(5)])
    cold = torch.stack([sample_next(logits, temperature=1e-5, generator=g) for _ in range(5)])
    warm = sample_next(logits, temperature=1.0, generator=g)
    print(f"T = 1 sampling differs from greedy on {(warm != greedy).sum()}/{batch} rows")
    check(f"top-k with k = 1 == greedy ({batch} rows x 5 draws)", bool((k1 == greedy).all()))
    return check("temperature 1e-5 == greedy (T -> 0 limit)", bool((cold == greedy).all()))


def kept(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered[0]).nonzero().flatten().tolist()


def step_2_filters_by_hand(device) -> dict:
    ties = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]], device=device)
    print(f"top-k k=2 on {ties.tolist()[0]} keeps {kept(top_k_filter(ties, 2))}")
    check("top-k keeps every token tied with the k-th value (k=2 -> 3 tied tokens kept)",
          kept(top_k_filter(ties, 2)) == [1, 2, 3])
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]], device=device)  # sorted: 1, 3, 4, 2, 0
    logits = probs.log()
    # By hand: cumulative mass in rank order is 0.5, 0.7, 0.85, 0.95, 1.0.
    by_hand = {0.3: [1], 0.6: [1, 3], 0.8: [1, 3, 4], 0.9: [1, 2, 3, 4], 0.99: [0, 1, 2, 3, 4]}
    got = {p: kept(top_p_filter(logits, p)) for p in by_hand}
    for p, toks in got.items():
        print(f"top-p p={p}: keeps tokens {toks}")
    check("top-p keeps the smallest set reaching p (5 values of p, by hand)", got == by_hand)
    tiny = kept(top_p_filter(logits, 1e-9))
    check("top-p never keeps fewer than one token (p -> 0 keeps the top one)", tiny == [1])
    return got


def step_3_repetition_penalty(device, gen_len: int) -> dict:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]], device=device)
    prev = torch.tensor([[0, 1, 1]], device=device)             # token 1 repeated: still once
    out = apply_repetition_penalty(logits, prev, 1.2)
    check("penalty: seen positive 2.0 -> 2.0 / 1.2, seen negative -1.0 -> -1.0 * 1.2, "
          "unseen unchanged", out, torch.tensor([[2.0 / 1.2, -1.2, 0.5, 3.0]]), atol=1e-6)
    # A toy bigram "model" whose greedy path loops 0 -> 1 -> 0 -> 1 ...
    table = torch.full((6, 6), 0.5, device=device)
    table[0, 1] = table[1, 0] = 1.2
    table[:, 2:] += torch.linspace(0.0, 0.4, 4, device=device)

    def decode(penalty: float) -> list[int]:
        seq = [0]
        for _ in range(gen_len):
            nxt = apply_repetition_penalty(table[seq[-1]][None], torch.tensor([seq],
                                           device=device), penalty).argmax(-1)
            seq.append(int(nxt))
        return seq

    plain, penalised = decode(1.0), decode(1.5)
    print(f"greedy, no penalty : {plain}\ngreedy, penalty 1.5: {penalised}")
    check("the penalty breaks the greedy loop: more distinct tokens",
          len(set(penalised)) > len(set(plain)),
          detail=f"{len(set(plain))} -> {len(set(penalised))} distinct")
    return {"distinct_plain": len(set(plain)), "distinct_penalised": len(set(penalised))}


def step_4_empirical_distribution(device, n_draws: int) -> float:
    logits = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0, -2.0], device=device)
    temperature, k, p = 0.8, 6, 0.9
    # The expected distribution, worked out without the filter functions: tokens are already in
    # descending order, so top-k keeps 0..5; then top-p keeps the shortest prefix reaching p.
    tempered = (logits / temperature)[:k].softmax(-1)
    n_keep = int((tempered.cumsum(-1) < p).sum()) + 1
    expected = torch.zeros(10, device=device)
    expected[:n_keep] = tempered[:n_keep] / tempered[:n_keep].sum()
    g = torch.Generator(device=device).manual_seed(1)
    draws = sample_next(logits.expand(n_draws, 10), temperature, k, p, generator=g)
    freq = torch.bincount(draws, minlength=10).float() / n_draws
    tv = 0.5 * (freq - expected).abs().sum().item()
    bound = 0.5 * sum(4 * math.sqrt(q * (1 - q) / n_draws) for q in expected.tolist())
    print(f"expected  {[round(v, 3) for v in expected.tolist()]}")
    print(f"empirical {[round(v, 3) for v in freq.tolist()]}  ({n_draws} draws)")
    check(f"no filtered-out token is drawn (kept: the top {n_keep})",
          bool((freq[expected == 0] == 0).all()))
    return check("empirical == filtered distribution (total variation within 4 sigma per token)",
                 tv <= bound, detail=f"TV {tv:.4f} <= {bound:.4f}")


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    cfg = SMOKE if args.smoke else FULL
    results = {"greedy_limits": step_1_greedy_limits(device, cfg["vocab"], cfg["batch"]),
               "top_p_sets": step_2_filters_by_hand(device),
               "repetition": step_3_repetition_penalty(device, cfg["gen_len"]),
               "tv_ok": step_4_empirical_distribution(device, cfg["n_draws"])}
    print("summary: greedy = top-k(1) = T->0; top-p minimal; repetition penalty; sampling unbiased")
    return results


if __name__ == "__main__":
    main()
