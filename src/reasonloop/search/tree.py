"""Step-level tree search: beam, dvts and mcts, guided by a process reward model (PRM).

A *step* is the text a policy writes up to one of `cfg.step_delimiters` (kept in the step; the
embedded task's steps end at `;` or `</think>`). A partial solution is *finished* when its last step
stopped without a delimiter (EOS), wrote `</answer>`, or was cut by the length limit
(`sampling.max_new_tokens`, per step and for the whole solution); finished solutions are the
candidates a strategy returns. All three strategies batch across the examples of one call: the
live nodes of every problem are extended in ONE engine call per step, and every candidate of a step
is scored in ONE PRM call (`score_many`).

**Work reuse.** With an engine that can continue partial solutions from their cached keys/values
(`rollout.prefix_cache.TreeEngine`: it has `roots`/`expand`), a node is extended without re-reading
its text: each prompt is prefilled once per search, every later token is read once. Any other
`RolloutEngine` works too: each extension then re-prefills `prompt + partial` text (counted in
`prefilled` by `CountingEngine`). Both paths draw the same random numbers in the same order, so under
one seed they search the same tree (tests/search/test_tree.py).

**beam** (search-and-learn's semantics, Beeching et al. 2024): N = `n` beams, width M = `beam_width`.
Step 1 samples N first steps from the prompt; every later step extends each of the (at most) N/M kept
beams by M sampled steps, so every step scores N candidates. Candidates that finish leave the beam
and become final candidates (however they score); of the unfinished ones the N/M with the best PRM
score (`aggregate` over their steps; with `lookahead` k, over the candidate followed by k more greedy
steps, which are discarded after scoring) are kept. Identical partial solutions count once. After
`max_steps` steps the kept beams are finished in one go (one sample each, no step stops). Without a
PRM beams are ranked by summed log-probability. Departure from search-and-learn: when fewer than N/M
unfinished candidates survive, the step samples fewer than N (search-and-learn duplicates beams
back up to N).

**dvts** (diverse verifier tree search, search-and-learn): N/M independent subtrees per problem. Step 1
samples N first steps, M per subtree; every later step extends each subtree's single current node by
M samples, and the PRM's best of those M (lookahead as in beam) becomes the subtree's current node —
a greedy-by-PRM beam of width 1 per subtree. Subtrees never share a node (only the prompt); a subtree
ends when its pick is finished. Every finished sample any subtree drew is a candidate.

For beam and dvts the answer is the candidate the outcome scorer (`cfg.scorer`) rates best; without
one loaded, the PRM's aggregated score, else the mean token log-prob.

**mcts** (AlphaZero-style search over steps): `n` simulations per problem, all problems' simulations
run in lock step. A simulation (1) *selects* from the root, at each expanded node the child with the
highest PUCT score Q + c_puct * P * sqrt(N_parent) / (1 + N) — P the policy's probability of the
step, exp(its summed log-prob) normalised over the siblings — or UCT score Q + c_puct *
sqrt(ln N_parent / N) (an unvisited child first), Q = mean backed-up value (0 unvisited), ties to
the first; (2) *evaluates* the leaf it reaches — `value=prm`: the PRM's aggregated score of the
leaf's partial solution; `value=rollout`: one sampled completion from the leaf scored by the outcome
scorer (a finished leaf is its own rollout); a node is evaluated once and its value cached;
(3) *expands* an unfinished leaf into M = `beam_width` sampled children (duplicates merged), at
depth `max_steps` without step stops so its children are finished solutions; (4) *backs up* the
value: N += 1 and W += v on every node of the path (Q = W / N, a mean). Finished nodes are terminal.
The answer: `final=visits` follows the most-visited child from the root (ties: higher Q), `value` the
highest-Q visited child, down to a terminal node (a path ending at an unfinished node is finished
with one sample); `final=vote` is a majority vote over the answers of all terminal nodes in the tree
(each once), falling back to `visits` when none was reached. Candidates are the tree's terminal nodes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from reasonloop.data.records import Example
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.search.base import SearchContext, SearchResult, prm_solution_scores, register_strategy
from reasonloop.search.strategies import best_of_n, majority_vote, outcome_scores


def _finished(text: str, reason: str, delimiters) -> bool:
    return (reason == "stop" and not any(text.endswith(s) for s in delimiters)) or "</answer>" in text


@dataclass(eq=False)
class Node:
    """A partial (or finished) solution of problem `example` in a search tree."""

    example: int  # index into the examples of the search call
    text: str = ""  # the completion so far (the prompt excluded)
    logprob: float = 0.0  # summed log-prob of `text`
    tokens: int = 0  # completion tokens of `text`
    step_logprob: float = 0.0  # log-prob of the last step alone (the mcts prior)
    finished: bool = False
    depth: int = 0  # steps from the root
    handle: object = None  # the engine's node holding the K/V (prefix reuse), None otherwise
    parent: Node | None = None
    subtree: int = 0  # dvts: which subtree the node belongs to
    # mcts statistics
    children: list[Node] = field(default_factory=list)
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    value: float | None = None  # cached evaluation

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.tokens)


class Policy:
    """Extends partial solutions step by step: from cached K/V when the engine has `roots`/`expand`
    (prefix reuse), else by re-prefilling `prompt + text` through `engine.generate`."""

    def __init__(self, ctx: SearchContext, examples: list[Example]):
        self.ctx = ctx
        self.prompts = [ctx.render(ex.prompt) for ex in examples]
        self.reuse = callable(getattr(ctx.engine, "expand", None)) and callable(getattr(ctx.engine, "roots", None))

    def roots(self) -> list[Node]:
        handles = self.ctx.engine.roots(self.prompts) if self.reuse else [None] * len(self.prompts)
        return [Node(i, handle=h) for i, h in enumerate(handles)]

    def expand(self, nodes: list[Node], n: int, sampling: SamplingConfig, final: bool = False,
               again: bool = False) -> list[Node]:
        """n children per node, node-major, in one engine call. `final`: every child counts as finished.

        Memory: the search lets go of the nodes' K/V handles afterwards (their children's handles keep
        what they need alive), unless `again` says the nodes will be extended again (lookahead, rollouts);
        a finished child's K/V is released at once. A pruned node is freed when the strategy drops it."""
        if not nodes:
            return []
        ctx, delims = self.ctx, self.ctx.cfg.step_delimiters
        if self.reuse:
            kids = ctx.engine.expand([nd.handle for nd in nodes], n, sampling, ctx.generator)
            steps = [(k.text, k.logprob, len(k.tokens), k.finish_reason, k) for k in kids]
        else:
            batch = ctx.engine.generate([self.prompts[nd.example] + nd.text for nd in nodes], n, sampling,
                                        ctx.generator)
            lps, lens = batch.logprobs.sum(-1).tolist(), batch.completion_mask.sum(-1).tolist()
            steps = [(batch.completions[r], lps[r], int(lens[r]), batch.finish_reasons[r], None)
                     for r in range(batch.num_rows)]
        out = []
        limit = ctx.sampling.max_new_tokens
        for row, (text, lp, length, reason, handle) in enumerate(steps):
            parent = nodes[row // n]
            full, tokens = parent.text + text, parent.tokens + length
            done = final or reason == "length" or tokens >= limit or _finished(full, reason, delims)
            child = Node(parent.example, full, parent.logprob + lp, tokens, lp, done, parent.depth + 1,
                         None if done else handle, parent, parent.subtree)
            if done and handle is not None:
                handle.release()  # a finished node is never extended: free its K/V now
            out.append(child)
        if not again:
            for nd in nodes:
                nd.handle = None
        return out

    def lookahead(self, nodes: list[Node], steps: int) -> list[str]:
        """Each node's text followed by up to `steps` greedy steps (search-and-learn's lookahead)."""
        texts = [nd.text for nd in nodes]
        current = {i: nd for i, nd in enumerate(nodes) if not nd.finished}
        greedy = SamplingConfig(**{**self.ctx.step_sampling().__dict__, "temperature": 0.0})
        for _ in range(steps):
            if not current:
                break
            idx = list(current)
            for i, ext in zip(idx, self.expand([current[i] for i in idx], 1, greedy, again=True)):
                texts[i] = ext.text
                if ext.finished:
                    del current[i]
                else:
                    current[i] = ext
        return texts


def _distinct(nodes: list[Node]) -> list[Node]:
    """First occurrence of each (problem, text)."""
    seen, out = set(), []
    for nd in nodes:
        if (nd.example, nd.text) not in seen:
            seen.add((nd.example, nd.text))
            out.append(nd)
    return out


def _prm(ctx: SearchContext, examples: list[Example], nodes: list[Node], texts: list[str] | None = None) -> list[float]:
    """The PRM's aggregated score of each node's text (or of `texts`), all in one call."""
    if not nodes:
        return []
    if ctx.prm is None:
        raise ValueError(f"search.strategy={ctx.cfg.strategy} needs a process reward model here (search.prm=<dir>)")
    return prm_solution_scores(ctx.prm, ctx.cfg.aggregate, ctx.cfg.step_delimiters,
                               [examples[nd.example].prompt for nd in nodes], texts or [nd.text for nd in nodes])


def _rank_scores(ctx: SearchContext, policy: Policy, examples: list[Example], kids: list[Node]) -> list[float]:
    """How beam and dvts rank a step's candidates: the PRM (after the lookahead), else summed log-prob."""
    if ctx.prm is None:
        return [k.logprob for k in kids]
    texts = policy.lookahead(kids, ctx.cfg.lookahead) if ctx.cfg.lookahead else None
    return _prm(ctx, examples, kids, texts)


def _results(ctx: SearchContext, examples: list[Example], done: list[list[Node]]) -> list[SearchResult]:
    """The best candidate of each problem under the outcome scorer (else the PRM, else mean log-prob)."""
    use_outcome = ctx.outcome is not None or ctx.cfg.scorer == "likelihood"
    flat = [nd for cands in done for nd in cands]
    prm_scores = iter(_prm(ctx, examples, flat)) if not use_outcome and ctx.prm is not None else None
    out = []
    for ex, cands in zip(examples, done):
        texts = [nd.text for nd in cands]
        if use_outcome:
            scores = outcome_scores(ctx, ex, texts, [nd.mean_logprob for nd in cands])
        elif prm_scores is not None:
            scores = [next(prm_scores) for _ in cands]
        else:
            scores = [nd.mean_logprob for nd in cands]
        chosen = best_of_n(scores)
        out.append(SearchResult(ex, texts, scores, chosen, scores[chosen]))
    return out


# -- beam ----------------------------------------------------------------------------------------------
def beam_step(ctx: SearchContext, policy: Policy, examples: list[Example], live: list[list[Node]],
              first: bool) -> tuple[list[list[Node]], list[list[Node]]]:
    """One beam step for every problem: (kept beams, newly finished candidates) per problem."""
    cfg = ctx.cfg
    keep = max(1, cfg.n // cfg.beam_width)
    kids = _distinct(policy.expand([nd for beams in live for nd in beams], cfg.n if first else cfg.beam_width,
                                   ctx.step_sampling()))
    scores = _rank_scores(ctx, policy, examples, kids)
    kept: list[list[Node]] = [[] for _ in examples]
    finished: list[list[Node]] = [[] for _ in examples]
    ranked = sorted(range(len(kids)), key=lambda i: -scores[i])  # stable: ties keep sampling order
    for i in ranked:
        k = kids[i]
        if k.finished:
            finished[k.example].append(k)
        elif len(kept[k.example]) < keep:
            kept[k.example].append(k)
    return kept, finished


@register_strategy("beam")
def beam(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    policy = Policy(ctx, examples)
    live: list[list[Node]] = [[r] for r in policy.roots()]
    done: list[list[Node]] = [[] for _ in examples]
    for depth in range(ctx.cfg.max_steps):
        if not any(live):
            break
        live, finished = beam_step(ctx, policy, examples, live, first=depth == 0)
        for d, f in zip(done, finished):
            d += f
    for nd in policy.expand([nd for beams in live for nd in beams], 1, ctx.sampling, final=True):
        done[nd.example].append(nd)
    return _results(ctx, examples, done)


# -- dvts ----------------------------------------------------------------------------------------------
def dvts_subtrees(ctx: SearchContext, examples: list[Example]) -> list[list[Node]]:
    """Run DVTS; every finished node each problem's subtrees drew (`Node.subtree` says which subtree)."""
    cfg = ctx.cfg
    width, subtrees = cfg.beam_width, max(1, cfg.n // cfg.beam_width)
    policy = Policy(ctx, examples)
    done: list[list[Node]] = [[] for _ in examples]
    current: list[Node] = []  # each live subtree's node, problem-major
    for depth in range(cfg.max_steps):
        if depth == 0:
            kids = policy.expand(policy.roots(), subtrees * width, ctx.step_sampling())
            for i, k in enumerate(kids):
                k.subtree = (i // width) % subtrees  # rows of one root: subtree s holds rows s*M .. s*M+M-1
        else:
            if not current:
                break
            kids = policy.expand(current, width, ctx.step_sampling())
        scores = _rank_scores(ctx, policy, examples, kids)
        current = []
        for g in range(0, len(kids), width):
            group = kids[g:g + width]
            best = max(range(width), key=lambda i: (scores[g + i], -i))
            done[group[0].example] += [k for k in group if k.finished]
            if not group[best].finished:
                current.append(group[best])
    for nd in policy.expand(current, 1, ctx.sampling, final=True):
        done[nd.example].append(nd)
    return done


@register_strategy("dvts")
def dvts(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    return _results(ctx, examples, dvts_subtrees(ctx, examples))


# -- mcts ----------------------------------------------------------------------------------------------
def selection_scores(parent_visits: int, children: list[Node], c: float, how: str) -> list[float]:
    """PUCT: Q + c * P * sqrt(N_parent) / (1 + N); UCT: Q + c * sqrt(ln N_parent / N), +inf when N = 0."""
    if how == "puct":
        return [ch.q + c * ch.prior * math.sqrt(parent_visits) / (1 + ch.visits) for ch in children]
    return [ch.q + c * math.sqrt(math.log(max(1, parent_visits)) / ch.visits) if ch.visits else math.inf
            for ch in children]


def select_child(node: Node, c: float, how: str) -> Node:
    scores = selection_scores(node.visits, node.children, c, how)
    return node.children[max(range(len(scores)), key=lambda i: (scores[i], -i))]


def _priors(children: list[Node]) -> None:
    """P = exp(step log-prob), normalised over the siblings (a softmax of the steps' log-probs)."""
    top = max(ch.step_logprob for ch in children)
    weights = [math.exp(ch.step_logprob - top) for ch in children]
    total = sum(weights)
    for ch, w in zip(children, weights):
        ch.prior = w / total


def _evaluate(ctx: SearchContext, policy: Policy, examples: list[Example], leaves: list[Node]) -> None:
    """Fill `value` of the leaves that have none: PRM score, or the outcome score of one rollout."""
    todo = [nd for nd in leaves if nd.value is None]
    if not todo:
        return
    if ctx.cfg.value == "prm":
        for nd, v in zip(todo, _prm(ctx, examples, todo)):
            nd.value = v
        return
    if ctx.outcome is None and ctx.cfg.scorer != "likelihood":
        raise ValueError("mcts value=rollout scores rollouts with the outcome scorer: none is loaded")
    open_ = [nd for nd in todo if not nd.finished]
    ends = dict(zip(map(id, open_), policy.expand(open_, 1, ctx.sampling, final=True, again=True)))
    for e in {nd.example for nd in todo}:
        mine = [nd for nd in todo if nd.example == e]
        rollouts = [ends.get(id(nd), nd) for nd in mine]
        scores = outcome_scores(ctx, examples[e], [r.text for r in rollouts], [r.mean_logprob for r in rollouts])
        for nd, v in zip(mine, scores):
            nd.value = v


def _descend(root: Node, pick) -> Node:
    node = root
    while node.children and not node.finished:
        node = pick(node)
    return node


@register_strategy("mcts")
def mcts(ctx: SearchContext, examples: list[Example]) -> list[SearchResult]:
    cfg = ctx.cfg
    policy = Policy(ctx, examples)
    roots = policy.roots()
    for root in roots:
        root.value = 0.0  # never read (selection reads children's Q): do not spend a PRM call or rollout on it
    for _ in range(cfg.n):
        paths = []
        for root in roots:
            path = [root]
            while path[-1].children and not path[-1].finished:
                path.append(select_child(path[-1], cfg.c_puct, cfg.select))
            paths.append(path)
        leaves = [p[-1] for p in paths]
        _evaluate(ctx, policy, examples, leaves)
        grow = [nd for nd in leaves if not nd.finished]
        last = [nd for nd in grow if nd.depth >= cfg.max_steps]
        steps = [nd for nd in grow if nd.depth < cfg.max_steps]
        kids = policy.expand(steps, cfg.beam_width, ctx.step_sampling()) + \
            policy.expand(last, cfg.beam_width, ctx.sampling, final=True)
        parents = steps + last
        for i, parent in enumerate(parents):
            parent.children = _distinct(kids[i * cfg.beam_width:(i + 1) * cfg.beam_width])
            _priors(parent.children)
        for path in paths:
            v = path[-1].value
            for nd in path:
                nd.visits += 1
                nd.value_sum += v
    return _mcts_results(ctx, policy, examples, roots)


def _terminals(root: Node) -> list[Node]:
    out, stack = [], [root]
    while stack:
        nd = stack.pop()
        if nd.finished:
            out.append(nd)
        stack.extend(reversed(nd.children))
    return out


def _mcts_results(ctx: SearchContext, policy: Policy, examples: list[Example], roots: list[Node]) -> list[SearchResult]:
    cfg = ctx.cfg
    out: list[SearchResult | None] = [None] * len(roots)
    walk = []  # problems whose answer is the path the statistics favour
    for e, root in enumerate(roots):
        terminals = _terminals(root)
        if cfg.final == "vote" and terminals:
            texts = [nd.text for nd in terminals]
            keys = [ctx.answer_key(t) for t in texts]
            chosen, share = majority_vote(keys)
            votes = Counter(k for k in keys if k is not None)
            total = sum(votes.values()) or 1
            out[e] = SearchResult(examples[e], texts, [votes[k] / total if k is not None else 0.0 for k in keys],
                                  chosen, share)
        else:
            walk.append(e)
    if cfg.final == "value":
        pick = lambda nd: max([c for c in nd.children if c.visits] or nd.children, key=lambda c: c.q)
    else:
        pick = lambda nd: max(nd.children, key=lambda c: (c.visits, c.q))
    ends = {e: _descend(roots[e], pick) for e in walk}
    unfinished = [e for e in walk if not ends[e].finished]
    for e, nd in zip(unfinished, policy.expand([ends[e] for e in unfinished], 1, ctx.sampling, final=True)):
        nd.visits, nd.value_sum = ends[e].visits, ends[e].value_sum  # its statistics are its parent's
        ends[e] = nd
    for e in walk:
        terminals = _terminals(roots[e])
        if ends[e] not in terminals:
            terminals.append(ends[e])
        scores = [nd.q for nd in terminals]
        chosen = terminals.index(ends[e])
        out[e] = SearchResult(examples[e], [nd.text for nd in terminals], scores, chosen, scores[chosen])
    return out
