"""Step-level tree search guided by a process reward model: beam (and, to come, dvts and mcts).

Beam search (search-and-learn's semantics): N beams; each step, every kept beam is extended by M sampled
steps (one step = text up to a step delimiter), all partial solutions are scored by the PRM (aggregated
as `cfg.aggregate`; without a PRM, by their summed log-probability) and the best N/M are kept.
Finished solutions (EOS, or the answer written) leave the beam; after `max_steps` the live beams are
finished in one go. The pick is the best finished solution under the outcome scorer.
"""

from __future__ import annotations

from reasonloop.data.records import Example
from reasonloop.search.base import SearchContext, SearchResult, prm_solution_scores, register_strategy
from reasonloop.search.strategies import best_of_n, outcome_scores


def _finished(text: str, reason: str, delimiters) -> bool:
    return (reason == "stop" and not any(text.endswith(s) for s in delimiters)) or "</answer>" in text


@register_strategy("beam")
def beam(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    return [_beam_one(ctx, ex) for ex in examples]


def _beam_one(ctx: SearchContext, ex: Example) -> SearchResult:
    cfg = ctx.cfg
    keep = max(1, cfg.n // cfg.beam_width)
    prefix = ctx.render(ex.prompt)
    live: list[tuple[str, float]] = [("", 0.0)]
    done: list[tuple[str, float]] = []
    step_sampling = ctx.step_sampling()
    for depth in range(cfg.max_steps):
        if not live:
            break
        width = cfg.n if depth == 0 else cfg.beam_width
        batch = ctx.engine.generate([prefix + t for t, _ in live], width, step_sampling, ctx.generator)
        grown = {}
        for row in range(batch.num_rows):
            parent, lp = live[row // width]
            text = parent + batch.completions[row]
            grown.setdefault(text, (lp + float(batch.logprobs[row].sum()),
                                    _finished(text, batch.finish_reasons[row], cfg.step_delimiters)))
        texts = list(grown)
        if ctx.prm is not None:
            keys = prm_solution_scores(ctx.prm, cfg.aggregate, cfg.step_delimiters, [ex.prompt] * len(texts), texts)
        else:
            keys = [grown[t][0] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -keys[i])[:keep]
        live = []
        for i in order:
            t = texts[i]
            (done if grown[t][1] else live).append((t, grown[t][0]))
    if live:
        batch = ctx.engine.generate([prefix + t for t, _ in live], 1, ctx.sampling, ctx.generator)
        done += [(t + c, lp + float(batch.logprobs[i].sum())) for i, ((t, lp), c) in enumerate(zip(live, batch.completions))]
    cands = [t for t, _ in done]
    scores = outcome_scores(ctx, ex, cands, [lp for _, lp in done]) if (ctx.outcome or ctx.cfg.scorer == "likelihood") \
        else [lp for _, lp in done]
    chosen = best_of_n(scores)
    return SearchResult(ex, cands, scores, chosen, scores[chosen])
