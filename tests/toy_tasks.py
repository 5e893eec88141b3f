"""Toy tasks with a reward a random model earns sometimes, so one RL step has signal."""

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


class LetterFirstTask:
    """Toy task: reward 1 when the completion starts with a lowercase letter (~1 in 4 at random init)."""

    name = "letter_first"

    def examples(self, split, n, seed=0):
        offset = 0 if split == "train" else 1000
        return [Example(f"Q: {offset + i}=?\n", "0", {"level": 1 + i % 2}) for i in range(n)]

    def is_correct(self, completion, example):
        return completion[:1] in LETTERS

    def rewards(self):
        return [RewardSpec("accuracy", lambda prompts, completions, **_: [float(c[:1] in LETTERS) for c in completions])]
