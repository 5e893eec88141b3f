"""Self-judging reads the digit distribution after the judge prompt; a hook is a module:function."""

import pytest
import torch

from reasonloop.selfimprove.judge import (
    digit_token_ids,
    load_judge_hook,
    self_judge_scores,
)


def test_self_judge_is_the_expected_digit(nano_model, tokenizer):
    prompts, comps = ["Q: 1+1=?\n", "Q: 2+2=?\n"], ["<answer>2</answer>", "<answer>5</answer>"]
    scores = self_judge_scores(nano_model, tokenizer, prompts, comps, micro_batch_size=1)
    assert len(scores) == 2 and all(0.0 <= x <= 9.0 for x in scores)
    # the same value by hand for the first pair
    text = f"{prompts[0]}{comps[0]}\nScore 0-9: "
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = nano_model(input_ids=ids).logits[0, -1]
    probs = logits[torch.tensor(digit_token_ids(tokenizer))].softmax(-1)
    assert scores[0] == pytest.approx(float((probs * torch.arange(10.0)).sum()), abs=1e-4)


def test_judge_hook_loading():
    fn = load_judge_hook("os.path:join")
    assert fn("a", "b") == "a/b"
    with pytest.raises(ValueError):
        load_judge_hook("no_colon")
