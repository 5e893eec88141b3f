"""STaR rationalisation: the hint helps generation but never reaches the kept training samples."""


from reasonloop.data.records import Example
from reasonloop.tasks.arithmetic import ArithmeticTask
from reasonloop.recipes.self_train import Config, star_step
from reasonloop.selfimprove.selection import Sample
from reasonloop.selfimprove.star import (
    DEFAULT_HINT_TEMPLATE,
    hint_text,
    hinted_prompt,
    leaks_hint,
    rationalise,
)

EX = Example("Q: 17+4-9=?\n", "12", {"id": "17+4-9"})
GOOD = "<think>17+4=21;21-9=12</think><answer>12</answer>"


def test_hinted_prompt_inserts_answer_before_the_final_newline():
    assert hinted_prompt(EX) == "Q: 17+4-9=? (hint: the answer is 12)\n"
    assert hint_text(EX) == " (hint: the answer is 12)"


def test_leak_detection():
    assert not leaks_hint(GOOD, EX)
    assert leaks_hint("<think>(hint: the answer is 12)</think><answer>12</answer>", EX)
    assert leaks_hint("<think>(hint: the answer is 21;21-9=12</think><answer>12</answer>", EX)  # the marker
    assert not leaks_hint("<think>12</think><answer>12</answer>", EX)  # stating the answer is fine
    assert not leaks_hint(GOOD, EX, "{question} {answer}")  # a bare-answer hint: the answer is no leak
    assert not leaks_hint(GOOD, EX, "{question}={answer}")  # too short a marker to search for
    assert leaks_hint("<think>Answer key: 12</think><answer>12</answer>", EX, "{question} Answer key: {answer}")


def test_rationalise_keeps_original_prompt_and_drops_leaks():
    task = ArithmeticTask()
    leaky = "<think>(hint: the answer is 12)</think><answer>12</answer>"
    wrong = "<think>17+4=21;21-9=13</think><answer>13</answer>"
    kept, leaked = rationalise([EX, EX, EX], [GOOD, leaky, wrong], task.is_correct, lambda c, e: 1.0)
    assert leaked == 1
    assert [s.completion for s in kept] == [GOOD]
    assert kept[0].prompt == EX.prompt and kept[0].meta == {"rationalised": True}


class FakeLoop:
    """Stands in for selfimprove.loop.Loop: records prompts it is asked to generate from and answers
    hinted prompts with (a) a correct rationale, (b) one that parrots the hint, (c) a wrong one."""

    def __init__(self):
        self.task = ArithmeticTask()
        self.seen_prompts = []

    def generate(self, examples, n, prompts=None):
        self.seen_prompts += list(prompts)
        canned = []
        for i, ex in enumerate(examples):
            good = f"<think>{ex.meta['id']}={ex.answer}</think><answer>{ex.answer}</answer>"
            leaky = f"<think>{hint_text(ex).strip()}</think><answer>{ex.answer}</answer>"
            canned.append([good, leaky, "<answer>-1</answer>"][i % 3])
        return canned

    def score(self, examples, completions):
        return [Sample(ex.prompt, c, 1.0, self.task.is_correct(c, ex), ex.id) for ex, c in zip(examples, completions)]


def test_star_step_never_leaks_the_hint_into_kept_samples():
    task = ArithmeticTask(levels=(1, 2))
    examples = task.examples("train", 9, seed=3)
    loop = FakeLoop()
    first = [ex for ex in examples[:2]]  # solved on the first try, no hint needed
    samples = [Sample(ex.prompt, f"<think>{ex.meta['id']}={ex.answer}</think><answer>{ex.answer}</answer>", 1.1,
                      True, ex.id) for ex in first]
    samples += [Sample(ex.prompt, "<answer>x</answer>", 0.0, False, ex.id) for ex in examples[2:]]
    kept, stats = star_step(loop, Config(method="star"), examples, samples)

    assert all("hint" in p for p in loop.seen_prompts) and len(loop.seen_prompts) == 7  # the 7 failures
    assert stats["star/failed_prompts"] == 7
    assert stats["star/hint_leaks_dropped"] == 2 and stats["star/rationalised"] == 3  # i % 3 == 0 of 7 -> 3
    originals = {ex.id: ex.prompt for ex in examples}
    assert len(kept) == 5
    for s in kept:
        assert s.prompt == originals[s.group]  # trained under the un-hinted prompt
        assert "hint" not in s.prompt and "hint" not in s.completion
        assert not leaks_hint(s.completion, Example(s.prompt, "0"), DEFAULT_HINT_TEMPLATE)
