"""Search strategies: pure choosers on hand tables, and the engine-driven search on a scripted engine."""

import pytest
import torch

from reasonloop.data.records import Example, RolloutBatch
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.search import SearchConfig, best_of_n, majority_vote, search


def test_best_of_n_picks_max_first_on_ties():
    assert best_of_n([0.1, 0.9, 0.3]) == 1
    assert best_of_n([0.5, 0.5, 0.2]) == 0
    with pytest.raises(ValueError):
        best_of_n([])


def test_majority_vote():
    assert majority_vote([3, 5, 3, None, 5, 3]) == (0, 3 / 5)
    assert majority_vote([None, 7, 8, 8, 7]) == (1, 0.5)  # tie: the answer seen first
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote([1, 2, 2], weights=[0.9, 0.3, 0.3]) == (0, 0.9 / 1.5)  # weighted voting


class ScriptedEngine:
    """Returns completions from a function of the prompt; log-prob -1 per character."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def generate(self, prompts, n, sampling, generator=None):
        self.calls.append((list(prompts), n, list(sampling.stop)))
        comps, reasons = [], []
        for p in prompts:
            for g in range(n):
                text, reason = self.fn(p, g, sampling)
                comps.append(text)
                reasons.append(reason)
        N = len(comps)
        T = max(1, max(len(c) for c in comps))
        lp = torch.zeros(N, T)
        for i, c in enumerate(comps):
            lp[i, : len(c)] = -1.0
        z = torch.zeros(N, 1, dtype=torch.long)
        return RolloutBatch(z, z, torch.zeros(N, T, dtype=torch.long), (lp != 0).long(), lp, reasons, comps, n)


def answer_of(c):
    return c.split("<answer>")[1].split("<")[0] if "<answer>" in c else None


def test_search_majority_and_best_of_n():
    ex = [Example("Q: 1+1=?\n", "2", {"id": "a"})]
    outs = ["<answer>2</answer>", "<answer>3</answer>", "<answer>3</answer>", "junk"]
    engine = ScriptedEngine(lambda p, g, s: (outs[g], "stop"))
    (r,) = search(engine, ex, lambda p: p, SamplingConfig(), SearchConfig("majority", n=4), answer_of)
    assert r.completion == outs[1] and r.confidence == pytest.approx(2 / 3)
    assert r.scores == pytest.approx([1 / 3, 2 / 3, 2 / 3, 0.0])
    verifier = lambda e, cs: [float(answer_of(c) == e.answer) for c in cs]
    (r,) = search(engine, ex, lambda p: p, SamplingConfig(), SearchConfig("best_of_n", n=4), answer_of, verifier)
    assert r.completion == outs[0]
    with pytest.raises(ValueError):
        search(engine, ex, lambda p: p, SamplingConfig(), SearchConfig("best_of_n", n=4), answer_of)


class StepChecker:
    """A PRM stand-in: a step is right unless it says 1+1=3."""

    tokens_read = 0

    def score_steps(self, prompt, steps):
        return [0.0 if "1+1=3" in s else 1.0 for s in steps]


def test_beam_keeps_the_prm_best_step_and_stops_at_delimiters():
    # step 1: "<think>1+1=3;" (bad) or "<think>1+1=2;" ; step 2 writes the answer of the kept step
    def fn(prompt, g, sampling):
        partial = prompt.split("\n", 1)[1]
        if partial == "":
            return (["<think>1+1=3;", "<think>1+1=2;"][g % 2], "stop")
        return ("</think><answer>" + partial[11] + "</answer>", "stop")

    engine = ScriptedEngine(fn)
    cfg = SearchConfig("beam", n=2, beam_width=2, max_steps=4, scorer="prm")
    (r,) = search(engine, [Example("Q: 1+1=?\n", "2")], lambda p: p, SamplingConfig(), cfg, answer_of, prm=StepChecker())
    assert r.candidates == ["<think>1+1=2;</think><answer>2</answer>"]  # N/M = 1 beam kept: the PRM's choice
    assert engine.calls[0][2] == [";", "</think>"]  # steps stop at the step delimiters
