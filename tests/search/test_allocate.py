"""Compute-optimal allocation: difficulty estimates and bucket edges from hand-made scores, the allocator
picks per bucket what a hand table says (and stops where the pilot's answer is as good as more compute),
the exact frontier against brute force, and the recipe glue on a scripted toy policy whose right answers
are known."""

import itertools

import pytest
import torch

from reasonloop.data.records import Example, RolloutBatch
from reasonloop.search.allocate import (
    PILOT, Allocation, Cell, Option, agreement_difficulty, allocate, assign_buckets, evaluate, frontier,
    quantile_edges, score_difficulty,
)


def test_difficulty_from_pilot_answers_and_scores():
    assert agreement_difficulty(["3", "3", None, "4"]) == 0.5  # 2 of 4 samples carry the winner
    assert agreement_difficulty(["3", "3", "3"]) == 0.0
    assert agreement_difficulty([None, None]) == 1.0  # no answer at all: hardest
    assert score_difficulty([1.0, 0.5]) == 0.25
    with pytest.raises(ValueError):
        agreement_difficulty([])


def test_bucket_edges_from_hand_made_scores():
    scores = [0.1, 0.9, 0.4, 0.6, 0.2, 0.8, 0.3, 0.7]
    edges = quantile_edges(scores, 4)  # sorted .1 .2 | .3 .4 | .6 .7 | .8 .9
    assert edges == [0.2, 0.4, 0.7]
    assert assign_buckets(scores, edges) == [0, 3, 1, 2, 0, 3, 1, 2]
    assert assign_buckets([0.2, 0.21, 5.0, -1.0], edges) == [0, 1, 3, 0]  # on an edge: the lower bucket
    # ties are never split: four problems where the pilot agreed fully fill one bucket, fewer buckets result
    agreement = [0.0, 0.0, 0.0, 0.0, 0.5, 0.75]
    assert quantile_edges(agreement, 3) == [0.0]
    assert assign_buckets(agreement, [0.0]) == [0, 0, 0, 0, 1, 1]
    assert quantile_edges([1.0, 1.0, 1.0], 2) == []  # every score equal: one bucket
    assert quantile_edges(scores, 1) == []


M4, M16, B4 = Option("majority", 4), Option("majority", 16), Option("beam:prm", 4)
# 10 easy problems (the pilot's vote already gets 9) and 10 hard ones; cost = generated tokens in total
TABLE = [
    {PILOT: Cell(9), M4: Cell(9, 400), M16: Cell(10, 1600), B4: Cell(8, 500)},
    {PILOT: Cell(3), M4: Cell(5, 400), M16: Cell(6, 1600), B4: Cell(7, 500)},
]


def test_allocator_picks_per_bucket_what_the_table_says():
    cheap = allocate(TABLE, pilot_cost=200, max_cost=800)
    # the easy bucket stops after the pilot; the hard bucket gets beam: 9 + 7 = 16 right for 200 + 500 tokens,
    # better than majority@4 everywhere (14 for 800) or beam everywhere (15 for 1000, over budget)
    assert cheap == Allocation((PILOT, B4), 16, 700.0, pilot=True)
    rich = allocate(TABLE, pilot_cost=200, max_cost=3200)
    assert rich == Allocation((M16, B4), 17, 2300.0, pilot=True)  # less than majority@16 everywhere (3200)
    assert allocate(TABLE, pilot_cost=200, max_cost=150) is None  # nothing fits
    # a pilot that costs the whole budget loses to one strategy everywhere with no pilot
    assert allocate(TABLE, pilot_cost=1000, max_cost=1000) == Allocation((B4, B4), 15, 1000.0, pilot=False)


def test_frontier_is_the_pareto_set_of_all_allocations():
    front = frontier(TABLE)
    combos = [(sum(TABLE[b][o].correct for b, o in enumerate(c)), sum(TABLE[b][o].generated for b, o in enumerate(c)))
              for c in itertools.product(*TABLE)]
    best = [(k, c) for k, c in combos if not any(k2 >= k and c2 <= c and (k2, c2) != (k, c) for k2, c2 in combos)]
    assert sorted({(a.correct, a.cost) for a in front}) == sorted(set(best))
    assert [a.cost for a in front] == sorted(a.cost for a in front)
    assert (front[0].options, front[0].correct, front[0].cost) == ((PILOT, PILOT), 12, 0.0)


def test_evaluate_sums_the_other_splits_cells_and_charges_the_pilot():
    held = [{PILOT: Cell(4), B4: Cell(3, 50, 90)}, {PILOT: Cell(1), B4: Cell(4, 60, 100)}]
    got = evaluate(Allocation((PILOT, B4), 0, 0.0), held, pilot=Cell(99, 20, 30))
    assert got == Cell(8, 80, 130)  # 4 + 4 right; the pilot's compute on top, its own count ignored
    assert evaluate(Allocation((B4, B4), 0, 0.0, pilot=False), held, pilot=Cell(0, 20, 30)) == Cell(7, 110, 190)
    with pytest.raises(ValueError):
        evaluate(Allocation((B4,), 0, 0.0), held, pilot=Cell(0))


# -- the recipe glue on a scripted toy policy -----------------------------------------------------------------

class ToyTask:
    """Easy problems: every sample right. Hard ones: sample g is right only when g % 4 == 3, the others all
    differ, so a vote of 4 samples picks the first (wrong) one and a vote of 8 gets two right ones."""

    name = "toy"

    def answer_key(self, completion):
        return completion.split("<answer>")[1].split("<")[0] if "<answer>" in completion else None

    def is_correct(self, completion, example):
        return self.answer_key(completion) == example.answer


class ToyPolicy:
    def generate(self, prompts, n, sampling, generator=None):
        comps = [f"<answer>{'R' if 'easy' in p or g % 4 == 3 else 'abcdefgh'[g % 8]}</answer>"
                 for p in prompts for g in range(n)]
        mask = torch.ones(len(comps), len(comps[0]), dtype=torch.long)  # 18 tokens a sample
        ids = torch.ones(len(prompts), 3, dtype=torch.long)
        return RolloutBatch(ids.repeat_interleave(n, 0), torch.ones_like(ids).repeat_interleave(n, 0),
                            torch.zeros_like(mask), mask, -mask.float(), ["stop"] * len(comps), comps, n)


def problems(kind, k, offset=0):
    return [Example(f"Q: {kind} {offset + i}\n", "R", {"level": 1}) for i in range(k)]


def test_compute_optimal_on_a_toy_policy_stops_on_easy_problems():
    from reasonloop.recipes.search import AllocateConfig, Config, compute_optimal, parse_entry, pilot_config, run_one
    from reasonloop.rollout.engine import SamplingConfig

    cfg = Config(strategies=[], budgets=[1, 4, 8],
                 allocate=AllocateConfig(candidates=["majority"], pilot=2, bins=2, select_problems=8))
    task = ToyTask()
    splits = {"select": problems("easy", 4) + problems("hard", 4),
              "held_out": problems("hard", 2, offset=100) + problems("easy", 2, offset=100)}
    calls = []

    def run_on(exs, scfg, seed):
        calls.append((scfg.strategy, scfg.n, len(exs), seed))
        return run_one(ToyPolicy(), task, exs, lambda p: p, SamplingConfig(), scfg, {}, seed, 50)

    out = compute_optimal(cfg, run_on, task, splits, [parse_entry("majority", cfg.search)], pilot_config(cfg))
    assert calls[:2] == [("majority", 2, 8, 1), ("majority", 2, 4, 1)]  # the pilot, on its own seed
    assert out["edges"] == [0.0]  # the pilot agrees fully on the easy problems (0), half on the hard (0.5)
    assert out["splits"]["select"]["bucket_sizes"] == [4, 4] and out["splits"]["held_out"]["bucket_sizes"] == [2, 2]
    sel = out["splits"]["select"]["table"]
    assert sel[1]["majority@4"]["correct"] == 0 and sel[1]["majority@8"]["correct"] == 4
    assert sel[0]["pilot"]["correct"] == 4 and sel[1]["pilot"]["correct"] == 0
    # N=1 and N=4: no pilot fits under majority@1's 18 tokens per problem; at N=4 (72 tokens) the pilot (36) plus
    # majority@8 on the hard half (72) does not fit either, and no allocation beats majority@1's 4/8 right
    # for less: one strategy everywhere. At N=8 (144): the pilot, then stop on easy problems and vote 8 on hard.
    assert [c["allocation"] for c in out["choices"]] == [
        "majority@1 everywhere, no pilot", "majority@1 everywhere, no pilot", "pilot | majority@8"]
    best = out["choices"][-1]
    assert best["select_accuracy"] == 1.0 and best["select_cost"] == (8 * 36 + 4 * 144) / 8
    assert best["held_out_accuracy"] == 1.0 and best["held_out_generated"] == (4 * 36 + 2 * 144) / 4
    rows = {(r["strategy"], r["n"]): r for r in out["rows"]}
    assert rows["majority", 8]["accuracy"] == 1.0 and rows["majority", 8]["generated_tokens"] == 144
    assert rows["majority", 4]["accuracy"] == 0.5
    assert rows["compute_optimal", 8]["generated_tokens"] == 108  # the same accuracy for 3/4 of the tokens


def test_search_command_writes_the_allocation(tmp_path):
    """The CLI wiring on the embedded model: candidates' rows from their bucket runs, one compute_optimal row per
    budget, the selection problems disjoint from the held-out ones, allocation.json behind the rows."""
    import csv
    import json

    from reasonloop.cli import main

    out = tmp_path / "a"
    assert main(["search", "problems=4", "budgets=[1,2]", "threads=1", f"output_dir={out}", "strategies=[]",
                 "allocate.candidates=[majority]", "allocate.pilot=2", "allocate.bins=2",
                 "allocate.select_problems=4"]) in (0, None)
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["strategy"], r["n"]) for r in rows] == [("majority", "1"), ("majority", "2"),
                                                       ("compute_optimal", "1"), ("compute_optimal", "2")]
    allocation = json.loads((out / "allocation.json").read_text())
    assert allocation["splits"]["select"]["problems"] == 4 and allocation["splits"]["held_out"]["problems"] == 4
    assert sum(allocation["splits"]["held_out"]["bucket_sizes"]) == 4
    # at N=1 no pilot of 2 samples fits: majority@1 everywhere, which is the majority@1 row itself
    assert rows[2]["allocation"] == "majority@1 everywhere, no pilot"
    assert (rows[2]["accuracy"], rows[2]["generated_tokens"]) == (rows[0]["accuracy"], rows[0]["generated_tokens"])


@pytest.mark.parametrize("args, message", [
    (["allocate.candidates=[majority]", "allocate.difficulty=prm"], "allocate.difficulty=prm needs search.prm="),
    (["allocate.candidates=[magic]"], "'magic' is not a search strategy"),
    (["allocate.candidates=[majority]", "allocate.bins=0"], "allocate.pilot, allocate.bins and"),
    (["strategies=[]"], "strategies is empty"),
])
def test_bad_allocation_config_is_one_clean_line(tmp_path, capsys, args, message):
    from reasonloop.cli import main

    assert main(["search", "problems=2", *args, f"output_dir={tmp_path / 'x'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
