"""The digit self-judge reads the digit distribution after the judge prompt; a hook is a module:function."""

import pytest
import torch

from reasonloop.rewards.core import load_function
from reasonloop.rewards.judge import DigitJudge, digit_token_ids, self_judge


def test_self_judge_is_the_expected_digit(nano_model, tokenizer):
    prompts, comps = ["Q: 1+1=?\n", "Q: 2+2=?\n"], ["<answer>2</answer>", "<answer>5</answer>"]
    nano_model.train()  # a policy mid-training: judged in eval mode, handed back training
    judge = self_judge(nano_model, tokenizer, how="digits", micro_batch_size=1)
    assert isinstance(judge, DigitJudge)
    scores = judge.score(prompts, comps)
    assert len(scores) == 2 and all(0.0 <= x <= 9.0 for x in scores)
    # the same value by hand for the first pair
    text = f"{prompts[0]}{comps[0]}\nScore 0-9: "
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = nano_model(input_ids=ids).logits[0, -1]
    probs = logits[torch.tensor(digit_token_ids(tokenizer))].softmax(-1)
    assert scores[0] == pytest.approx(float((probs * torch.arange(10.0)).sum()), abs=1e-4)
    # left padding in a shared micro-batch does not change a row's score
    together = self_judge(nano_model, tokenizer, how="digits").score(["Q: 1+1=?\n", "Q: 12+13-4=?\n"], comps)
    assert together[0] == pytest.approx(scores[0], abs=1e-4)
    assert nano_model.training  # handed back in the mode it came in


def test_self_judge_names_its_two_ways():
    with pytest.raises(ValueError, match="'generate' or 'digits'"):
        self_judge(None, None, how="vote")


def test_judge_hook_loading():
    fn = load_function("os.path:join", "judge hook")
    assert fn("a", "b") == "a/b"
    with pytest.raises(ValueError, match="judge hook"):
        load_function("no_colon", "judge hook")
