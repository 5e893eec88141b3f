"""Put per-step scores on completion tokens, and exact step checkers for the embedded arithmetic task.

`step_end_columns` maps each step's character end to the completion token that holds the step's last
character, by decoding token prefixes (binary search over the prefix length), so it is right for any
tokenizer: one character per token (the embedded one) or BPE tokens that span several characters. When a
token spans a step boundary (a BPE token `;2`), the step's score lands on that token, which also starts the
next step: the step ends inside it, and it is the first token whose generation completed the step.

`ArithmeticStepOracle` is a `StepScorer` that knows the answer: it reads the chain from the prompt
(`Q: 17+4-9=?`) and scores a step 1 when the solution up to and including it is still exactly right
(Math-Shepherd's hard label for a checker that cannot be fooled), else 0. It is the oracle upper bound of
a PRM for `reasonloop train prm=oracle`, labelled as such wherever it is used.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from reasonloop.rewards.process import Step


def step_end_columns(token_ids: Sequence[int], columns: Sequence[int], ends: Sequence[int],
                     decode: Callable[[list[int]], str]) -> list[int]:
    """For each step end (a character offset, exclusive) the column of the token holding the step's last
    character. `token_ids` are the completion's kept tokens in order, `columns` their positions in the
    padded row, and `decode(ids)` must give the text the steps were split from for the full list. An end
    past the decoded text falls on the last token."""
    n = len(token_ids)
    cache: dict[int, int] = {}

    def length(k: int) -> int:  # characters decoded from the first k tokens
        if k not in cache:
            cache[k] = len(decode(list(token_ids[:k])))
        return cache[k]

    out = []
    for end in ends:
        lo, hi = 1, n  # smallest k with length(k) >= end
        while lo < hi:
            mid = (lo + hi) // 2
            if length(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        out.append(columns[lo - 1])
    return out


def place_step_scores(
    completion_ids: torch.Tensor,  # [N, T]
    completion_mask: torch.Tensor,  # [N, T]
    steps: Sequence[Sequence[Step]],  # [N] each row's steps (character spans of its decoded completion)
    scores: Sequence[Sequence[float]],  # [N] one score per step
    decode: Callable[[list[int]], str],
    skip_ids: frozenset[int] = frozenset(),
) -> tuple[torch.Tensor, torch.Tensor]:  # rewards [N, T], mask [N, T]
    """Each step's score on the token where the step ends (`step_end_columns`); `skip_ids` are tokens the
    decoded completion leaves out (the EOS). Two steps ending in one token add up there."""
    rewards = torch.zeros(completion_ids.shape, dtype=torch.float32)
    marks = torch.zeros(completion_ids.shape, dtype=torch.float32)
    for i, (row_steps, row_scores) in enumerate(zip(steps, scores)):
        if len(row_steps) != len(row_scores):
            raise ValueError(f"row {i}: {len(row_scores)} scores for {len(row_steps)} steps")
        if not row_steps:
            continue
        kept = [(c, t) for c, (t, m) in enumerate(zip(completion_ids[i].tolist(), completion_mask[i].tolist()))
                if m and t not in skip_ids]
        if not kept:
            continue
        cols = step_end_columns([t for _, t in kept], [c for c, _ in kept], [s.end for s in row_steps], decode)
        for col, score in zip(cols, row_scores):
            rewards[i, col] += float(score)
            marks[i, col] = 1.0
    return rewards, marks


PROMPT_CHAIN = re.compile(r"Q:\s*(\d+(?:[+-]\d+)*)=\?")
EQUATION = re.compile(r"^(\d+(?:[+-]\d+)*)=(-?\d+)$")
TERM = re.compile(r"([+-])(\d+)")
ANSWER = re.compile(r"^<answer>\s*(-?\d+)\s*</answer>$")
CHAIN = re.compile(r"\d+([+-]\d+)*")


class ArithmeticStepOracle:
    """Exact step verdicts for the embedded arithmetic task (the oracle PRM; see the module docstring).

    A step is `<think>`/`;`/`</think>`-delimited text: an equation `a+b-c=r` is right when it continues the
    chain where the solution so far left it (its first number is the current value, its operations are the
    problem's next ones) and `r` is the true running value; a step with nothing but delimiters keeps the
    verdict so far; the `<answer>` step is right when the solution so far is and the answer is the problem's.
    Anything else, and every step after a wrong one, scores 0.
    """

    tokens_read = 0  # no model reads anything

    def score_steps(self, prompt: str, steps: list[str]) -> list[float]:
        m = PROMPT_CHAIN.search(prompt)
        if m is None:
            raise ValueError(f"not an arithmetic prompt: {prompt!r}")
        chain = m.group(1)
        first = int(re.match(r"\d+", chain).group())
        terms = [(op, int(x)) for op, x in TERM.findall(chain[len(str(first)):])]
        running = [first]
        for op, x in terms:
            running.append(running[-1] + x if op == "+" else running[-1] - x)
        ok, used, value, scores = True, 0, first, []
        for text in steps:
            body = text.replace("<think>", "").replace("</think>", "").strip().rstrip(";").strip()
            if ok and body:
                eq, ans = EQUATION.match(body), ANSWER.match(body)
                if eq:
                    left = eq.group(1)
                    head = int(re.match(r"\d+", left).group())
                    step_terms = [(op, int(x)) for op, x in TERM.findall(left[len(str(head)):])]
                    k = used + len(step_terms)
                    ok = (head == value and step_terms == terms[used:k] and k < len(running)
                          and int(eq.group(2)) == running[k])
                    used, value = k, int(eq.group(2))
                elif ans:
                    ok = int(ans.group(1)) == running[-1]
                else:
                    ok = False
            scores.append(1.0 if ok else 0.0)
        return scores

    def score_many(self, prompts: Sequence[str], steps_lists: Sequence[list[str]]) -> list[list[float]]:
        return [self.score_steps(p, s) for p, s in zip(prompts, steps_lists)]


class ArithmeticStepCheck:
    """A step checker that does not know the problem: `a+b-c=d;` scores 1 when the sum is true and 0 when
    false, the answer step 1 when it repeats the last equation's result (0 otherwise), anything else 0.5.
    It checks each step's arithmetic, not that the steps solve the prompt (`ArithmeticStepOracle` does)."""

    tokens_read = 0  # no model reads anything

    def score_many(self, prompts: list[str], steps_lists: list[list[str]]) -> list[list[float]]:
        return [self.score_steps(p, s) for p, s in zip(prompts, steps_lists)]

    def score_steps(self, prompt: str, steps: list[str]) -> list[float]:
        out, last = [], None
        for step in steps:
            body = step.replace("<think>", "").replace("</think>", "").rstrip(";")
            answer = re.fullmatch(r"<answer>(-?\d+)</answer>", body.strip())
            if answer:
                out.append(0.5 if last is None else float(int(answer.group(1)) == last))
                continue
            lhs, eq, rhs = body.partition("=")
            if not eq or not CHAIN.fullmatch(lhs) or not re.fullmatch(r"-?\d+", rhs):
                out.append(0.5)
                continue
            value = sum(int(t) for t in re.findall(r"[+-]?\d+", lhs))
            out.append(float(value == int(rhs)))
            last = int(rhs)
        return out
