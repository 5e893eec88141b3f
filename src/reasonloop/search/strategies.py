"""Test-time search strategies: best-of-N, majority vote, and a step-level beam.

The choosers (`best_of_n`, `majority_vote`) are pure functions of candidate lists, so self-training
(expert iteration), distillation (the teacher) and evaluation share them. `search` and `step_beam`
drive a `RolloutEngine`; they never touch model weights.

Conventions: candidates are the completions of ONE prompt; a scorer maps
`(example, completions) -> list[float]` (higher is better) — the task verifier, a trained verifier,
or the policy's own log-probability.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from reasonloop.data.records import Example
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig

Scorer = Callable[[Example, list[str]], list[float]]
STRATEGIES = ("best_of_n", "majority_vote", "beam")


def best_of_n(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the first. Best-of-N / rejection sampling at test time."""
    if not scores:
        raise ValueError("best_of_n needs at least one candidate")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def majority_vote(answers: Sequence[Hashable | None], weights: Sequence[float] | None = None) -> tuple[int | None, float]:
    """(index of the first candidate carrying the winning answer, the winner's vote share).

    Self-consistency (Wang et al. 2023): candidates vote with their extracted answer (None never
    votes); with `weights` it is weighted voting. Ties go to the answer seen first. Returns
    (None, 0.0) when nobody voted.
    """
    w = [1.0] * len(answers) if weights is None else list(weights)
    if len(w) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(w)} weights")
    votes: Counter = Counter()
    for a, wi in zip(answers, w):
        if a is not None:
            votes[a] += wi
    if not votes:
        return None, 0.0
    top = max(votes.values())
    index = next(i for i, a in enumerate(answers) if a is not None and votes[a] == top)
    return index, top / sum(votes.values())


@dataclass
class SearchResult:
    """The expert's pick for one prompt, with every candidate it looked at."""

    example: Example
    candidates: list[str]  # [n] completions
    scores: list[float]  # [n] scorer values (vote share for majority_vote)
    chosen: int | None  # index into candidates; None when the strategy abstains (no votes)
    confidence: float = 0.0  # winning vote share (majority) or chosen score

    @property
    def completion(self) -> str | None:
        return None if self.chosen is None else self.candidates[self.chosen]


@dataclass
class SearchConfig:
    strategy: str = "majority_vote"
    """best_of_n (highest scorer value), majority_vote (most common extracted answer) or beam (step-level beam)."""
    n: int = 8
    """Candidates per prompt (best_of_n, majority_vote) or expansions per beam (beam)."""
    beam_width: int = 2
    """Beams kept after each step (beam only)."""
    step_stop: list[str] = field(default_factory=lambda: [";", "</think>"])
    """Strings that end one reasoning step (beam only)."""
    max_steps: int = 6
    """Step expansions before the beam is finished greedily to the end (beam only)."""


def search(
    engine: RolloutEngine,
    examples: list[Example],
    render: Callable[[str], str],
    sampling: SamplingConfig,
    cfg: SearchConfig,
    answer_key: Callable[[str], Hashable | None],
    scorer: Scorer | None = None,
    generator: torch.Generator | None = None,
) -> list[SearchResult]:
    """Run the named strategy on every example. best_of_n needs a `scorer`; beam uses it when given,
    else the candidates' own summed log-probability."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown search strategy {cfg.strategy!r}; known: {STRATEGIES}")
    if cfg.strategy == "beam":
        return [step_beam(engine, ex, render, sampling, cfg, scorer, generator) for ex in examples]
    if cfg.strategy == "best_of_n" and scorer is None:
        raise ValueError("best_of_n needs a scorer (the task verifier or a trained verifier)")
    batch = engine.generate([render(ex.prompt) for ex in examples], cfg.n, sampling, generator)
    out = []
    for i, ex in enumerate(examples):
        cands = batch.completions[i * cfg.n : (i + 1) * cfg.n]
        if cfg.strategy == "best_of_n":
            scores = list(scorer(ex, cands))
            chosen = best_of_n(scores)
            out.append(SearchResult(ex, cands, scores, chosen, scores[chosen]))
        else:
            keys = [answer_key(c) for c in cands]
            chosen, share = majority_vote(keys)
            counts = Counter(k for k in keys if k is not None)
            scores = [counts[k] / max(1, sum(counts.values())) if k is not None else 0.0 for k in keys]
            out.append(SearchResult(ex, cands, scores, chosen, share))
    return out


def step_beam(
    engine: RolloutEngine,
    example: Example,
    render: Callable[[str], str],
    sampling: SamplingConfig,
    cfg: SearchConfig,
    scorer: Scorer | None = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """A simple step-level beam: each live beam (a partial completion) is extended by `n` sampled
    steps (up to a `step_stop` string); partial beams are ranked by summed log-prob of their
    sampled tokens (or by `scorer` on the partial text when given) and the best `beam_width` kept.
    After `max_steps`, live beams are finished without the step stops. Candidates are the finished
    beams; the chosen one scores highest.

    The engine conditions on `render(prompt) + partial`, so any `RolloutEngine` works; log-probs are
    the sampler's, so with a temperature they are of the tempered distribution.
    """
    prefix = render(example.prompt)
    live: list[tuple[str, float]] = [("", 0.0)]
    done: list[tuple[str, float]] = []
    step_sampling = SamplingConfig(**{**sampling.__dict__, "stop": list(cfg.step_stop)})
    for _ in range(cfg.max_steps):
        if not live:
            break
        batch = engine.generate([prefix + text for text, _ in live], cfg.n, step_sampling, generator)
        grown: list[tuple[str, float, bool]] = []
        for row in range(batch.num_rows):
            parent_text, parent_lp = live[row // cfg.n]
            text = parent_text + batch.completions[row]
            lp = parent_lp + float(batch.logprobs[row].sum())
            ended = batch.finish_reasons[row] == "stop" and not any(text.endswith(s) for s in cfg.step_stop)
            finished = ended or "</answer>" in text  # EOS, or the answer is written
            grown.append((text, lp, finished))
        grown = list({t: (t, lp, f) for t, lp, f in grown}.values())  # identical partials: keep one
        ranked = _rank(example, grown, scorer)
        live = []
        for text, lp, finished in ranked[: cfg.beam_width]:
            (done if finished else live).append((text, lp))
    if live:  # finish what is left in one go
        batch = engine.generate([prefix + text for text, _ in live], 1, sampling, generator)
        done += [(t + c, lp + float(batch.logprobs[i].sum())) for i, ((t, lp), c) in enumerate(zip(live, batch.completions))]
    cands = [t for t, _ in done]
    scores = list(scorer(example, cands)) if scorer is not None else [lp for _, lp in done]
    chosen = best_of_n(scores)
    return SearchResult(example, cands, scores, chosen, scores[chosen])


def _rank(example: Example, grown: list[tuple[str, float, bool]], scorer: Scorer | None):
    keys = list(scorer(example, [t for t, _, _ in grown])) if scorer is not None else [lp for _, lp, _ in grown]
    order = sorted(range(len(grown)), key=lambda i: -keys[i])
    return [grown[i] for i in order]
