"""Whole-solution strategies on a scripted engine: adaptive stops when it should, refine revises from the
first wrong step, weighted best-of-N sums scores per answer, likelihood scoring reads the samples."""

import pytest
import torch

from reasonloop.data.records import Example, RolloutBatch
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.search import CountingEngine, SearchConfig, search

EX = Example("Q: 1+1=?\n", "2", {"level": 1})


class Scripted:
    """Completions from `fn(prompt, call_index, g)`; log-prob -1 per character of the completion."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def generate(self, prompts, n, sampling, generator=None):
        self.calls.append((list(prompts), n))
        comps = [self.fn(p, len(self.calls) - 1, g) for p in prompts for g in range(n)]
        T = max(1, max(len(c) for c in comps))
        mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in comps])
        ids = torch.ones(len(prompts), 3, dtype=torch.long)
        return RolloutBatch(ids.repeat_interleave(n, 0), torch.ones_like(ids).repeat_interleave(n, 0),
                            torch.zeros(len(comps), T, dtype=torch.long), mask, -mask.float(), ["stop"] * len(comps),
                            comps, n)


def ans(c):
    return c.split("<answer>")[1].split("<")[0] if "<answer>" in c else None


def sol(v, think="1+1=2;"):
    return f"<think>{think}</think><answer>{v}</answer>"


def run(engine, cfg, **kw):
    return search(engine, [EX], lambda p: p, SamplingConfig(), cfg, ans, **kw)[0]


def test_adaptive_stops_once_enough_samples_agree():
    engine = Scripted(lambda p, call, g: sol(2))  # always the same answer
    r = run(engine, SearchConfig("adaptive", n=16, agree=3, chunk=2))
    assert len(r.candidates) == 4 and [n for _, n in engine.calls] == [2, 2]  # 2 samples, then 2 more: 4 >= 3 agree
    assert ans(r.completion) == "2"
    spread = Scripted(lambda p, call, g: sol(10 * call + g))  # never agrees: spends the whole budget
    r = run(spread, SearchConfig("adaptive", n=7, agree=2, chunk=3))
    assert len(r.candidates) == 7 and [n for _, n in spread.calls] == [3, 3, 1]


def test_refine_with_a_prm_regenerates_from_the_first_bad_step():
    class Checker:
        tokens_read = 0

        def score_steps(self, prompt, steps):
            return [0.0 if "1+1=3" in s else 1.0 for s in steps]

    def fn(prompt, call, g):
        if call == 0:
            return sol(3, "1+1=3;")  # the first draft's first step is wrong
        assert prompt == "Q: 1+1=?\n"  # revision restarts at the wrong step: nothing before it is kept
        return sol(2)

    engine = Scripted(fn)
    r = run(engine, SearchConfig("refine", n=2, rounds=1, feedback="prm"), prm=Checker())
    assert r.completion == sol(2) and r.scores == [1.0]
    assert [n for _, n in engine.calls] == [1, 1]  # N=2 = one chain of a draft and one revision


def test_refine_with_the_verifier_keeps_right_drafts():
    engine = Scripted(lambda p, call, g: sol(2) if call == 0 else sol(5))
    r = run(engine, SearchConfig("refine", n=4, rounds=1, feedback="verifier"), verifier=lambda c, ex: ans(c) == "2")
    assert len(engine.calls) == 1 and r.completion == sol(2)  # every draft right: no revision


def test_weighted_best_of_n_sums_scores_per_answer():
    outs = [sol(5), sol(2), sol(2), sol(7)]
    engine = Scripted(lambda p, call, g: outs[g])
    scores = {sol(5): 0.9, sol(2): 0.5, sol(7): 0.1}
    r = run(engine, SearchConfig("weighted_best_of_n", n=4, scorer="orm"),
            scorer=lambda ex, cs: [scores[c] for c in cs])
    assert ans(r.completion) == "2" and r.confidence == pytest.approx(1.0 / 2.0)  # 0.5+0.5 beats 0.9
    best = run(Scripted(lambda p, call, g: outs[g]), SearchConfig("best_of_n", n=4, scorer="orm"),
               scorer=lambda ex, cs: [scores[c] for c in cs])
    assert ans(best.completion) == "5"


def test_likelihood_scores_are_mean_logprobs_and_compute_is_counted():
    outs = ["<think>1+1=2;;;</think><answer>2</answer>", sol(2)]
    engine = CountingEngine(Scripted(lambda p, call, g: outs[g]))
    r = run(engine, SearchConfig("best_of_n", n=2, scorer="likelihood"))
    assert r.scores == [-1.0, -1.0] and r.chosen == 0  # -1 per character: equal means, the first wins
    assert engine.generated == sum(map(len, outs)) and engine.prefilled == 3  # one prompt prefill for both samples
