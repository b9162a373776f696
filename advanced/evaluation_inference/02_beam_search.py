"""Beam search: the best few prefixes, the length penalty, diverse beam search, when to use what.

Greedy decoding commits to the single best next token; beam search keeps the ``beam_width``
best prefixes by total log-probability at each step and so can find a sequence whose first
token looked worse. A ``step_fn(prefix (n, t)) -> log-probs (n, vocab)`` stands in for a model.

Claims proven:
  1. Beam width 1 is exactly greedy decoding (same tokens, same score), on random models.
  2. On a tiny vocabulary, the best beam equals exhaustive search's best sequence (with and
     without the length penalty).
  3. On a crafted model greedy is not optimal and beam search (width 2) finds the better one.
  4. The length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016) changes the winner from
     a short sequence (alpha = 0) to a longer one (alpha = 1), with the score worked by hand.
  5. Diverse beam search (Vijayakumar et al. 2016: groups + a Hamming diversity penalty) returns
     more distinct openings than plain beam search of the same total width.

When to use what:
  | goal                                   | use                                              |
  |----------------------------------------|--------------------------------------------------|
  | one short, faithful answer; fast       | greedy (or beam width 1)                         |
  | translation, summary, ASR: high score  | beam search, width 4-10, length penalty ~0.6-1.0 |
  | open-ended text, chat, stories         | sampling: temperature + top-p, rep. penalty      |
  | several different candidates to rerank | diverse beam search, or several samples          |

Run:  python advanced/evaluation_inference/02_beam_search.py        (about 2 s on a laptop CPU)
"""

from __future__ import annotations

import itertools
import math

import torch

from torchnotes import check, make_parser, start

FULL = dict(n_models=30, vocab=5, max_len=4, div_vocab=12, div_len=8, width=6, groups=6)
SMOKE = dict(n_models=6, vocab=4, max_len=3, div_vocab=10, div_len=6, width=6, groups=6)
BOS, EOS = 0, 1


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """Wu et al. 2016 (GNMT), eq. 14: lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha."""
    return ((5 + length) / 6) ** alpha


def greedy_decode(step_fn, bos_id: int, eos_id: int, max_len: int) -> list[int]:
    """[bos, t1, t2, ...]: the argmax token at each step, until eos or max_len new tokens."""
    seq = [bos_id]
    for _ in range(max_len):
        nxt = int(step_fn(torch.tensor([seq]))[0].argmax())
        seq.append(nxt)
        if nxt == eos_id:
            break
    return seq


def beam_search(step_fn, bos_id: int, eos_id: int, beam_width: int, max_len: int,
                length_penalty: float = 1.0) -> list[tuple[list[int], float]]:
    """Hypotheses ``(tokens, score)`` best first; score = log P(Y) / lp(Y), lp from Wu 2016."""
    alpha = length_penalty
    alive, finished = [([bos_id], 0.0)], []              # (tokens, summed log-prob)
    for _ in range(max_len):
        logp = step_fn(torch.tensor([seq for seq, _ in alive]))          # (n, V)
        total = torch.tensor([s for _, s in alive])[:, None] + logp      # (n, V)
        top = total.flatten().topk(min(beam_width, total.numel()))       # best over all n*V
        alive_next = []
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if score == float("-inf"):
                continue
            beam, tok = divmod(flat, logp.shape[1])
            hyp = (alive[beam][0] + [tok], score)
            (finished if tok == eos_id else alive_next).append(hyp)      # eos: hypothesis done
        alive = alive_next
        if not alive:
            break
    finished += alive                                     # max_len reached without eos
    scored = [(seq, s / gnmt_length_penalty(len(seq) - 1, alpha)) for seq, s in finished]
    return sorted(scored, key=lambda h: h[1], reverse=True)


def diverse_beam_search(step_fn, bos_id, eos_id, beam_width, num_groups, diversity, max_len):
    """Vijayakumar et al. 2016: ``num_groups`` beams of width beam_width / num_groups decoded in
    lockstep; group g's scores at step t lose ``diversity`` x (times each token was already
    chosen at step t by groups 0..g-1) (Hamming diversity). Returns each group's best hyps."""
    width = beam_width // num_groups
    groups = [[([bos_id], 0.0)] for _ in range(num_groups)]
    done = [[] for _ in range(num_groups)]
    for _ in range(max_len):
        used = None                                       # token counts chosen at this step
        for g, alive in enumerate(groups):
            if not alive:
                continue
            logp = step_fn(torch.tensor([seq for seq, _ in alive]))             # (n, V)
            used = torch.zeros(logp.shape[1]) if used is None else used
            total = torch.tensor([s for _, s in alive])[:, None] + logp
            top = (total - diversity * used).flatten().topk(width)    # penalised choice ...
            nxt = []
            for flat in top.indices.tolist():
                beam, tok = divmod(flat, logp.shape[1])
                used[tok] += 1
                hyp = (alive[beam][0] + [tok], total[beam, tok].item())   # ... true log-prob
                (done[g] if tok == eos_id else nxt).append(hyp)
            groups[g] = nxt
    out = [h for g in range(num_groups) for h in sorted(done[g] + groups[g], key=lambda h: -h[1])
           [:width]]
    return sorted(out, key=lambda h: -h[1])


def table_model(table: torch.Tensor):
    """step_fn from a table of logits indexed by (position, last token): (L, V, V)."""
    def step_fn(prefix: torch.Tensor) -> torch.Tensor:
        pos = min(prefix.shape[1] - 1, table.shape[0] - 1)
        return table[pos, prefix[:, -1]].log_softmax(-1)                      # (n, V)
    return step_fn


def log_prob(step_fn, seq: list[int]) -> float:
    """log P(seq[1:] | seq[0]) = sum of each token's log-prob given the prefix before it."""
    return sum(step_fn(torch.tensor([seq[:i]]))[0, seq[i]].item() for i in range(1, len(seq)))


def exhaustive(step_fn, vocab: int, max_len: int, alpha: float) -> tuple[list[int], float]:
    best = ([], float("-inf"))
    for n in range(1, max_len + 1):
        for body in itertools.product(range(vocab), repeat=n):
            if EOS in body[:-1]:
                continue                                  # nothing follows eos
            seq = [BOS, *body]
            if body[-1] != EOS and n < max_len:
                continue                                  # must end with eos or hit max_len
            score = log_prob(step_fn, seq) / gnmt_length_penalty(n, alpha)
            if score > best[1]:
                best = (seq, score)
    return best


def step_1_width_one_is_greedy(n_models: int, vocab: int, max_len: int) -> int:
    g = torch.Generator().manual_seed(0)
    same = 0
    for _ in range(n_models):
        fn = table_model(3 * torch.randn(max_len + 1, vocab, vocab, generator=g))
        greedy = greedy_decode(fn, BOS, EOS, max_len)
        tokens, score = beam_search(fn, BOS, EOS, 1, max_len, length_penalty=0.0)[0]
        same += tokens == greedy and abs(score - log_prob(fn, greedy)) < 1e-5   # lp = 1
    return check(f"beam width 1 == greedy on {n_models} random models (tokens, and score == "
                 f"greedy's log-probability)", same == n_models,
                 detail=f"{same}/{n_models} equal")


def step_2_matches_exhaustive(n_models: int, vocab: int, max_len: int) -> int:
    g = torch.Generator().manual_seed(1)
    agree = narrow = 0
    for i in range(n_models):
        alpha = (0.0, 1.0)[i % 2]
        fn = table_model(2 * torch.randn(max_len + 1, vocab, vocab, generator=g))
        best, best_score = exhaustive(fn, vocab, max_len, alpha)
        wide = beam_search(fn, BOS, EOS, vocab ** max_len, max_len, alpha)[0]  # nothing pruned
        agree += wide[0] == best and abs(wide[1] - best_score) < 1e-5
        narrow += beam_search(fn, BOS, EOS, 2, max_len, alpha)[0][0] == best
    print(f"width 2 (pruned) also finds the exhaustive best on {narrow}/{n_models} models")
    return check(f"best beam == exhaustive best (tokens and score; V={vocab}, "
                 f"max_len={max_len}, alpha 0 and 1)", agree == n_models,
                 detail=f"{agree}/{n_models}")


def crafted(probs: dict):
    """step_fn from {prefix tuple: {token: prob}}; unlisted prefixes end with eos."""
    def step_fn(prefix):
        rows = []
        for seq in prefix.tolist():
            p = torch.full((6,), 1e-9)
            for tok, q in probs.get(tuple(seq), {EOS: 1.0}).items():
                p[tok] = q
            rows.append(p.log())
        return torch.stack(rows)
    return step_fn


def step_3_beam_beats_greedy() -> dict:
    A, B, C, D = 2, 3, 4, 5
    fn = crafted({(BOS,): {A: 0.55, B: 0.45}, (BOS, A): {C: 0.4, D: 0.3, EOS: 0.3},
                  (BOS, B): {EOS: 0.9, C: 0.1}})
    greedy = greedy_decode(fn, BOS, EOS, 5)
    beam, score = beam_search(fn, BOS, EOS, 2, 5, length_penalty=0.0)[0]
    print(f"greedy {greedy}: P = 0.55 * 0.4 = 0.22; beam {beam}: P = {math.exp(score):.3f}")
    check("greedy takes the locally best A and ends with P = 0.22", greedy == [BOS, A, C, EOS])
    check("beam search (width 2) finds [BOS, B, EOS] with P = 0.45 * 0.9 = 0.405",
          beam == [BOS, B, EOS] and abs(score - torch.tensor(0.405).log().item()) < 1e-5)
    return {"greedy": greedy, "beam": beam}


def step_4_length_penalty_changes_winner() -> dict:
    A, B, C = 2, 3, 4
    fn = crafted({(BOS,): {EOS: 0.4, A: 0.6}, (BOS, A): {B: 0.8, EOS: 0.2},
                  (BOS, A, B): {C: 0.8, EOS: 0.2}, (BOS, A, B, C): {EOS: 0.8, A: 0.2}})
    check("lp(Y) = ((5 + |Y|) / 6) ** alpha: lp(1) = 1, lp(7) = 2 at alpha = 1, 1 at alpha = 0",
          [gnmt_length_penalty(n, a) for n, a in ((1, 1.0), (7, 1.0), (7, 0.0))] == [1, 2, 1])
    short = beam_search(fn, BOS, EOS, 3, 6, length_penalty=0.0)[0]
    long_ = beam_search(fn, BOS, EOS, 3, 6, length_penalty=1.0)[0]
    print(f"alpha = 0: {short[0]} score {short[1]:.3f} | alpha = 1: {long_[0]} "
          f"score {long_[1]:.3f}")
    check("alpha = 0: the short [BOS, EOS] wins with log 0.4",
          short[0] == [BOS, EOS] and abs(short[1] - torch.tensor(0.4).log().item()) < 1e-5)
    # By hand: log(0.6 * 0.8 * 0.8 * 0.8) / ((5 + 4) / 6) = log(0.3072) / 1.5 = -0.787 > log 0.4.
    by_hand = torch.tensor(0.6 * 0.8**3).log().item() / 1.5
    return check("alpha = 1: the 4-token [BOS, A, B, C, EOS] wins with log(0.3072) / 1.5",
                 long_[0] == [BOS, A, B, C, EOS] and abs(long_[1] - by_hand) < 1e-5,
                 detail=f"{long_[1]:.4f} vs {by_hand:.4f}")


def openings(hyps, m: int = 2) -> int:
    """How many different first-m-token openings the hypotheses have."""
    return len({tuple(seq[1:1 + m]) for seq, _ in hyps})


def distinct_bigrams(hyps) -> int:
    """distinct-2 (Li et al. 2016): different token pairs across all hypotheses."""
    return len({(s[i], s[i + 1]) for s, _ in hyps for i in range(1, len(s) - 1)})


def step_5_diverse_beam(vocab: int, max_len: int, width: int, groups: int) -> dict:
    g = torch.Generator().manual_seed(5)
    table = 2.5 * torch.randn(max_len + 1, vocab, vocab, generator=g)
    table[:, :, EOS] = -4.0                                   # long sequences, for a fair count
    fn = table_model(table)
    plain = beam_search(fn, BOS, EOS, width, max_len, length_penalty=0.0)[:width]
    diverse = diverse_beam_search(fn, BOS, EOS, width, groups, 3.0, max_len)
    for name, hyps in (("plain  ", plain), ("diverse", diverse)):
        print(f"{name} beam, {len(hyps)} hyps: {[seq[1:] for seq, _ in hyps]}")
    p, d = openings(plain), openings(diverse)
    check(f"diverse beam search ({groups} groups x {width // groups}, lambda 3) returns more "
          f"distinct 2-token openings than plain beam search of width {width}", d > p,
          detail=f"{p} -> {d} of {width}")
    b_p, b_d = distinct_bigrams(plain), distinct_bigrams(diverse)
    check("... and more distinct bigrams (distinct-2)", b_d > b_p, detail=f"{b_p} -> {b_d}")
    return {"distinct_plain": p, "distinct_diverse": d, "bigrams": (b_p, b_d)}


def main(argv=None) -> dict:
    parser = make_parser(__file__, __doc__)
    args, device = start(parser, argv)
    print("(decoding runs on the CPU: a step_fn here is a table lookup, not a network)")
    c = SMOKE if args.smoke else FULL
    results = {"greedy_equal": step_1_width_one_is_greedy(c["n_models"], c["vocab"],
                                                           c["max_len"]),
               "exhaustive_equal": step_2_matches_exhaustive(c["n_models"], c["vocab"],
                                                             c["max_len"]),
               "crafted": step_3_beam_beats_greedy(),
               "length_penalty": step_4_length_penalty_changes_winner()}
    results.update(step_5_diverse_beam(c["div_vocab"], c["div_len"], c["width"], c["groups"]))
    print(f"summary: distinct openings, plain {results['distinct_plain']} vs diverse "
          f"{results['distinct_diverse']}")
    return results


if __name__ == "__main__":
    main()
