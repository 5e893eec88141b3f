"""tool_arith's corpus: calculator solutions where they are asked for, and observations cut out of the loss."""

from __future__ import annotations

import json
import random

from transformers import AutoTokenizer

from reasonloop.config import load_config
from reasonloop.models.loading import resolve_model_path
from reasonloop.recipes import pretrain
from reasonloop.tasks.arithmetic import Problem
from reasonloop.tasks.tool_arith import HARD_LEVELS, ToolArithTask, segments, tool_completion


def test_segments_cut_out_each_observation():
    text = '<think><tool name="calc">3+4</tool><result>7</result>x<result>error: y</result></think><answer>7</answer>'
    assert segments(text) == [('<think><tool name="calc">3+4</tool>', False), ("<result>7</result>", True),
                              ("x", False), ("<result>error: y</result>", True), ("</think><answer>7</answer>", False)]
    assert segments("<think>3+4=7</think><answer>7</answer>") == [("<think>3+4=7</think><answer>7</answer>", False)]
    assert segments("<result>1</result>") == [("<result>1</result>", True)]


def test_tool_solution_answers_with_the_calculators_result():
    p = Problem((37, 28, 15), ("+", "-"), 5)
    assert tool_completion(p) == '<think><tool name="calc">37+28-15</tool><result>50</result></think><answer>50</answer>'


def _levels_with_tools(records, task, n, seed=0):
    problems = task.problems("train", n, seed, distinct=False)
    return [(p.level, "<tool" in r["completion"]) for p, r in zip(problems, records)]


def test_p_tool_hard_puts_the_calculator_on_the_hard_levels_only():
    task = ToolArithTask()
    marks = _levels_with_tools(task.pretraining_records(300, p_tool=0.0, p_tool_hard=1.0), task, 300)
    assert all(tool == (level in HARD_LEVELS) for level, tool in marks)
    assert {level for level, _ in marks} == {1, 2, 3, 4, 5}
    # None keeps the first builds' corpus: p_tool on every level, the same draws
    old = task.pretraining_records(300, p_tool=0.3)
    assert old == task.pretraining_records(300, p_tool=0.3, p_tool_hard=None) \
        == task.pretraining_records(300, p_tool=0.3, p_tool_hard=0.3)
    shares = {}
    for level, tool in _levels_with_tools(task.pretraining_records(2000, p_tool=0.1, p_tool_hard=0.6), task, 2000):
        shares.setdefault(level in HARD_LEVELS, []).append(tool)
    hard, easy = (sum(v) / len(v) for v in (shares[True], shares[False]))
    assert 0.53 < hard < 0.67 and 0.07 < easy < 0.13, (hard, easy)


def test_encode_masked_leaves_exactly_the_results_out_of_the_loss():
    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny-arith"))
    records = [{"prompt": "Q: 37+28-15=?\n", "completion": tool_completion(Problem((37, 28, 15), ("+", "-"), 5))},
               {"prompt": "Q: 1+7=?\n", "completion": "<think>1+7=8</think><answer>8</answer>"}]
    batch, mask = pretrain.encode_masked(tok, records)
    eos = tok.eos_token_id
    row = batch.completion_ids[0].tolist()
    assert tok.decode(row[:-1]) == records[0]["completion"] and row[-1] == eos
    # char-level tokens: '<think>' is one token, then '<tool name="calc">37+28-15</tool>' (33 chars), then the
    # 19-char observation '<result>50</result>', then '</think>', '<answer>', '5', '0', '</answer>', EOS
    assert mask[0].tolist() == [1] * 34 + [0] * 19 + [1] * 6
    assert batch.completion_mask[0].tolist() == [1] * 59  # the result stays context
    n2 = len(tok(records[1]["completion"], add_special_tokens=False)["input_ids"]) + 1
    assert mask[1].tolist() == [1] * n2 + [0] * (59 - n2) and batch.completion_mask[1].tolist() == mask[1].tolist()
    plain = pretrain.encode_pairs(tok, [r["prompt"] for r in records], [r["completion"] for r in records])
    assert batch.completion_ids.tolist() == plain.completion_ids.tolist()  # the same tokens as one piece


def test_pretrain_tool_trains_on_the_policys_tokens_only(tmp_path):
    args = [f"output_dir={tmp_path / 'run'}", "corpus=tool", "steps=1", "batch_size=8", "micro_batch_size=4",
            "corpus_size=64", "eval_every=0", "eval_per_level=1", "threads=1", "p_tool=0", "p_tool_hard=1",
            "mask_observations=true", "seed=3"]
    cfg = load_config(pretrain.Config, args)
    pretrain.run(cfg)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # the recipe's own draw: the corpus, then rng.sample of one batch
    corpus = ToolArithTask().pretraining_records(64, seed=3, p_tool=0.0, p_tool_hard=1.0)
    records = random.Random(3).sample(corpus, 8)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny-arith"))
    want = sum(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in records)
    observed = sum(len(tok(t, add_special_tokens=False)["input_ids"])
                   for r in records for t, obs in segments(r["completion"]) if obs)
    assert any("<tool" in r["completion"] for r in records) and observed > 0
    assert row["tokens"] == want - observed


def test_counterfactual_results_are_copied_into_the_answer():
    p = Problem((37, 28, 15), ("+", "-"), 5)
    assert tool_completion(p, 57) == '<think><tool name="calc">37+28-15</tool><result>57</result></think><answer>57</answer>'
    task = ToolArithTask()
    problems = task.problems("train", 400, 0, distinct=False)
    plain = task.pretraining_records(400, p_tool=0.5)
    mixed = task.pretraining_records(400, p_tool=0.5, p_counterfactual=0.5)
    moved = 0
    for p, a, b in zip(problems, plain, mixed):
        assert ("<tool" in a["completion"]) == ("<tool" in b["completion"])  # the same solutions call the tool
        if "<tool" not in b["completion"]:
            assert a == b
            continue
        result = int(b["completion"].split("<result>")[1].split("</result>")[0])
        assert b["completion"] == tool_completion(p, result) and result >= 0 and abs(result - p.answer) <= 20
        moved += result != p.answer
    calls = sum("<tool" in b["completion"] for b in mixed)
    assert 0.35 < moved / calls < 0.65, (moved, calls)
