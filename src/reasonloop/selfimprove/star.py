"""STaR rationalisation (Zelikman et al. 2022): when the model fails a problem, ask again with the
correct answer as a hint in the prompt; a hinted rationale that reaches the answer is kept — but
trained on under the ORIGINAL prompt, so the model learns to produce it without the hint.

Two guards keep the hint out of the training data: kept samples always carry the un-hinted prompt,
and a rationale that quotes the hint text itself is dropped (it would teach the model to expect it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reasonloop.data.records import Example
from reasonloop.selfimprove.selection import Sample

DEFAULT_HINT_TEMPLATE = "{question} (hint: the answer is {answer})"


def hint_text(example: Example, template: str = DEFAULT_HINT_TEMPLATE) -> str:
    """The part the hint adds, e.g. ' (hint: the answer is 12)'."""
    return template.format(question="", answer=example.answer)


def hinted_prompt(example: Example, template: str = DEFAULT_HINT_TEMPLATE) -> str:
    """The prompt with the answer inserted; trailing whitespace (the prompt's final newline) is kept
    at the end so the model still starts its completion where it usually does."""
    question = example.prompt.rstrip()
    tail = example.prompt[len(question):]
    return template.format(question=question, answer=example.answer) + tail


MIN_MARKER_CHARS = 4  # shorter markers (" ", "=") occur in ordinary rationales


def leaks_hint(completion: str, example: Example, template: str = DEFAULT_HINT_TEMPLATE) -> bool:
    """Does the completion quote the hint: its full text, or the words introducing the answer?

    Stating the answer itself is no leak (a correct rationale must), so a hint that adds fewer than
    MIN_MARKER_CHARS characters to the answer, or a shorter marker, is not searched for.
    """
    hint = hint_text(example, template).strip()
    marker = template.format(question="", answer="\x00").split("\x00")[0].strip()
    wraps_answer = len(hint) - len(example.answer.strip()) >= MIN_MARKER_CHARS  # more than the bare answer
    quotes_hint = wraps_answer and hint in completion
    quotes_marker = len(marker) >= MIN_MARKER_CHARS and marker in completion
    return quotes_hint or quotes_marker


def rationalise(
    examples: Sequence[Example],
    hinted_completions: Sequence[str],
    is_correct: Callable[[str, Example], bool],
    reward: Callable[[str, Example], float],
    template: str = DEFAULT_HINT_TEMPLATE,
) -> tuple[list[Sample], int]:
    """Turn completions generated from hinted prompts into samples under the original prompt.

    `hinted_completions[i]` answers `hinted_prompt(examples[i])`. Returns (kept samples — correct and
    not quoting the hint, each with `prompt = examples[i].prompt` and meta rationalised=True — and the
    number dropped for quoting the hint).
    """
    if len(examples) != len(hinted_completions):
        raise ValueError(f"{len(examples)} examples but {len(hinted_completions)} completions")
    kept, leaked = [], 0
    for ex, comp in zip(examples, hinted_completions):
        if not is_correct(comp, ex):
            continue
        if leaks_hint(comp, ex, template):
            leaked += 1
            continue
        kept.append(Sample(ex.prompt, comp, reward(comp, ex), True, ex.id, {"rationalised": True}))
    return kept, leaked
