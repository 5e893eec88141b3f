"""DCoT-SE's bandit and library rules by hand."""

from __future__ import annotations

import math

import pytest

from reasonloop.frameworks.dcot import Arm, Mode, ModeLibrary, context_of


def test_arm_posterior_by_hand():
    a = Arm()
    for s in (1.0, 1.0, 1.0, 0.0):
        a.update(s)
    assert a.mean == pytest.approx(4 / 6)  # Beta(4, 2)
    assert a.sd == pytest.approx(math.sqrt(4 * 2 / (36 * 7)))


def test_context_of():
    assert context_of("Q: 17+4-9=?\n") == "2ops-2d"
    assert context_of("Q: 3+4=?\n") == "1ops-1d"
    assert context_of("Q: 3+40=?\n") == "1ops-2d"
    assert context_of("Explain gravity") == "any"


def library(*modes) -> ModeLibrary:
    return ModeLibrary(modes, min_pulls=4, max_modes=8, seed=0)


def test_retire_drops_a_clearly_worse_mode_but_keeps_two():
    lib = library(Mode("a", 1, 1.0), Mode("b", 99, 1.0), Mode("c", 2, 1.0))
    for _ in range(20):
        lib.arm("x", "a").update(1.0)
        lib.arm("x", "b").update(0.0)
    for s in (1.0, 0.0) * 10:
        lib.arm("x", "c").update(s)
    assert lib.retire(step=5) == ["b"]  # c is worse than a too, but two modes always stay
    assert lib.live == ["a", "c"]
    assert lib.history == ["step 5: retired b (0.05 vs a 0.95)"]


def test_choose_follows_overwhelming_evidence_and_best_is_the_posterior_mean():
    lib = library(Mode("a", 1, 1.0), Mode("b", 99, 1.0))
    for _ in range(500):
        lib.arm("x", "a").update(0.0)
        lib.arm("x", "b").update(1.0)
    assert {lib.choose("x") for _ in range(20)} == {"b"}
    assert lib.best("x") == "b"
    assert lib.best("unseen") == "b"  # never seen: the best pooled mode
    lib.modes.append(Mode("c", 2, 1.0))
    lib.live.append("c")  # a new mode's prior mean 0.5 does not beat b's evidence, nor does a's 0.002
    lib.arm("x", "a").update(0.0)
    assert lib.best("x") == "b"
    for _ in range(600):
        lib.arm("x", "b").update(0.0)  # b now at 500/1102 ~ 0.45 < 0.5, but c is still untried here
    assert lib.best("x") == "b"


def test_evolve_combines_the_two_best_modes_and_skips_existing_children():
    lib = library(Mode("a", 1, 1.0), Mode("b", 99, 0.7))
    for _ in range(6):
        lib.arm("x", "a").update(1.0)
        lib.arm("x", "b").update(0.5)
    child = lib.evolve(step=10)
    assert child == Mode("a+b", 1, 0.7)
    assert lib.live == ["a", "b", "a+b"]
    lib2 = library(Mode("a", 1, 1.0), Mode("b", 99, 0.7), Mode("c", 1, 0.7))
    for name in ("a", "b"):
        for _ in range(6):
            lib2.arm("x", name).update(1.0 if name == "a" else 0.5)
    assert lib2.evolve(step=10) == Mode("b+a", 99, 1.0)  # (1, 0.7) exists as c: the other way round


def test_state_dict_round_trip():
    lib = library(Mode("a", 1, 1.0), Mode("b", 99, 0.7))
    lib.arm("x", "a").update(0.5)
    lib.choose("x")
    other = library(Mode("z", 0, 1.0))
    other.load_state_dict(lib.state_dict())
    assert other.modes == lib.modes and other.live == lib.live
    assert other.arm("x", "a").mean == lib.arm("x", "a").mean
    assert [other.choose("x") for _ in range(5)] == [lib.choose("x") for _ in range(5)]


def test_evolve_mutates_the_best_mode_when_no_pair_makes_a_new_one():
    lib = library(Mode("a", 1, 1.0), Mode("b", 1, 0.8))
    for _ in range(6):
        lib.arm("x", "a").update(1.0)
        lib.arm("x", "b").update(0.5)
    # (1, 0.8) and (1, 1.0) both exist: a is mutated, temperature down first -> (1, 0.8) exists, so up
    assert lib.evolve(step=20) == Mode("a~2", 1, 1.2)
    assert lib.history[-1] == "step 20: mutated a into a~2 (chunk 1, T 1.2)"
