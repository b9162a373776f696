"""Unit tests for advanced/evaluation_inference: sampling filters and beam search pinned by hand,
and proof that each claim family can fail (a wrong piece patched into the note raises
ClaimError)."""

from __future__ import annotations

import pytest
import torch

from torchnotes import ClaimError

CPU = torch.device("cpu")
SAMPLING = "advanced/evaluation_inference/01_sampling_strategies.py"
BEAM = "advanced/evaluation_inference/02_beam_search.py"
INF = float("-inf")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- 01 sampling

def test_top_k_ties_keep_at_least_k(note):
    mod = note(SAMPLING)
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0]])
    out = mod.top_k_filter(logits, 1)
    assert torch.isfinite(out).sum(1).tolist() == [2, 1]              # the tie keeps both
    out = mod.top_k_filter(logits, 3)
    assert torch.equal(out[1], torch.tensor([5.0, 4.0, 3.0, INF]))
    assert torch.isfinite(mod.top_k_filter(torch.randn(8, 30), 5)).sum(1).eq(5).all()


def test_top_p_minimal_set_on_known_distribution(note):
    mod = note(SAMPLING)
    logits = torch.tensor([[0.1, 0.6, 0.3]]).log()
    keep = {p: torch.isfinite(mod.top_p_filter(logits, p))[0].tolist()
            for p in (0.5, 0.8, 0.95, 1e-6)}
    assert keep == {0.5: [False, True, False], 0.8: [False, True, True],
                    0.95: [True, True, True], 1e-6: [False, True, False]}


@pytest.mark.parametrize("p", [0.01, 0.3, 0.7, 0.9, 0.999])
def test_top_p_is_minimal_and_never_empty(note, p):
    mod = note(SAMPLING)
    logits = 2 * torch.randn(16, 40)
    probs = logits.softmax(-1)
    kept = torch.isfinite(mod.top_p_filter(logits, p))
    assert kept.sum(1).ge(1).all()
    mass = (probs * kept).sum(1)
    smallest = probs.masked_fill(~kept, 2.0).min(1).values
    assert (mass >= p - 1e-6).all()                                    # reaches p ...
    assert (mass - smallest < p + 1e-6).all()                          # ... and is minimal
    assert (probs.masked_fill(kept, -1.0).max(1).values <= smallest).all()   # the likeliest kept


def test_repetition_penalty_sign_rule(note):
    mod = note(SAMPLING)
    logits = torch.tensor([[3.0, -2.0, 1.0, -0.5], [1.0, 1.0, 1.0, 1.0]])
    prev = torch.tensor([[0, 1], [3, 3]])
    out = mod.apply_repetition_penalty(logits, prev, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.5, -4.0, 1.0, -0.5],
                                                  [1.0, 1.0, 1.0, 0.5]]))
    assert torch.equal(logits[0, 0], torch.tensor(3.0))               # input untouched


def test_sample_next_top_k_one_is_argmax(note):
    mod = note(SAMPLING)
    logits = torch.randn(32, 10)
    assert torch.equal(mod.sample_next(logits, top_k=1), logits.argmax(-1))


def test_sampling_wrong_top_p_is_caught(note, monkeypatch):
    mod = note(SAMPLING)

    def drops_crossing_token(logits, p):                  # keeps only mass strictly below p
        s, order = logits.sort(-1, descending=True)
        drop = s.softmax(-1).cumsum(-1) >= p
        drop[..., 0] = False
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))

    monkeypatch.setattr(mod, "top_p_filter", drops_crossing_token)
    with pytest.raises(ClaimError, match="smallest set"):
        mod.step_2_filters_by_hand(CPU)


def test_sampling_wrong_top_k_is_caught(note, monkeypatch):
    mod = note(SAMPLING)
    right = mod.top_k_filter
    monkeypatch.setattr(mod, "top_k_filter", lambda logits, k: right(logits, k + 1))
    with pytest.raises(ClaimError, match="greedy"):
        mod.step_1_greedy_limits(CPU, 20, 64)


def test_sampling_wrong_penalty_sign_is_caught(note, monkeypatch):
    mod = note(SAMPLING)

    def always_divide(logits, prev, penalty):           # makes negative logits *more* likely
        return logits.scatter(-1, prev, logits.gather(-1, prev) / penalty)

    monkeypatch.setattr(mod, "apply_repetition_penalty", always_divide)
    with pytest.raises(ClaimError, match="penalty: seen positive"):
        mod.step_3_repetition_penalty(CPU, 12)


def test_sampling_biased_sampler_is_caught(note, monkeypatch):
    mod = note(SAMPLING)
    right = mod.sample_next
    monkeypatch.setattr(mod, "sample_next",              # temperature forgotten
                        lambda logits, temperature=1.0, top_k=None, top_p=None, generator=None:
                        right(logits, 1.0, top_k, top_p, generator))
    with pytest.raises(ClaimError, match="filtered distribution|filtered-out"):
        mod.step_4_empirical_distribution(CPU, 20_000)


# -------------------------------------------------------------------------- 02 beam search

def _random_model(mod, seed, vocab=4, max_len=3):
    g = torch.Generator().manual_seed(seed)
    return mod.table_model(2 * torch.randn(max_len + 1, vocab, vocab, generator=g))


@pytest.mark.parametrize("seed", range(5))
def test_beam_width_one_is_greedy(note, seed):
    mod = note(BEAM)
    fn = _random_model(mod, seed)
    greedy = mod.greedy_decode(fn, mod.BOS, mod.EOS, 3)
    (tokens, score), *_ = mod.beam_search(fn, mod.BOS, mod.EOS, 1, 3, length_penalty=0.0)
    assert tokens == greedy
    logp = sum(fn(torch.tensor([greedy[:i]]))[0, greedy[i]].item() for i in range(1, len(greedy)))
    assert abs(score - logp) < 1e-5 and abs(mod.log_prob(fn, greedy) - logp) < 1e-6


def test_beam_with_greedys_tokens_but_a_wrong_score_is_caught(note, monkeypatch):
    mod = note(BEAM)
    right = mod.beam_search

    def halved_score(*args, **kwargs):           # right tokens, not their log-probability
        return [(tokens, score / 2) for tokens, score in right(*args, **kwargs)]

    monkeypatch.setattr(mod, "beam_search", halved_score)
    with pytest.raises(ClaimError, match="greedy"):
        mod.step_1_width_one_is_greedy(6, 6, 6)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_equals_exhaustive_on_tiny_vocab(note, alpha):
    mod = note(BEAM)
    for seed in range(4):
        fn = _random_model(mod, 10 + seed)
        best, score = mod.exhaustive(fn, 4, 3, alpha)
        got = mod.beam_search(fn, mod.BOS, mod.EOS, 4**3, 3, length_penalty=alpha)
        assert got[0][0] == best and abs(got[0][1] - score) < 1e-5
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)   # best first


def test_length_penalty_formula(note):
    lp = note(BEAM).gnmt_length_penalty
    assert lp(1, 0.6) == 1.0
    assert lp(7, 1.0) == 2.0
    assert abs(lp(10, 0.6) - (15 / 6) ** 0.6) < 1e-12


def test_beam_that_never_looks_ahead_is_caught(note, monkeypatch):
    mod = note(BEAM)

    def greedy_in_disguise(step_fn, bos_id, eos_id, beam_width, max_len, length_penalty=1.0):
        out = mod.greedy_decode(step_fn, bos_id, eos_id, max_len)     # keeps one prefix only
        return [(out, 0.0)]

    monkeypatch.setattr(mod, "beam_search", greedy_in_disguise)
    with pytest.raises(ClaimError, match="exhaustive"):
        mod.step_2_matches_exhaustive(6, 4, 3)
    with pytest.raises(ClaimError, match="beam search"):
        mod.step_3_beam_beats_greedy()


def test_beam_wrong_length_penalty_is_caught(note, monkeypatch):
    mod = note(BEAM)
    monkeypatch.setattr(mod, "gnmt_length_penalty", lambda n, a: ((5 + n + 1) / 6) ** a)
    with pytest.raises(ClaimError, match="lp"):
        mod.step_4_length_penalty_changes_winner()


def test_diverse_beam_without_penalty_is_caught(note, monkeypatch):
    mod = note(BEAM)
    right = mod.diverse_beam_search
    monkeypatch.setattr(mod, "diverse_beam_search",
                        lambda fn, b, e, w, g, diversity, L: right(fn, b, e, w, g, 0.0, L))
    with pytest.raises(ClaimError, match="distinct"):
        mod.step_5_diverse_beam(10, 6, 6, 6)
