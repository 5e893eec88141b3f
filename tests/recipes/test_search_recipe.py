"""`reasonloop search` end to end on the embedded model: files, compute accounting, the oracle bound."""

import csv
import json

import pytest

from reasonloop.cli import main


def test_search_writes_scaling_table_and_plot(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["search", "problems=12", "budgets=[1,4]", "threads=1", f"output_dir={out}",
                 "strategies=[majority,best_of_n:verifier,adaptive,refine]", "search.rounds=1"])
    assert code in (0, None)
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [(r["strategy"], r["n"]) for r in rows] == [
        (s, n) for s in ["majority", "best_of_n:verifier (oracle)", "adaptive", "refine:verifier (oracle)"] for n in ["1", "4"]]
    by = {(r["strategy"], int(r["n"])): r for r in rows}
    # same seed, same samples: the oracle pick is never worse than the vote over the same four samples
    assert float(by["best_of_n:verifier (oracle)", 4]["accuracy"]) >= float(by["majority", 4]["accuracy"])
    assert float(by["majority", 4]["generated_tokens"]) > 2 * float(by["majority", 1]["generated_tokens"])
    # adaptive at N=4 never samples more than majority at N=4
    assert float(by["adaptive", 4]["generated_tokens"]) <= float(by["majority", 4]["generated_tokens"])
    assert (out / "scaling.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 12 and len(summary["rows"]) == 8
    assert "level/1" in rows[0]


@pytest.mark.parametrize("arg, message", [
    ("strategies=[magic]", "'magic' is not a search strategy"),
    ("strategies=[best_of_n:oracle]", "scorer 'oracle' is not one of"),
    ("strategies=[refine:prmm]", "feedback 'prmm' is not one of"),
    ("budgets=[0]", "budgets=[0]"),
    ("strategies=[best_of_n:prm]", "set search.prm="),
    ("search.prm=/nonexistent/prm", "search.prm='/nonexistent/prm': no such directory"),
])
def test_search_bad_config_is_one_clean_line(tmp_path, capsys, arg, message):
    code = main(["search", "problems=2", arg, f"output_dir={tmp_path / 'x'}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_entries_and_labels_mark_every_use_of_the_verifier():
    from reasonloop.recipes.search import label, parse_entry
    from reasonloop.search import SearchConfig

    base = SearchConfig()
    assert label(parse_entry("beam", base)) == "beam:prm"  # tree search picks with its PRM by default
    assert label(parse_entry("beam:verifier", base)) == "beam:verifier (oracle)"
    assert label(parse_entry("best_of_n", base)) == "best_of_n:verifier (oracle)"
    assert label(parse_entry("refine:self", base)) == "refine:self"
    assert parse_entry("mcts:rollout", base).value == "rollout"
    assert label(parse_entry("mcts:rollout", base)) == "mcts:rollout"  # its rollouts are scored by the PRM


def test_tree_engine_searches_the_same_tree_reading_fewer_tokens(tmp_path):
    """rollout.engine=tree continues partial solutions from their cached K/V: the same picks and samples as
    re-reading them (same seed), and fewer forward tokens. search.prm=check is the exact step check."""
    rows = {}
    for engine in ("torch", "tree"):
        out = tmp_path / engine
        assert main(["search", "problems=6", "budgets=[2]", "threads=1", f"output_dir={out}", "strategies=[beam]",
                     "search.prm=check", "search.max_steps=6", f"rollout.engine={engine}"]) in (0, None)
        rows[engine] = list(csv.DictReader(open(out / "scaling.csv")))[0]
    torch_row, tree_row = rows["torch"], rows["tree"]
    assert tree_row["accuracy"] == torch_row["accuracy"]
    assert tree_row["generated_tokens"] == torch_row["generated_tokens"]
    assert float(tree_row["forward_tokens"]) < float(torch_row["forward_tokens"])


def test_oracle_step_scorer_is_labelled_and_arithmetic_only(tmp_path, capsys):
    from reasonloop.recipes.search import label, parse_entry
    from reasonloop.search import SearchConfig

    assert label(parse_entry("beam", SearchConfig(prm="oracle"))) == "beam:prm (oracle)"
    assert label(parse_entry("best_of_n:prm", SearchConfig(prm="check"))) == "best_of_n:prm"
    assert label(parse_entry("majority", SearchConfig(prm="oracle"))) == "majority"  # never reads the PRM
    code = main(["search", "problems=2", "task=code_arith", "strategies=[beam]", "search.prm=oracle",
                 f"output_dir={tmp_path / 'x'}"])
    assert code == 2 and "search.prm=oracle is the arithmetic task's step scorer" in capsys.readouterr().err
