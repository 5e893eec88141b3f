import itertools
from math import isclose

import pytest

from reasonloop.algos.passk import majority_correct, pass_at_k


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_matches_brute_force_over_subsets(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert isclose(pass_at_k(n, c, k), brute, abs_tol=1e-12)


def test_pass_at_1_is_the_mean():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_vote():
    assert majority_correct([5, 5, 3], [True, True, False])
    assert not majority_correct([5, 3, 3], [True, False, False])
    assert majority_correct([3, 5], [False, True]) is False  # tie -> first seen
    assert not majority_correct([None, None], [False, False])
    assert majority_correct([None, 7, None], [False, True, False])  # missing answers do not vote
