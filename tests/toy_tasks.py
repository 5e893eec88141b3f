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


class TwoTurns:
    """Toy environment (agent.env=toy_tasks:two_turns): the first turn is answered with an observation (the turn
    echoed: its length varies) and earns a per-turn reward of 0.1; the second turn ends the episode. A first turn
    that starts with a letter counts as a tool call, and one that starts with two as a failed one (`stats`), so
    the engine's counters vary from row to row."""

    stop: list[str] = []

    def reset(self, example):
        self.turns, self.stats = 0, {}
        return example.prompt

    def step(self, action):
        self.turns += 1
        if self.turns == 1:
            call = action[:1] in LETTERS
            failed = call and action[1:2] in LETTERS
            self.stats = {"calls": int(call), "errors": int(failed), "tool_error": int(failed)}
            return f"<obs>{action}</obs>", 0.1, False
        return "", 0.0, True


def two_turns():
    return TwoTurns()
