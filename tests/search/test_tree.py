"""Step-level tree search (beam, dvts, mcts) on scripted policies whose right answer is known, and prefix
reuse against re-prefilling on the shipped tiny-arith model."""

import math

import pytest
import torch

from reasonloop.rewards.step_tokens import ArithmeticStepCheck
from reasonloop.data.records import Example, RolloutBatch
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.search import SearchConfig, search
from reasonloop.search.base import CountingEngine, SearchContext
from reasonloop.search.tree import Node, _priors, dvts_subtrees, select_child, selection_scores


class ScriptedEngine:
    """Completions from `fn(partial, g) -> (text, reason)`, `partial` = the prompt's text after its first line;
    log-prob -1 per character. Records (partials, n, stop, temperature) of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def generate(self, prompts, n, sampling, generator=None):
        partials = [p.split("\n", 1)[1] for p in prompts]
        self.calls.append((partials, n, list(sampling.stop), sampling.temperature))
        rows = [self.fn(p, g) for p in partials for g in range(n)]
        T = max(1, max(len(t) for t, _ in rows))
        lp = torch.zeros(len(rows), T)
        for i, (t, _) in enumerate(rows):
            lp[i, : len(t)] = -1.0
        z = torch.zeros(len(rows), 1, dtype=torch.long)
        return RolloutBatch(z, z, torch.zeros(len(rows), T, dtype=torch.long), (lp != 0).long(), lp,
                            [r for _, r in rows], [t for t, _ in rows], n)


def answer_of(c):
    return c.split("<answer>")[1].split("<")[0] if "<answer>" in c else None


class TablePRM:
    """A PRM stand-in: each step's score from a table (unknown steps 0), counting calls and steps read."""

    def __init__(self, table):
        self.table = table
        self.calls = 0
        self.tokens_read = 0

    def score_many(self, prompts, steps_lists):
        self.calls += 1
        self.tokens_read += sum(len(s) for steps in steps_lists for s in steps)
        return [[self.table.get(s, 0.0) for s in steps] for steps in steps_lists]

    def score_steps(self, prompt, steps):
        return self.score_many([prompt], [steps])[0]


EX = Example("Q: 1+1=?\n", "2", {"id": "a"})
FIRST_STEPS = {f"s{g};": g / 10 for g in range(6)}  # the PRM likes later first steps better


def run(strategy, engine, prm, examples=(EX,), **cfg):
    return search(engine, list(examples), lambda p: p, SamplingConfig(max_new_tokens=64),
                  SearchConfig(strategy, scorer="prm", step_delimiters=[";"], **cfg), answer_of, prm=prm)


def test_beam_keeps_the_top_n_over_m_unfinished_by_prm_score_and_every_finished_candidate():
    def fn(partial, g):
        if partial == "":  # step 1: g=0 answers at once (a finished candidate the PRM dislikes)
            return ("<answer>0</answer>", "stop") if g == 0 else (f"s{g};", "stop")
        return f"<answer>{partial[1]}{g}</answer>", "stop"

    engine, prm = ScriptedEngine(fn), TablePRM(FIRST_STEPS)
    (r,) = run("beam", engine, prm, n=6, beam_width=2, max_steps=3)
    # N=6 first steps; N/M=3 unfinished kept, best aggregated (last-step) score first; each extended M=2 times
    assert engine.calls[0][:3] == ([""], 6, [";"])
    assert engine.calls[1][:2] == (["s5;", "s4;", "s3;"], 2)
    assert len(engine.calls) == 2  # every beam finished at step 2: nothing left to finish
    assert r.candidates[0] == "<answer>0</answer>"  # finished at step 1: kept though it scored lowest
    assert sorted(r.candidates[1:]) == sorted(f"s{a};<answer>{a}{g}</answer>" for a in (5, 4, 3) for g in (0, 1))
    assert prm.calls == 3  # one PRM call per step for all candidates, one for the final pick


def test_beam_lookahead_scores_each_candidate_after_greedy_steps():
    def fn(partial, g):
        if partial == "":
            return f"s{g};", "stop"
        if partial.count(";") == 1:  # the step after: good after s1, bad after the others
            return ("good;" if partial == "s1;" else "bad;"), "stop"
        return "<answer>1</answer>", "stop"

    table = {**FIRST_STEPS, "good;": 1.0, "bad;": 0.0}
    engine = ScriptedEngine(fn)
    run("beam", engine, TablePRM(table), n=4, beam_width=4, max_steps=1, lookahead=1)
    assert engine.calls[1][:2] == (["s0;", "s1;", "s2;", "s3;"], 1) and engine.calls[1][3] == 0.0  # greedy
    assert engine.calls[2][0] == ["s1;"]  # kept by its lookahead, not by its own (lower) score
    plain = ScriptedEngine(fn)
    run("beam", plain, TablePRM(table), n=4, beam_width=4, max_steps=1)
    assert plain.calls[1][0] == ["s3;"]


def test_after_max_steps_live_nodes_are_finished_without_step_stops():
    def fn(partial, g):  # never finishes on its own: every step ends at a delimiter
        return (f"x{g};", "stop") if partial.count(";") < 9 else ("<answer>9</answer>", "stop")

    engine = ScriptedEngine(fn)
    (r,) = run("beam", engine, TablePRM({}), n=4, beam_width=2, max_steps=2)
    assert [(c[1], c[2]) for c in engine.calls] == [(4, [";"]), (2, [";"]), (1, [])]
    assert len(engine.calls[2][0]) == 2 and len(r.candidates) == 2  # the N/M kept beams, one sample each
    tree = ScriptedEngine(fn)
    run("mcts", tree, TablePRM({}), n=3, beam_width=2, max_steps=1)
    # the root (depth 0) is expanded step-wise; its depth-1 children (max_steps reached), one per simulation,
    # into finished solutions
    assert [(c[0], c[1], c[2]) for c in tree.calls] == [([""], 2, [";"]), (["x0;"], 2, []), (["x1;"], 2, [])]


def test_dvts_subtrees_stay_independent():
    def fn(partial, g):
        if partial == "":
            return f"s{g};", "stop"
        if partial.count(";") == 1:
            return f"t{g};", "stop"
        return f"<answer>{partial[1]}</answer>", "stop"

    table = {**FIRST_STEPS, "t0;": 0.1, "t1;": 0.9}
    engine = ScriptedEngine(fn)
    cfg = SearchConfig("dvts", n=4, beam_width=2, max_steps=3, scorer="prm", step_delimiters=[";"])
    ctx = SearchContext(engine, lambda p: p, SamplingConfig(), cfg, answer_of, prm=TablePRM(table))
    (done,) = dvts_subtrees(ctx, [EX])
    # N/M = 2 subtrees: subtree 0 drew first steps s0, s1 and keeps s1; subtree 1 drew s2, s3 and keeps s3 —
    # a shared beam of N/M = 2 would have kept s3 and s2, both from subtree 1
    assert engine.calls[1][:2] == (["s1;", "s3;"], 2)
    assert engine.calls[2][:2] == (["s1;t1;", "s3;t1;"], 2)
    # step 3 answers twice per subtree (M=2 samples, both finished: both are candidates)
    assert sorted((nd.subtree, nd.text) for nd in done) == [(0, "s1;t1;<answer>1</answer>")] * 2 + [(1, "s3;t1;<answer>3</answer>")] * 2
    for nd in done:  # a subtree's nodes descend from its own first step only
        path = []
        while nd.parent is not None:
            path.append(nd)
            nd = nd.parent
        assert len({p.subtree for p in path}) == 1 and path[-1].text in (["s0;", "s1;"], ["s2;", "s3;"])[path[0].subtree]


def test_dvts_batches_every_problem_and_subtree_into_one_call_per_step():
    engine = ScriptedEngine(lambda partial, g: (f"s{g};", "stop") if partial == "" else ("<answer>1</answer>", "stop"))
    two = [EX, Example("Q: 2+2=?\n", "4", {"id": "b"})]
    results = run("dvts", engine, TablePRM(FIRST_STEPS), examples=two, n=4, beam_width=2, max_steps=3)
    assert [c[1] for c in engine.calls] == [4, 2]  # step 1: 4 per root; step 2: M per subtree, both problems at once
    assert len(engine.calls[1][0]) == 4 and all(r.completion.endswith("<answer>1</answer>") for r in results)


def kids(*stats):
    return [Node(0, visits=n, value_sum=w, prior=p) for n, w, p in stats]


def test_puct_picks_the_child_the_formula_says():
    parent = Node(0, visits=10)
    parent.children = kids((4, 2.0, 0.5), (1, 0.9, 0.2), (0, 0.0, 0.3))
    # Q + c P sqrt(10) / (1 + N):  c = 1.5 -> 0.5 + 0.4743, 0.9 + 0.4743, 0 + 1.4230
    s = math.sqrt(10)
    assert selection_scores(10, parent.children, 1.5, "puct") == pytest.approx([0.5 + 1.5 * 0.5 * s / 5, 0.9 + 1.5 * 0.2 * s / 2, 1.5 * 0.3 * s])
    assert select_child(parent, 1.5, "puct") is parent.children[2]
    assert select_child(parent, 1.0, "puct") is parent.children[1]  # 0.816, 1.216, 0.949
    assert select_child(parent, 0.0, "puct") is parent.children[1]  # pure exploitation: the best Q
    # UCT: an unvisited child first; among visited, Q + c sqrt(ln 10 / N)
    assert select_child(parent, 1.5, "uct") is parent.children[2]
    parent.children = kids((4, 2.0, 0.5), (1, 0.2, 0.2))
    assert selection_scores(10, parent.children, 1.0, "uct") == pytest.approx([0.5 + math.sqrt(math.log(10) / 4), 0.2 + math.sqrt(math.log(10))])
    assert select_child(parent, 1.0, "uct") is parent.children[1]


def test_priors_are_step_probabilities_normalised_over_siblings():
    children = [Node(0, step_logprob=math.log(0.2)), Node(0, step_logprob=math.log(0.6))]
    _priors(children)
    assert [c.prior for c in children] == pytest.approx([0.25, 0.75])


FINISHED = {0: "a<answer>3</answer>", 1: "b<answer>7</answer>", 2: "c<answer>7</answer>", 3: "d<answer>5</answer>"}


def test_mcts_final_vote_votes_over_terminal_nodes_and_visits_follows_the_prm():
    engine = ScriptedEngine(lambda partial, g: (FINISHED[g], "stop"))
    prm = TablePRM({FINISHED[0]: 1.0})  # the PRM likes answer 3; the terminal nodes mostly say 7
    (vote,) = run("mcts", engine, prm, n=6, beam_width=4, final="vote")
    assert vote.candidates == list(FINISHED.values()) and answer_of(vote.completion) == "7"
    assert vote.scores == pytest.approx([0.25, 0.5, 0.5, 0.25]) and vote.confidence == pytest.approx(0.5)
    assert len(engine.calls) == 1  # the root is the only unfinished node: one expansion in six simulations
    (visits,) = run("mcts", ScriptedEngine(engine.fn), TablePRM(prm.table), n=6, beam_width=4, final="visits")
    assert answer_of(visits.completion) == "3"


def test_mcts_statistics_back_up_mean_values_along_the_path():
    def fn(partial, g):
        return (f"s{g};", "stop") if partial == "" else (f"<answer>{partial[1]}</answer>", "stop")

    engine = ScriptedEngine(fn)
    prm = TablePRM({"s0;": 0.2, "s1;": 0.8, "<answer>0</answer>": 0.0, "<answer>1</answer>": 1.0})
    cfg = SearchConfig("mcts", n=4, beam_width=2, max_steps=4, scorer="prm", step_delimiters=[";"], c_puct=1.0)
    (r,) = search(engine, [EX], lambda p: p, SamplingConfig(), cfg, answer_of, prm=prm)
    # sim 1 expands the root (priors 1/2 each: same step log-prob); sim 2: both unvisited, the first (s0) wins the
    # tie, value 0.2, expanded; sim 3: s1 (Q 0, U = 0.5*sqrt(2)/1) beats s0 (0.2 + 0.5*sqrt(2)/2): value 0.8, expanded;
    # sim 4: s1 (0.8 + 0.5*sqrt(3)/2 = 1.233) over s0 (0.2 + 0.433): s1's child, the finished answer 1, value 1.0
    assert [c[0] for c in engine.calls] == [[""], ["s0;"], ["s1;"]]
    assert r.completion == "s1;<answer>1</answer>" and r.scores[r.chosen] == pytest.approx(1.0)
    assert sorted(r.candidates) == ["s0;<answer>0</answer>", "s1;<answer>1</answer>"]


def test_mcts_value_rollout_scores_one_completion_per_new_leaf_with_the_outcome_scorer():
    def fn(partial, g):
        if partial == "":
            return f"s{g};", "stop"
        return f"<answer>{partial[1]}</answer>", "stop"

    engine = ScriptedEngine(fn)
    verifier = lambda ex, comps: [float(answer_of(c) == "1") for c in comps]
    cfg = SearchConfig("mcts", n=3, beam_width=2, max_steps=4, value="rollout", step_delimiters=[";"])
    (r,) = search(engine, [EX], lambda p: p, SamplingConfig(), cfg, answer_of, scorer=verifier)
    # the rollout of a leaf is a whole sample from it (no step stops) at the policy's temperature
    assert engine.calls[1] == (["s0;"], 1, [], 1.0)
    assert answer_of(r.completion) == "1"


# -- prefix reuse on the shipped model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def arith():
    from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer
    from reasonloop.tasks import make_task

    task = make_task("arithmetic")
    return task, load_tokenizer("embedded", task), load_model(ModelConfig(device="cpu"), task).eval()


class ArithmeticPRM(ArithmeticStepCheck):
    """The task's exact step check, counting its calls."""

    calls = 0

    def score_many(self, prompts, steps_lists):
        self.calls += 1
        return super().score_many(prompts, steps_lists)


def test_exact_step_prm_checks_each_step_and_the_answer_against_the_last_result():
    steps = ["<think>3+8=11;", "11-7=5;", "5-1=4</think>", "<answer>4</answer>"]
    assert ArithmeticStepCheck().score_steps("Q", steps) == [1.0, 0.0, 1.0, 1.0]
    assert ArithmeticStepCheck().score_steps("Q", ["<think>6-1+2=7;", "hm;", "<answer>8</answer>"]) == [1.0, 0.5, 0.0]
    assert ArithmeticStepCheck().score_steps("Q", ["<answer>8</answer>", "1+1=02x;"]) == [0.5, 0.5]


@pytest.mark.parametrize("strategy,extra", [("beam", {}), ("dvts", {"lookahead": 1}), ("mcts", {"n": 6})])
def test_prefix_reuse_searches_the_same_tree_as_re_prefilling_and_reads_fewer_tokens(arith, strategy, extra):
    from reasonloop.rollout.prefix_cache import TreeEngine
    from reasonloop.rollout.sampler import TorchSampler
    from reasonloop.train.evaluation import answer_key

    task, tok, model = arith
    examples = task.examples("test", 3, seed=1)
    cfg = SearchConfig(strategy, **{"n": 4, "beam_width": 2, "max_steps": 4, "scorer": "prm", **extra})
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=48)
    runs = {}
    # the recipe wraps whatever engine it has in a CountingEngine: wrapped, the tree engine's own counts show
    used = TreeEngine(model, tok)
    used.generate([examples[0].prompt], 2, sampling)  # counted before wrapping: not this search's
    for name, engine in [("reuse", CountingEngine(used)), ("prefill", CountingEngine(TorchSampler(model, tok)))]:
        prm = ArithmeticPRM()
        results = search(engine, examples, lambda p: p, sampling, cfg, lambda c: answer_key(task, c),
                         generator=torch.Generator().manual_seed(11), prm=prm)
        runs[name] = ([(r.candidates, r.scores, r.chosen) for r in results], engine.generated, engine.prefilled,
                      prm.calls)
    (same_a, gen_a, pre_a, calls_a), (same_b, gen_b, pre_b, calls_b) = runs["reuse"], runs["prefill"]
    assert same_a == same_b and (gen_a, calls_a) == (gen_b, calls_b)
    assert sum(len(c) for c, _, _ in same_a) >= len(examples)
    prompt_tokens = sum(len(tok(ex.prompt, add_special_tokens=False)["input_ids"]) for ex in examples)
    assert pre_a == prompt_tokens < pre_b  # reuse reads each prompt once; re-prefilling reads every prefix again


def test_beam_lets_go_of_the_k_v_of_pruned_and_finished_nodes(arith):
    import gc

    from reasonloop.rollout.prefix_cache import TreeEngine, TreeNode
    from reasonloop.search.tree import Policy, beam_step

    task, tok, model = arith
    examples = task.examples("test", 2, seed=3)
    cfg = SearchConfig("beam", n=6, beam_width=2, scorer="prm")
    ctx = SearchContext(TreeEngine(model, tok), lambda p: p, SamplingConfig(max_new_tokens=48), cfg, str,
                        prm=ArithmeticStepCheck(), generator=torch.Generator().manual_seed(0))
    policy = Policy(ctx, examples)
    live = [[r] for r in policy.roots()]
    for first in (True, False):
        live, finished = beam_step(ctx, policy, examples, live, first)
        assert all(nd.handle is None for f in finished for nd in f)
        gc.collect()
        holding = {id(o) for o in gc.get_objects() if type(o) is TreeNode and o.kv is not None}
        needed = {id(t) for beams in live for nd in beams for t in nd.handle.path()}  # kept beams and their ancestors
        assert holding == needed and 0 < sum(map(len, live)) <= 2 * 3


def test_search_bench_times_both_engines_on_the_same_tree(tmp_path):
    from reasonloop.bench import Config, run as bench
    from reasonloop.config import ConfigError, load_config

    results = bench(load_config(Config, ["which=search", "search.problems=2", "search.n=2", "search.beam_width=2",
                                         "search.max_steps=2", "search.repeats=1", "warmup=0", "search.strategies=[mcts]",
                                         f"output_dir={tmp_path}"]))
    row = results["strategies"]["mcts"]
    assert row["same_picks"] and row["reuse"]["generated"] == row["prefill"]["generated"] > 0
    assert row["reuse"]["prefilled"] < row["prefill"]["prefilled"] and len(row["ratios"]) == 1
    with pytest.raises(ConfigError, match="search.strategies"):
        load_config(Config, ["which=search", "search.strategies=[majority]"])
