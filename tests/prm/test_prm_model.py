"""The PRM head: labels at the right tokens (TRL's PRMTrainer convention), batched == single scoring,
prefix scoring, the loss by hand, save/load, and the direction of one training step."""

from __future__ import annotations

import copy
import math
from itertools import chain

import pytest
import torch

from reasonloop.models.loading import ModelError
from reasonloop.prm import load_prm, new_prm, step_cross_entropy
from reasonloop.prm.model import ProcessRewardModel

PROMPT = "Q: 12+3-4=?\n"
STEPS = ["<think>12+3=15;", "15-4=11</think>", "<answer>11</answer>"]


def trl_labels(tokenizer, prompt, steps, labels, separator):
    """TRL PRMTrainer.tokenize_row's layout, written out independently: [BOS] + prompt ids, then each step's
    own ids followed by the separator's ids; the step's label on its last token, -100 elsewhere."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    sep = tokenizer.encode(separator, add_special_tokens=False)
    step_ids = [tokenizer(s, add_special_tokens=False)["input_ids"] + sep for s in steps]
    step_labels = [[-100] * (len(ids) - 1) + [int(y)] for ids, y in zip(step_ids, labels)]
    return prompt_ids + list(chain(*step_ids)), [-100] * len(prompt_ids) + list(chain(*step_labels))


@pytest.fixture(scope="module")
def prm(nano_model_dir):
    return new_prm(nano_model_dir, seed=0)


def test_steps_are_read_at_their_last_token_by_hand(prm):
    """Char tokenizer: 'Q: 12+3-4=?\\n' is 12 tokens; '<think>' is one token, so step 0 is 1+7+1 = 9 tokens
    (ends at 20), step 1 is 7+1 = 8 ('</think>' one token: ends at 28), step 2 is 1+2+1 = 4 (ends at 32)."""
    ids, ends = prm.encode(PROMPT, STEPS)
    assert len(ids) == 33 and ends == [20, 28, 32]
    tok = prm.tokenizer
    assert [tok.decode([ids[e]]) for e in ends] == [";", "</think>", "</answer>"]


@pytest.mark.parametrize("separator", ["", "\n"])
def test_label_positions_match_trls_prm_convention(nano_model_dir, tokenizer, separator):
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = "<unk>"  # a tokenizer with a BOS: TRL puts it before the prompt
    prm = ProcessRewardModel(new_prm(nano_model_dir).model, tok, step_separator=separator)
    steps = ["Step one is 2+2=4", "so the answer is 4"] if separator else STEPS[:2]
    ids, ends = prm.encode(PROMPT, steps)
    trl_ids, trl_labels_ = trl_labels(tok, PROMPT, steps, [True, False], separator)
    assert ids == trl_ids and ids[0] == tok.bos_token_id
    assert ends == [i for i, y in enumerate(trl_labels_) if y != -100]
    assert [trl_labels_[e] for e in ends] == [1, 0]


def test_score_many_equals_score_steps_row_by_row_and_prefixes_score_alike(prm):
    prompts = [PROMPT, "Q: 1+1=?\n", "Q: 7-2-1=?\n", "Q: 3=?\n"]
    steps = [STEPS, ["<think>1+1=2</think>", "<answer>2</answer>"], ["<think>7-2=5;"], []]
    before = prm.tokens_read
    many = prm.score_many(prompts, steps)
    read = prm.tokens_read - before
    assert read == sum(len(prm.encode(p, s)[0]) for p, s in zip(prompts, steps) if s)  # padding is not counted
    assert [len(r) for r in many] == [3, 2, 1, 0]
    for p, s, row in zip(prompts, steps, many):
        assert prm.score_steps(p, s) == pytest.approx(row, abs=1e-5)
        assert all(0 < x < 1 for x in row)
    # causal attention + steps tokenized one by one: a prefix scores as inside the whole completion
    assert prm.score_steps(PROMPT, STEPS[:2]) == pytest.approx(many[0][:2], abs=1e-5)
    assert prm.score_completion(PROMPT, "".join(STEPS)) == pytest.approx(many[0], abs=1e-5)
    prm.batch_size = 2  # micro-batched: the same numbers
    assert prm.score_many(prompts, steps) == [pytest.approx(r, abs=1e-5) for r in many]
    prm.batch_size = 32


def test_long_inputs_keep_the_newest_tokens(prm):
    ids, ends = prm.encode(PROMPT, STEPS)
    prm.max_length = 20
    try:
        cut_ids, cut_ends = prm.encode(PROMPT, STEPS)
    finally:
        prm.max_length = 256
    assert cut_ids == ids[-20:] and cut_ends == [7, 15, 19]
    prm.max_length = 10
    try:
        assert prm.encode(PROMPT, STEPS)[1] == [0, 5, 9]  # step 0 ended before the window: read at its first token
    finally:
        prm.max_length = 256


def test_step_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)], [0.0, 0.0]])  # p(correct) = .75, .75, .5
    got = step_cross_entropy(logits, torch.tensor([1.0, 0.5, 0.0]))
    want = [-math.log(0.75), -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)), math.log(2)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # hard targets: exactly the token cross-entropy TRL trains with
    hard = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 0]), reduction="none")
    assert step_cross_entropy(logits, torch.tensor([1.0, 0.0, 0.0])).tolist() == pytest.approx(hard.tolist())


def test_one_step_separates_steps_labelled_good_from_a_step_labelled_bad(nano_model_dir):
    prm = new_prm(nano_model_dir, seed=0)
    targets = torch.tensor([1.0, 0.0, 1.0])
    loss = lambda: step_cross_entropy(prm.forward_steps([prm.encode(PROMPT, STEPS)])[0], targets).mean()  # noqa: E731
    with torch.no_grad():
        before, loss_before = prm.score_steps(PROMPT, STEPS), float(loss())
    opt = torch.optim.SGD(prm.model.parameters(), lr=0.1)
    loss().backward()
    opt.step()
    with torch.no_grad():
        after, loss_after = prm.score_steps(PROMPT, STEPS), float(loss())
    assert loss_after < loss_before
    assert after[0] - after[1] > before[0] - before[1] and after[2] - after[1] > before[2] - before[1]


def test_save_and_load_round_trip(tmp_path, nano_model_dir):
    prm = new_prm(nano_model_dir, delimiters=["\n"], step_separator="", seed=1)
    prm.save(tmp_path / "prm", labels="mc")
    loaded = load_prm(tmp_path / "prm")
    assert loaded.delimiters == ("\n",) and loaded.step_separator == "" and loaded.tokens_read == 0
    assert loaded.score_steps(PROMPT, STEPS) == pytest.approx(prm.score_steps(PROMPT, STEPS), abs=1e-6)
    assert loaded.split("a\nb") == ["a\n", "b"]


def test_load_errors(tmp_path, nano_model_dir):
    with pytest.raises(ModelError, match="no such local directory"):
        load_prm(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"is not a process reward model: its architecture is \['LlamaForCausalLM'\]"):
        load_prm(nano_model_dir)  # a causal LM: from_pretrained would silently add a fresh 2-label head
    prm = new_prm(nano_model_dir)
    prm.save(tmp_path / "p")
    (tmp_path / "p" / "prm.json").write_text("{broken")
    with pytest.raises(ModelError, match="prm.json is not valid JSON"):
        load_prm(tmp_path / "p")
