"""DSPRO: the novelty distance and archive, PBT's select-and-perturb step, the diversity metrics, one tiny run."""

from __future__ import annotations

import json

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.frameworks import dspro
from reasonloop.tasks.arithmetic import ArithmeticTask


def test_ngrams_and_jaccard_hand_computed():
    assert dspro.ngrams("abcd", 2) == {"ab", "bc", "cd"}
    assert dspro.ngrams("a", 3) == {"a"}
    # {ab, bc, cd} vs {bc, cd, de}: 2 shared of 4 -> distance 1/2
    assert dspro.jaccard_distance(dspro.ngrams("abcd", 2), dspro.ngrams("bcde", 2)) == 0.5
    assert dspro.jaccard_distance(frozenset(), frozenset()) == 0.0


def test_novelty_is_the_distance_to_the_nearest_archived_solution():
    assert dspro.novelty("abcd", [], 2) == 1.0
    # "abce": {ab, bc, ce}; vs abcd {ab, bc, cd}: 2/4 shared -> 0.5; vs xyz: 1.0 -> nearest 0.5
    assert dspro.novelty("abce", ["xyz", "abcd"], 2) == 0.5
    assert dspro.novelty("abcd", ["abcd"], 2) == 0.0


def test_the_archive_scores_correct_answers_only_then_remembers_them():
    archive = dspro.NoveltyArchive(ArithmeticTask(), n=3, size=2)
    careful, lazy = "<think>1+2=3</think><answer>3</answer>", "<think>1+2=3;3=3</think><answer>3</answer>"
    wrong = "<think>1+2=4</think><answer>4</answer>"
    prompts, answers, ids = ["Q: 1+2=?\n"] * 3, ["3"] * 3, ["1+2"] * 3
    assert archive(prompts, [careful, careful, wrong], answers, id=ids) == [1.0, 1.0, 0.0]  # empty archive
    assert archive.solutions["1+2"] == [careful]  # the batch joins after scoring, deduplicated
    second = archive(prompts[:2], [careful, lazy], answers[:2], id=ids[:2])
    grams = lambda t: dspro.ngrams(t, 3)  # noqa: E731
    assert second == [0.0, pytest.approx(dspro.jaccard_distance(grams(lazy), grams(careful)))]
    assert 0 < second[1] < 1
    archive(["Q: 1+2=?\n"], ["<think>3</think><answer>3</answer>"], ["3"], id=["1+2"])
    assert len(archive.solutions["1+2"]) == 2  # capped at size, oldest out
    assert careful not in archive.solutions["1+2"]


def test_select_and_perturb_hand_computed():
    best, worst, scales = dspro.select_and_perturb([0.5, 0.9, 0.2], [1.0, 0.8, 1.25], factor=1.25)
    assert (best, worst) == (1, 2) and scales == [1.0, 0.8, 1.0]
    best, worst, scales = dspro.select_and_perturb([0.5, 0.5], [1.0, 2.0], factor=0.8)
    assert (best, worst) == (0, 1) and scales == [1.0, 0.8]  # ties: earlier best, later worst
    assert dspro.select_and_perturb([0.3], [1.0], 2.0) == (0, 0, [1.0])


def test_diversity_hand_computed():
    samples = [["a", "a", "b", "c"], ["x", "x", "x", "x"]]
    correct = [[True, True, True, False], [True, True, True, True]]
    assert dspro.diversity(samples, correct) == {"distinct": (3 / 4 + 1 / 4) / 2, "distinct_correct": (2 + 1) / 2}


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="at least one step per member"):
        load_config(dspro.Config, ["population=4", "steps=3", f"output_dir={tmp_path}/r"])
    with pytest.raises(ConfigError, match="eval_k must be >= 2"):
        load_config(dspro.Config, ["eval_k=1", f"output_dir={tmp_path}/r"])


def test_a_tiny_population_run(tmp_path):
    cfg = load_config(dspro.Config, [f"output_dir={tmp_path / 'run'}", "steps=4", "population=2", "exploit_every=1",
                                     "prompts_per_step=4", "group_size=4", "train_pool=8", "eval_n=6", "eval_k=2",
                                     "threads=1", "samples_every=0", "save_every=0", "perturb_factors=[2.0]"])
    result = dspro.run(cfg)
    assert [r["step"] for r in result["rounds"]] == [1, 2]
    assert result["rounds"][0]["lr_scales"] == [1.0, 2.0]  # the second member starts at a drawn factor
    first = result["rounds"][0]
    assert result["rounds"][1]["lr_scales"][first["replaced"]] == first["lr_scales"][first["best"]] * 2.0
    assert result["archive_solutions"] >= 0 and set(result["table"]) == {"base", "best member", "population"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best"] == result["best"]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "member-0" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/novelty" in m for m in metrics)
