"""Step scores on completion tokens (char-level and BPE tokenizers) and the exact arithmetic step oracle."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reasonloop.rewards.process import step_spans
from reasonloop.rewards.step_tokens import ArithmeticStepOracle, place_step_scores, step_end_columns

TRACE = "<think>17+4=21;21-9=12</think><answer>12</answer>"


def place(tok, text, scores, pad_to=None):
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pad = (pad_to or len(ids)) - len(ids)
    row = torch.tensor([ids + [tok.pad_token_id] * pad])
    mask = torch.tensor([[1] * len(ids) + [0] * pad])
    steps = step_spans(text)
    rewards, marks = place_step_scores(row, mask, [steps], [scores],
                                       lambda x: tok.decode(x, skip_special_tokens=True), frozenset({tok.eos_token_id}))
    return ids, rewards[0], marks[0]


def test_char_tokenizer_puts_each_score_on_the_steps_last_token(tokenizer):
    ids, rewards, marks = place(tokenizer, TRACE, [0.9, 0.2, 0.7], pad_to=40)
    cols = marks.nonzero().view(-1).tolist()
    assert [tokenizer.decode([ids[c]]) for c in cols] == [";", "</think>", "</answer>"]
    assert rewards[cols].tolist() == pytest.approx([0.9, 0.2, 0.7])
    assert float(rewards.sum()) == pytest.approx(1.8)  # nothing anywhere else (not on the EOS or the padding)


def bpe_tokenizer():
    """A byte-pair tokenizer learned here from arithmetic traces: its tokens span several characters."""
    core = Tokenizer(models.BPE(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    core.decoder = decoders.Fuse()  # decode joins the tokens' text (the default decoder puts spaces between)
    corpus = [f"<think>{a}+{b}={a + b};{a + b}-9={a + b - 9}</think><answer>{a + b - 9}</answer>"
              for a in range(10, 40) for b in range(1, 9)]
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["[PAD]", "[EOS]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def test_bpe_tokens_spanning_many_characters_get_the_score_of_the_step_ending_inside_them():
    tok = bpe_tokenizer()
    enc = tok(TRACE, add_special_tokens=False, return_offsets_mapping=True)
    assert max(e - s for s, e in enc["offset_mapping"]) > 2, "the test needs multi-character tokens"
    assert tok.decode(enc["input_ids"]) == TRACE
    ids, rewards, marks = place(tok, TRACE, [0.9, 0.2, 0.7])
    # the expected column of each step: the token whose character span holds the step's last character
    expected = [next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < step.end <= e)
                for step in step_spans(TRACE)]
    assert marks.nonzero().view(-1).tolist() == expected
    assert rewards[expected].tolist() == pytest.approx([0.9, 0.2, 0.7])


def test_step_end_columns_with_hand_built_multi_character_tokens():
    vocab = ["<think>", "17", "+4=", "21;2", "1-9", "=12</think>", "<answer>12", "</answer>"]
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    ids = list(range(len(vocab)))
    assert decode(ids) == TRACE
    # ';' (char 14) ends inside '21;2', '</think>' inside '=12</think>', the answer at the last token
    cols = step_end_columns(ids, [c + 3 for c in ids], [s.end for s in step_spans(TRACE)], decode)
    assert cols == [3 + 3, 5 + 3, 7 + 3]  # columns are the given positions (e.g. after a left pad)


def test_rows_without_steps_get_nothing_and_miscounted_scores_are_an_error(tokenizer):
    ids = torch.tensor([[tokenizer.eos_token_id, 0]])
    rewards, marks = place_step_scores(ids, torch.tensor([[1, 0]]), [[]], [[]], tokenizer.decode)
    assert not marks.any() and not rewards.any()
    with pytest.raises(ValueError, match="2 scores for 3 steps"):
        place(tokenizer, TRACE, [1.0, 1.0])


@pytest.mark.parametrize("completion, expected", [
    ("<think>17+4=21;21-9=12</think><answer>12</answer>", [1, 1, 1]),  # careful and right
    ("<think>17+4-9=12</think><answer>12</answer>", [1, 1]),  # lazy and right
    ("<think>17+4=22;22-9=13</think><answer>13</answer>", [0, 0, 0]),  # first step wrong: all after it too
    ("<think>17+4=21;21-9=11</think><answer>11</answer>", [1, 0, 0]),
    ("<think>17+4=21;21-9=12</think><answer>13</answer>", [1, 1, 0]),  # right steps, wrong answer
    ("<think>17+4=21;20-9=11</think><answer>11</answer>", [1, 0, 0]),  # does not continue from 21
    ("<think>17-4=13;13-9=4</think><answer>4</answer>", [0, 0, 0]),  # not the problem's operation
    ("<think>17+4=21;</think><answer>12</answer>", [1, 1, 1]),  # an empty step keeps the verdict so far
    ("<think>hello;17+4=21</think>", [0, 0]),
    ("<think>17+4=21;21-9=12", [1, 1]),  # a partial completion (search scores prefixes)
])
def test_the_arithmetic_oracle_scores_a_step_one_while_the_solution_is_still_exactly_right(completion, expected):
    steps = [s.text for s in step_spans(completion)]
    assert ArithmeticStepOracle().score_steps("Q: 17+4-9=?\n", steps) == expected
    assert ArithmeticStepOracle().score_many(["Q: 17+4-9=?\n"], [steps]) == [expected]


def test_the_oracle_refuses_a_prompt_that_is_not_arithmetic():
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        ArithmeticStepOracle().score_steps("Write f(a, b)", ["x"])
