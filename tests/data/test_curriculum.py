"""The curriculum sampler (data/curriculum.py): its probabilities against the formula worked by hand on
hand-built pass-rate windows, milestones unlocking exactly at their thresholds, online filtering's skips,
and a JSON round trip of its state that continues the uninterrupted draw sequence."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from reasonloop.config import ConfigError
from reasonloop.data.curriculum import (
    CurriculumConfig,
    CurriculumSampler,
    capability,
    difficulties,
    group_pass_rate,
    level_probabilities,
    make_prompt_sampler,
)
from reasonloop.data.records import Example
from reasonloop.data.sampling import ShuffledPasses


def pool(levels: dict, domain: str = "") -> list[Example]:
    """`levels[L]` examples of each level L (ids unique), tagged with `domain` when given."""
    out = []
    for level, n in levels.items():
        for i in range(n):
            meta = {"level": level, "id": f"{domain}{level}-{i}", **({"domain": domain} if domain else {})}
            out.append(Example(f"Q{domain}{level}-{i}", "0", meta))
    return out


def fill(sampler: CurriculumSampler, level, rates: list[float], domain: str = "") -> None:
    ex = next(e for e in sampler.pool if e.meta["level"] == level and e.meta.get("domain", "") == domain)
    sampler.observe([ex] * len(rates), rates)


def make(examples, seed=0, **cfg) -> CurriculumSampler:
    return CurriculumSampler(examples, CurriculumConfig(enabled=True, **cfg), seed)


def test_difficulties_and_capability_by_hand():
    assert difficulties(5) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert capability([1.0, 1.0, 0.0, 0.0]) == 0.5  # solves two of four levels: between d_2 and d_3


def test_probabilities_match_the_formula_on_hand_built_windows():
    # windows [1, 1], [1, 0], [0], [0] -> p = (1, .5, 0, 0), c = 0.375, d = (.125, .375, .625, .875);
    # g = exp(-(d - c)^2 / (2 * .25^2)) = (e^-.5, 1, e^-.5, e^-2) = (.60653, 1, .60653, .13534), sum 2.34840
    s = make(pool({1: 3, 2: 3, 3: 3, 4: 3}), sigma=0.25, floor=0.0)
    for level, rates in {1: [1, 1], 2: [1, 0], 3: [0], 4: [0]}.items():
        fill(s, level, rates)
    assert s.capability("") == pytest.approx(0.375)
    assert list(s.probabilities().values()) == pytest.approx([0.25827, 0.42582, 0.25827, 0.05763], abs=1e-5)
    # a floor of 0.2 spreads 0.05 on each of the four levels: 0.8 * g / sum + 0.05
    assert level_probabilities([1, 0.5, 0, 0], [True] * 4, 0.25, 0.2) == pytest.approx(
        [0.25662, 0.39066, 0.25662, 0.09610], abs=1e-5)


def test_locked_levels_count_zero_and_empty_windows_the_prior():
    # window 2, milestone 0.5: level 1 at [0.5, 0.7] (0.6) unlocks level 2 (empty: prior 0.5); level 3 locked
    # p = (0.6, 0.5, 0), c = 1.1/3, d = (1/6, 1/2, 5/6); g = (e^-0.5, e^-(2/9)) = (.606531, .800737)
    s = make(pool({1: 2, 2: 2, 3: 2}), window=2, milestones=[0.5], sigma=0.2, floor=0.0)
    assert list(s.probabilities().values()) == [1.0, 0.0, 0.0]  # only the first level at the start
    fill(s, 1, [0.5, 0.7])
    assert s.capability("") == pytest.approx(1.1 / 3)
    assert list(s.probabilities().values()) == pytest.approx([0.43100, 0.56900, 0.0], abs=1e-5)


def test_domains_keep_their_share_of_the_pool():
    # a: 2 levels, 6 prompts; b: 1 level, 2 prompts -> shares 3/4, 1/4; a's p = (1, 0): c = .5, equal g
    s = make(pool({1: 3, 2: 3}, "a") + pool({7: 2}, "b"), floor=0.0)
    fill(s, 1, [1.0], "a")
    fill(s, 2, [0.0], "a")
    assert s.probabilities() == pytest.approx({"a/1": 0.375, "a/2": 0.375, "b/7": 0.25})


@pytest.mark.parametrize("rates, unlocked", [
    ([1, 1, 1], False),  # the window (4) is not full yet
    ([1, 1, 0, 0.99], False),  # mean 0.7475: just below 0.75
    ([1, 1, 1, 0], True),  # mean 0.75: exactly at the threshold
])
def test_a_milestone_unlocks_exactly_at_its_threshold_over_a_full_window(rates, unlocked):
    s = make(pool({1: 2, 2: 2, 3: 2}), window=4, milestones=[0.75, 0.5])
    fill(s, 1, rates)
    assert [lv.unlocked for lv in s.domains[""]] == [True, unlocked, False]


def test_milestones_unlock_in_order_with_their_own_thresholds_and_stay_unlocked():
    s = make(pool({1: 2, 2: 2, 3: 2}), window=2, milestones=[0.75, 0.5])
    fill(s, 2, [1, 1])  # level 2 is still locked: its window does not count until level 1 opens it
    assert [lv.unlocked for lv in s.domains[""]] == [True, False, False]
    fill(s, 1, [0.75, 0.75])
    assert [lv.unlocked for lv in s.domains[""]] == [True, True, True]  # level 2's window [1, 1] >= 0.5
    fill(s, 1, [0, 0])
    assert [lv.unlocked for lv in s.domains[""]] == [True, True, True]  # a milestone is never taken back
    assert s.metrics()["curriculum/unlocked"] == 3.0


def test_milestone_count_must_fit_the_levels():
    with pytest.raises(ConfigError, match="curriculum.milestones has 2 thresholds"):
        make(pool({1: 1, 2: 1, 3: 1, 4: 1}), milestones=[0.9, 0.8])


def test_draws_follow_the_probabilities_and_never_reach_a_locked_level():
    s = make(pool({1: 5, 2: 5, 3: 5}), window=1, milestones=[0.99], floor=0.0)
    fill(s, 1, [1.0])  # unlocks level 2; level 3 stays locked (level 2's window is empty)
    s.retired.clear()
    probs = s.probabilities()
    counts = Counter(s.level_of(i) for _ in range(200) for i in s.next(10))
    assert counts["3"] == 0
    for level in ("1", "2"):
        assert counts[level] / 2000 == pytest.approx(probs[level], abs=0.03)


def test_filtered_prompts_are_skipped_once():
    examples = pool({1: 3})
    s = make(examples, filter=True)
    first = s.next(3)  # one whole pass of the level
    s.observe([examples[first[0]], examples[first[1]]], [1.0, 0.5])  # the first solved, the second informative
    second = s.next(2)
    assert sorted(second) == sorted(set(range(3)) - {first[0]})  # pass 2 without the solved prompt
    s.next(1)  # by now pass 2 has reached it (wherever it sits) and skipped it
    assert s.metrics()["curriculum/skipped"] == 1.0 and s.retired == set()  # skipped once: offered again after


def test_without_filter_nothing_is_skipped():
    examples = pool({1: 3})
    s = make(examples, filter=False)
    first = s.next(3)
    s.observe([examples[i] for i in first], [1.0, 0.0, 1.0])
    assert sorted(s.next(3)) == [0, 1, 2]


def test_state_round_trip_continues_the_uninterrupted_sequence():
    examples = pool({1: 4, 2: 4, 3: 4})

    def play(sampler, rounds):
        drawn = []
        for r in range(rounds):
            idx = sampler.next(5)
            drawn += idx
            sampler.observe([examples[i] for i in idx], [(i * 7 + r) % 3 / 2 for i in idx])
        return drawn

    cfg = dict(window=3, milestones=[0.4], filter=True)
    straight = make(examples, seed=3, **cfg)
    full = play(straight, 8)
    first = make(examples, seed=3, **cfg)
    head = play(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints are JSON
    second = make(examples, seed=3, **cfg)
    second.load_state_dict(state)
    rest = []
    for r in range(5, 8):
        idx = second.next(5)
        rest += idx
        second.observe([examples[i] for i in idx], [(i * 7 + r) % 3 / 2 for i in idx])
    assert head + rest == full
    assert second.state_dict() == straight.state_dict()


def test_a_uniform_checkpoint_does_not_load_into_a_curriculum():
    s = make(pool({1: 2}))
    with pytest.raises(ConfigError, match="not a curriculum"):
        s.load_state_dict({"epoch": 0, "position": 3})


def test_disabled_means_the_uniform_passes_of_the_figures_of_record():
    sampler = make_prompt_sampler(pool({1: 5}), CurriculumConfig(), seed=0)
    assert isinstance(sampler, ShuffledPasses)
    assert sampler.next(5) == [2, 3, 1, 0, 4]  # random.Random("0:0").shuffle(range(5)), tests/data/test_sampling.py


def test_group_pass_rate_reads_the_first_verdict_component():
    import torch

    assert group_pass_rate({"format": torch.ones(4), "accuracy": torch.tensor([1.0, 0, 0, 1])}) == 0.5
    assert group_pass_rate({"correct": torch.tensor([1.0, 1, 1, 0])}) == 0.75
    assert group_pass_rate({"format": torch.ones(2)}) is None


@pytest.mark.parametrize("key, value, message", [
    ("window", 0, "curriculum.window=0"), ("sigma", 0.0, "curriculum.sigma"), ("floor", 1.5, "curriculum.floor"),
    ("prior", -0.1, "curriculum.prior"), ("milestones", [1.2], "curriculum.milestones"),
])
def test_bad_values_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        CurriculumConfig(**{key: value})
