"""CREL: the intervention-consistency term, counterfactual pairs that stay in their split, the held-out table."""

from __future__ import annotations


import pytest

from reasonloop.config import load_config
from reasonloop.data.records import Example
from reasonloop.frameworks import crel
from reasonloop.frameworks.arre import terms_of
from reasonloop.frameworks.paired import PairReward, intervention_agreement, stamp_pairs
from reasonloop.tasks.arithmetic import ArithmeticTask, split_of


def test_intervention_agreement_hand_computed():
    a, b = intervention_agreement([12, 12, 9], [15, 10], delta=3)
    assert a == [0.5, 0.5, 0.0]  # 15 - 12 = 3, 10 - 12 = -2; from 9: 6 and 1
    assert b == pytest.approx([2 / 3, 0.0])
    a, b = intervention_agreement([12, 7], [15, 10], delta=3)  # 10 - 7 = 3 too
    assert a == [0.5, 0.5] and b == [0.5, 0.5]


def test_intervention_agreement_ignores_missing_answers():
    assert intervention_agreement([None, 4], [1, None], delta=-3) == ([0.0, 0.5], [0.5, 0.0])


def test_the_pair_reward_uses_the_true_change_of_each_pair():
    task = ArithmeticTask()
    o, c = Example("Q: 4+5=?\n", "9", {"id": "4+5"}), Example("Q: 7+5=?\n", "12", {"id": "7+5"})
    rows = [r for r in stamp_pairs([o], [c], "s") for _ in range(2)]
    # original answers 9 and 8, counterfactual answers 12 and 11: true change +3
    comps = [f"<answer>{a}</answer>" for a in ("9", "8", "12", "11")]
    fn = PairReward(task.answer_key, lambda a, b, ya, yb: intervention_agreement(a, b, int(yb) - int(ya)))
    out = fn([r.prompt for r in rows], comps, answer=[r.answer for r in rows],
             pair=[r.meta["pair"] for r in rows], role=[r.meta["role"] for r in rows])
    # 9 -> 12 moves by 3, 8 -> 11 moves by 3: each sample matches exactly one of the other side's two
    assert out == [0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("split", ["train", "test"])
def test_counterfactuals_change_the_answer_and_stay_valid_and_in_split(split):
    examples = ArithmeticTask().examples(split, 40)
    pairs = crel.counterfactual_pairs(examples, split, seed=0)
    assert len(pairs) >= 30
    for o, c in pairs:
        terms = terms_of(c.prompt)
        assert c.answer != o.answer
        assert c.answer == str(sum(n if s == "+" else -n for s, n in terms))
        assert split_of(c.prompt[3:-3]) == split
        assert len(terms) == len(terms_of(o.prompt))


def test_the_solver_rejects_negative_running_values_and_the_other_split():
    solve = crel.chain_solver("train")
    assert solve("Q: 3-5+9=?\n", []) is None  # 3 - 5 < 0, though the chain's value is 7
    ok = next(f"{a}+{b}" for a in range(10) for b in range(10) if split_of(f"{a}+{b}") == "train")
    bad = next(f"{a}+{b}" for a in range(10) for b in range(10) if split_of(f"{a}+{b}") == "test")
    a, b = map(int, ok.split("+"))
    assert solve(f"Q: {ok}=?\n", []) == str(a + b)
    assert solve(f"Q: {bad}=?\n", []) is None


def test_intervention_table_hand_computed():
    pairs = [(Example("Q: 1+1=?\n", "2", {"id": "o1"}), Example("Q: 3+1=?\n", "4", {"id": "c1"})),
             (Example("Q: 5-1=?\n", "4", {"id": "o2"}), Example("Q: 7-1=?\n", "6", {"id": "c2"}))]
    # pair 1 both right; pair 2 both wrong by +1: still consistent (7-1 vs 5-1 moves by 2: 7 - 5 = 2)
    keys = {"o1": 2, "c1": 4, "o2": 5, "c2": 7}
    table = crel.intervention_table(pairs, keys)
    assert table == {"n": 2, "original": 0.5, "counterfactual": 0.5, "both": 0.5, "consistent": 1.0}


def test_a_crel_step_scores_the_intervention_component(tmp_path):
    cfg = load_config(crel.Config, [f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=4", "group_size=4",
                                    "eval_n=4", "eval_k=0", "train_pool=64", "threads=1", "samples_every=0"])
    trainer = crel.CrelTrainer(cfg)
    prompts = trainer.next_prompts(4)
    assert [p.meta.get("role") for p in prompts] == ["original", "variant"] * 2
    assert all(prompts[i].answer != prompts[i + 1].answer for i in (0, 2))
    _, data = trainer.step()
    assert "intervention" in data.components and data.rewards.shape == (16,)
