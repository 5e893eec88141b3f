"""reasoning-gym adapter: curriculum levels, disjoint splits, and refusal of scorers that pay wrong answers."""

import pytest

pytest.importorskip("reasoning_gym")

from reasoning_gym.factory import DATASETS  # noqa: E402

from reasonloop.tasks.base import Task  # noqa: E402
from reasonloop.tasks.reasoning_gym import ReasoningGymError, _build_dataset, audit_scorer, make_task, parse_gym_spec  # noqa: E402
from reasonloop.rewards.core import compute_rewards  # noqa: E402


def answer(text: str) -> str:
    return f"<think>compute it</think><answer>{text}</answer>"


def test_examples_verify_and_splits_are_disjoint():
    task = make_task("basic_arithmetic", None)
    assert isinstance(task, Task)
    train, test = task.examples("train", 40, seed=0), task.examples("test", 10, seed=0)
    assert len(train) == 40 and len(test) == 10
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert task.examples("train", 5, seed=3) == task.examples("train", 5, seed=3)
    ex = train[0]
    assert "<answer>" in ex.prompt
    assert task.is_correct(answer(ex.answer), ex)
    assert not task.is_correct(answer(str(int(ex.answer) + 1)), ex)


def test_the_train_split_keeps_the_generators_mix_and_the_test_split_is_distinct():
    """Deduplicating a large train pool drawn from a small space empties its small corners first: chain_sum with
    2-4 one-digit terms has a few hundred two-term problems, so 2 000 *distinct* ones held ~2% of them against
    the generator's ~1/3 (and RL trained on that mix forgot the two-term problems the test split still asks)."""
    task = make_task("chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=1", None)
    terms = lambda ex: ex.prompt.count(" + ") + ex.prompt.count(" - ") + 1  # noqa: E731
    train, test = task.examples("train", 2000, seed=0), task.examples("test", 200, seed=0)
    share = lambda exs: sum(terms(e) == 2 for e in exs) / len(exs)  # noqa: E731
    assert 0.25 < share(train) < 0.42, share(train)
    assert len({e.prompt for e in train}) < len(train), "train repeats problems at the generator's frequency"
    assert len({e.prompt for e in test}) == len(test), "each held-out problem counts once"
    assert not {e.prompt for e in train} & {e.prompt for e in test}


def test_curriculum_level_controls_difficulty():
    easy = make_task("basic_arithmetic,level=0", None).examples("train", 20)
    hard = make_task("basic_arithmetic,level=4", None).examples("train", 20)
    assert all(e.meta["entry"]["metadata"]["num_terms"] == 2 for e in easy)
    # reasoning-gym's curricula are inclusive: level k samples attribute values from levels 0..k
    assert max(e.meta["entry"]["metadata"]["num_terms"] for e in hard) > 3
    config = _build_dataset(parse_gym_spec("basic_arithmetic,level=9"), seed=0, size=1).config  # clamped to the top
    assert (config.min_terms, config.max_terms, config.max_digits) == (2, 6, 4)
    config = _build_dataset(parse_gym_spec("basic_arithmetic,level.num_digits=2"), seed=0, size=1).config
    assert (config.max_terms, config.max_digits) == (2, 3)
    with pytest.raises(ReasoningGymError, match="no curriculum attributes"):
        make_task("basic_arithmetic,level.colour=1", None)


def test_partial_credit_for_answer_spam_is_not_accuracy():
    task = make_task("chain_sum", None)
    (ex,) = task.examples("train", 1)
    spam = answer(" ".join([ex.answer] + ["0"] * 10))
    assert 0 < task._scorer.score_answer(" ".join([ex.answer] + ["0"] * 10), ex.meta["entry"]) < 1  # rg pays partial credit
    assert not task.is_correct(spam, ex)
    result = compute_rewards(task.rewards(), [answer(ex.answer), spam, "\\boxed{" + ex.answer + "}"], [ex] * 3)
    assert result.components["accuracy"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["coin_flip", "game_of_life_halting", "puzzle24"])
def test_known_lenient_scorers_are_refused_unless_exact(name):
    with pytest.raises(ReasoningGymError, match="scorer=exact"):
        make_task(name, None)
    task = make_task(f"{name},scorer=exact", None)
    (ex,) = task.examples("test", 1)
    assert task.is_correct(answer(ex.answer), ex)


def test_audit_catches_scorers_that_pay_junk():
    import reasoning_gym

    assert "score_answer('0') = 1.0" in audit_scorer(reasoning_gym.create_dataset("coin_flip", size=8, seed=0))
    assert "True" in audit_scorer(reasoning_gym.create_dataset("game_of_life_halting", size=8, seed=0))
    assert audit_scorer(reasoning_gym.create_dataset("basic_arithmetic", size=8, seed=0)) is None


def test_spec_parsing_and_errors():
    spec = parse_gym_spec("chain_sum,min_terms=2,max_terms=3,level.num_digits=1,scorer=exact")
    assert (spec.config, spec.levels, spec.scorer) == ({"min_terms": 2, "max_terms": 3}, {"num_digits": 1}, "exact")
    with pytest.raises(ReasoningGymError, match="unknown reasoning-gym dataset"):
        make_task("no_such_dataset", None)
    assert "basic_arithmetic" in DATASETS


def test_list_values_keep_their_commas_and_reach_the_generator():
    spec = parse_gym_spec("basic_arithmetic,operators=('+', '-'),min_terms=2,words=[\"a,b\", 'c'],level=1")
    assert spec.config == {"operators": ("+", "-"), "min_terms": 2, "words": ["a,b", "c"]} and spec.levels == {"*": 1}
    task = make_task("basic_arithmetic,operators=('*',),min_terms=2,max_terms=2,min_digits=1,max_digits=1", None)
    assert all("*" in e.prompt and "+" not in e.prompt for e in task.examples("train", 20))
    for bad, message in [("chain_sum,x=[1,2", "unclosed '\\['"), ("chain_sum,x=(1,2]", "unbalanced '\\]' at character 17"),
                         ("chain_sum,x='ab", "unclosed \"'\"")]:
        with pytest.raises(ReasoningGymError, match=message):
            parse_gym_spec(bad)


def test_enum_valued_options_are_written_as_their_values():
    task = make_task("aiw,task_types=['siblings'],task_type_weights=[1.0]", None)  # reasoning-gym wants TaskType members
    assert all("sisters" in e.prompt and "colleagues" not in e.prompt for e in task.examples("train", 20))
    with pytest.raises(ReasoningGymError, match=r"task_types=\['cousins'\]: each must be one of \['siblings'"):
        make_task("aiw,task_types=['cousins']", None)


def test_an_unknown_or_invalid_option_is_a_one_line_task_error():
    with pytest.raises(ReasoningGymError, match=r"^chain_sum has no option foo; its options: allow_negation, "):
        make_task("chain_sum,foo=1", None)
    with pytest.raises(ReasoningGymError, match=r"^chain_sum has no option foo; "):
        make_task("chain_sum,level=1,foo=1", None)  # the same through the curriculum
    # the dataset config's own validate() asserts: a user error, not an internal one
    with pytest.raises(ReasoningGymError, match=r"^bad options for complex_arithmetic: max_real must be >= min_real$"):
        make_task("complex_arithmetic,min_real=5,max_real=1", None)
    with pytest.raises(ReasoningGymError, match=r"^bad options for complex_arithmetic: '>=' not supported"):
        make_task("complex_arithmetic,min_real=abc", None)  # a string where validate() compares numbers
    for level in ("level=abc", "level.num_terms=1.5"):
        with pytest.raises(ReasoningGymError, match=r"a level is a whole number"):
            make_task(f"chain_sum,{level}", None)
