"""ARRE and the paired-prompt machinery it shares with CREL: perturbations, the consistency term, the gap."""

from __future__ import annotations

import random

import pytest

from reasonloop.config import load_config
from reasonloop.data.records import Example
from reasonloop.frameworks import arre
from reasonloop.frameworks.paired import PairReward, pair_agreement, stamp_pairs
from reasonloop.tasks.arithmetic import ArithmeticTask, split_of


def ex(text: str, answer: str) -> Example:
    return Example(f"Q: {text}=?\n", answer, {"id": text, "level": 3})


def test_pair_agreement_hand_computed():
    a, b = pair_agreement([3, 3, None], [3, 5])
    assert a == [0.5, 0.5, 0.0]
    assert b == pytest.approx([2 / 3, 0.0])
    assert pair_agreement([], [1]) == ([], [0.0])


def test_pair_reward_matches_rows_by_pair_and_role_across_the_whole_step():
    o1, v1 = ex("1+2", "3"), ex("2+1", "3")
    o2, v2 = ex("5-1", "4"), ex("Tom likes tea. 5-1", "4")
    rows = stamp_pairs([o1, o2, ex("7+1", "8")], [v1, v2], "s1")
    assert [r.meta.get("role") for r in rows] == ["original", "variant", "original", "variant", None]
    # two samples per prompt, rows prompt-major as the trainer scores them
    examples = [r for r in rows for _ in range(2)]
    answers = ["3", "4", "3", "3", "4", "4", "9", "4", "8", "8"]
    completions = [f"<think>x</think><answer>{a}</answer>" for a in answers]
    fn = PairReward(ArithmeticTask().answer_key, lambda a, b, _ya, _yb: pair_agreement(a, b))
    cols = {"answer": [r.answer for r in examples], "pair": [r.meta.get("pair") for r in examples],
            "role": [r.meta.get("role") for r in examples]}
    out = fn([r.prompt for r in examples], completions, **cols)
    # pair 1: original answers [3, 4], variant [3, 3] -> original [1, 0], variant [1/2, 1/2]
    # pair 2: original [4, 4], variant [9, 4] -> original [1/2, 1/2], variant [0, 1]; the unpaired rows: None
    assert out == [1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, None, None]


def test_a_missing_variant_leaves_its_original_unpaired():
    rows = stamp_pairs([ex("1+2", "3"), ex("4+4", "8")], [None], "s")
    assert [r.meta.get("pair") for r in rows] == [None, None]


@pytest.mark.parametrize("kind, expected", [
    ("irrelevant", "Q: Ann reads books. 17+4-9=?\n"),
    ("distractor", "Q: Bob has 57 pens. 17+4-9=?\n"),
])
def test_sentence_perturbations_keep_the_question_and_the_answer(kind, expected):
    class Fixed(random.Random):
        def choice(self, seq):
            return seq[2] if len(seq) > 2 else seq[0]

        def randint(self, a, b):
            return 57

    out = arre.perturb(ex("17+4-9", "12"), kind, Fixed(), "test")
    assert out.prompt == expected and out.answer == "12"
    assert out.meta["perturbation"] == kind and out.meta["perturbed_from"] == "17+4-9"


def test_rename_defines_the_named_operand():
    out = arre.perturb(ex("17+4-9", "12"), "rename", random.Random(3), "train")
    head, body = out.prompt[len("Q: let "):].split("; ")
    name, value = head.split("=")
    assert name in arre.POOLS["train"]["names"]
    assert body.replace(name, value) == "17+4-9=?\n"
    assert out.answer == "12"


def test_reorder_keeps_the_value_and_nonnegative_running_values():
    terms = arre.terms_of("Q: 3+8-7-1=?\n")
    assert terms == [("+", 3), ("+", 8), ("-", 7), ("-", 1)]
    valid = {tuple(p) for p in [
        [("+", 3), ("+", 8), ("-", 1), ("-", 7)], [("+", 8), ("+", 3), ("-", 7), ("-", 1)],
        [("+", 8), ("+", 3), ("-", 1), ("-", 7)], [("+", 8), ("-", 7), ("+", 3), ("-", 1)],
        [("+", 8), ("-", 1), ("+", 3), ("-", 7)], [("+", 8), ("-", 7), ("-", 1), ("+", 3)],
        [("+", 8), ("-", 1), ("-", 7), ("+", 3)], [("+", 3), ("-", 1), ("+", 8), ("-", 7)]]}
    seen = {tuple(arre.reorder(terms, random.Random(s))) for s in range(200)}
    assert seen == valid  # every valid order, and only those (3-7... and 7... first are out)
    assert arre.reorder(arre.terms_of("Q: 5-3=?\n"), random.Random(0)) is None
    assert arre.chain_text([("+", 8), ("-", 1), ("+", 3)]) == "8-1+3"


def test_reorder_stays_in_its_split():
    terms = arre.terms_of("Q: 3+8-7-1=?\n")
    for split in ("train", "test"):
        for s in range(30):
            order = arre.reorder(terms, random.Random(s), split)
            assert order is None or split_of(arre.chain_text(order)) == split


def test_robustness_gap_hand_computed():
    clean = {"a": True, "b": True, "c": False}
    table = arre.robustness_gap(clean, {"irrelevant": [("a", False), ("b", True), ("c", False)],
                                        "reorder": [("a", True), ("c", True)]})
    assert table["irrelevant"] == pytest.approx({"n": 3, "clean": 2 / 3, "perturbed": 1 / 3, "gap": 1 / 3})
    assert table["reorder"] == pytest.approx({"n": 2, "clean": 0.5, "perturbed": 1.0, "gap": -0.5})
    assert table["mean"]["gap"] == pytest.approx((1 / 3 - 0.5) / 2)


def test_the_held_out_set_uses_the_test_pool_only():
    held = ArithmeticTask().examples("test", 30)
    sets = arre.perturbed_sets(held, arre.KINDS, "test", seed=0)
    train_sentences = arre.POOLS["train"]["sentences"] + [d.split(" {n}")[0] for d in arre.POOLS["train"]["distractors"]]
    for kind, pairs in sets.items():
        assert pairs and all(v.answer == c.answer for c, v in pairs)
        assert not any(s in v.prompt for _, v in pairs for s in train_sentences)


def test_config_rejects_an_unknown_perturbation(tmp_path):
    from reasonloop.config import ConfigError

    with pytest.raises(ConfigError, match="unknown kind 'typo'"):
        load_config(arre.Config, ["perturbations=[typo]", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="variant_frac must be in"):
        load_config(arre.Config, ["variant_frac=0.75", f"output_dir={tmp_path}"])


def test_a_step_keeps_the_sample_count_and_pairs_half_the_prompts(tmp_path):
    cfg = load_config(arre.Config, [f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=8", "group_size=4",
                                    "eval_n=4", "eval_k=0", "train_pool=64", "threads=1", "samples_every=0"])
    trainer = arre.ArreTrainer(cfg)
    prompts = trainer.next_prompts(8)
    assert len(prompts) == 8
    assert [p.meta.get("role") for p in prompts] == ["original", "variant"] * 4
    metrics, data = trainer.step()
    assert data.rewards.shape == (32,)
    assert "consistency" in data.components
    assert "reward/consistency" in metrics
