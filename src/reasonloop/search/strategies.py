"""Pure choosers — best-of-N, (weighted) majority vote — and the strategies that sample whole solutions
in parallel: best_of_n, weighted_best_of_n, majority, refine and adaptive. Step-level tree search (beam,
dvts, mcts) is in `search.tree`.

Choosers are pure functions of candidate lists, so self-training, distillation and evaluation share them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from reasonloop.data.records import Example, RolloutBatch
from reasonloop.rewards.process import step_spans
from reasonloop.search.base import SearchContext, SearchResult, prm_solution_scores, register_strategy


def best_of_n(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the first. Best-of-N / rejection sampling at test time."""
    if not scores:
        raise ValueError("best_of_n needs at least one candidate")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def majority_vote(answers: Sequence[Hashable | None], weights: Sequence[float] | None = None) -> tuple[int | None, float]:
    """(index of the first candidate carrying the winning answer, the winner's vote share).

    Self-consistency (Wang et al. 2023): candidates vote with their extracted answer (None never
    votes); with `weights` it is weighted voting (weighted best-of-N: scores summed per distinct answer).
    Ties go to the answer seen first. Returns (None, 0.0) when nobody voted.
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
    total = sum(votes.values())
    return index, top / total if total > 0 else 0.0


def mean_logprobs(batch: RolloutBatch) -> list[float]:
    """Each row's mean sampled-token log-prob (the policy's own confidence, length-normalised)."""
    n = batch.completion_mask.sum(-1).clamp(min=1)
    return (batch.logprobs.sum(-1) / n).tolist()


def outcome_scores(ctx: SearchContext, example: Example, completions: list[str],
                   logprobs: list[float] | None = None) -> list[float]:
    """The configured outcome scorer's score of each finished completion (higher is better)."""
    if ctx.cfg.scorer == "likelihood":
        if logprobs is None:
            raise ValueError("scorer=likelihood needs the samples' log-probs")
        return list(logprobs)
    if ctx.outcome is None:
        raise ValueError(f"search.scorer={ctx.cfg.scorer} has no scorer loaded (a verifier, or orm=/prm= directory)")
    return list(ctx.outcome(example, completions))


def _sample(ctx: SearchContext, examples: list[Example], n: int) -> list[tuple[list[str], list[float]]]:
    """n whole solutions per example in one engine call: (completions, mean log-probs) per example."""
    batch = ctx.engine.generate([ctx.render(ex.prompt) for ex in examples], n, ctx.sampling, ctx.generator)
    lps = mean_logprobs(batch)
    return [(batch.completions[i * n:(i + 1) * n], lps[i * n:(i + 1) * n]) for i in range(len(examples))]


def _vote(ctx: SearchContext, ex: Example, cands: list[str], weights: list[float] | None = None) -> SearchResult:
    keys = [ctx.answer_key(c) for c in cands]
    chosen, share = majority_vote(keys, weights)
    w = weights or [1.0] * len(cands)
    totals: Counter = Counter()
    for k, wi in zip(keys, w):
        if k is not None:
            totals[k] += wi
    mass = sum(totals.values()) or 1.0
    return SearchResult(ex, cands, [totals[k] / mass if k is not None else 0.0 for k in keys], chosen, share)


@register_strategy("majority")
def majority(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    """Self-consistency: the most common extracted answer of N samples."""
    return [_vote(ctx, ex, cands) for ex, (cands, _) in zip(examples, _sample(ctx, examples, ctx.cfg.n))]


@register_strategy("best_of_n")
def best_of_n_strategy(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    """The highest-scoring of N samples under `cfg.scorer`."""
    out = []
    for ex, (cands, lps) in zip(examples, _sample(ctx, examples, ctx.cfg.n)):
        scores = outcome_scores(ctx, ex, cands, lps)
        chosen = best_of_n(scores)
        out.append(SearchResult(ex, cands, scores, chosen, scores[chosen]))
    return out


@register_strategy("weighted_best_of_n")
def weighted_best_of_n(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    """Scores summed per distinct answer; the answer with the largest sum wins (likelihood scores are
    turned into probabilities, exp(mean log-prob), so they can be summed)."""
    out = []
    for ex, (cands, lps) in zip(examples, _sample(ctx, examples, ctx.cfg.n)):
        scores = outcome_scores(ctx, ex, cands, lps)
        if ctx.cfg.scorer == "likelihood":
            scores = [math.exp(s) for s in scores]
        out.append(_vote(ctx, ex, cands, [max(0.0, s) for s in scores]))
    return out


@register_strategy("adaptive")
def adaptive(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    """Compute-optimal allocation in its simplest measurable form (Snell et al. 2024): sample every open
    problem `chunk` at a time and close it once `agree` samples share an answer or N were drawn; the vote
    decides. Easy problems (the model agrees with itself at once) stop after `agree` samples and leave the
    budget to the hard ones; the per-problem sample count is the difficulty estimate."""
    cfg = ctx.cfg
    cands: list[list[str]] = [[] for _ in examples]
    open_ = list(range(len(examples)))
    while open_:
        take = [min(cfg.chunk, cfg.n - len(cands[i])) for i in open_]
        for size in sorted(set(take)):
            idx = [i for i, t in zip(open_, take) if t == size]
            for i, (c, _) in zip(idx, _sample(ctx, [examples[i] for i in idx], size)):
                cands[i] += c
        still = []
        for i in open_:
            counts = Counter(k for k in map(ctx.answer_key, cands[i]) if k is not None)
            if len(cands[i]) < cfg.n and (not counts or max(counts.values()) < cfg.agree):
                still.append(i)
        open_ = still
    return [_vote(ctx, ex, c) for ex, c in zip(examples, cands)]


@register_strategy("refine")
def refine(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    """Generate -> feedback -> revise, `rounds` times, on N/(rounds+1) chains per problem.

    Feedback: `verifier` (the task's exact check: an oracle), `prm` (each step's score; the first step
    under 0.5 is where the draft went wrong) or `self` (the model re-solves the problem once; a different
    answer marks the draft wrong). A draft marked wrong is revised by regenerating it from the start of
    its first wrong step (prm) or from scratch (verifier, self: they do not say where). The embedded
    model has never seen a critique in text, so revision here is localized regeneration, not a rewrite
    prompt. The pick is the last draft of the chain the final feedback likes best (ties: majority)."""
    cfg = ctx.cfg
    chains = max(1, cfg.n // (cfg.rounds + 1))
    drafts = [[c for c in cands] for cands, _ in _sample(ctx, examples, chains)]
    verdicts = [_feedback(ctx, ex, d) for ex, d in zip(examples, drafts)]
    for _ in range(cfg.rounds):
        todo = [(i, j) for i, v in enumerate(verdicts) for j, (ok, _) in enumerate(v) if not ok]
        if not todo:
            break
        prefixes = [drafts[i][j][: verdicts[i][j][1]] for i, j in todo]
        prompts = [ctx.render(examples[i].prompt) + p for (i, _), p in zip(todo, prefixes)]
        batch = ctx.engine.generate(prompts, 1, ctx.sampling, ctx.generator)
        for (i, j), p, c in zip(todo, prefixes, batch.completions):
            drafts[i][j] = p + c
        for i in {i for i, _ in todo}:
            verdicts[i] = _feedback(ctx, examples[i], drafts[i])
    out = []
    for ex, d, v in zip(examples, drafts, verdicts):
        good = [c if ok else None for c, (ok, _) in zip(d, v)]
        pool = [c for c in good if c is not None] or d
        r = _vote(ctx, ex, pool)
        scores = [float(ok) for ok, _ in v]
        out.append(SearchResult(ex, d, scores, None if r.chosen is None else d.index(pool[r.chosen]), r.confidence))
    return out


def _feedback(ctx: SearchContext, ex: Example, drafts: list[str]) -> list[tuple[bool, int]]:
    """(looks right, the character where revision restarts) per draft."""
    how = ctx.cfg.feedback
    if how == "verifier":
        if ctx.verifier is None:
            raise ValueError("refine feedback=verifier needs the task's verifier")
        return [(ctx.verifier(d, ex), 0) for d in drafts]
    if how == "prm":
        if ctx.prm is None:
            raise ValueError("refine feedback=prm needs search.prm=<dir>")
        out = []
        for d in drafts:
            steps = step_spans(d, ctx.cfg.step_delimiters)
            scores = ctx.prm.score_steps(ex.prompt, [s.text for s in steps]) if steps else []
            bad = next((s for s, sc in zip(steps, scores) if sc < 0.5), None)
            out.append((bad is None and bool(steps), bad.start if bad is not None else 0))
        return out
    # self: a fresh solve of the same problem; disagreement marks the draft wrong
    (again, _), = _sample(ctx, [ex], len(drafts))
    return [(ctx.answer_key(d) is not None and ctx.answer_key(d) == ctx.answer_key(a), 0) for d, a in zip(drafts, again)]


def prm_outcome_scorer(prm, how: str, delimiters: Sequence[str]):
    """An outcome `Scorer` from a PRM: its step scores aggregated by `how` (last, min, prod, mean)."""
    return lambda ex, comps: prm_solution_scores(prm, how, delimiters, [ex.prompt] * len(comps), comps)
