from transformers import AutoTokenizer

from reasonloop.models.tiny import CHARS, TAGS


def test_round_trip_every_character_and_tag(tokenizer):
    text = CHARS + "".join(TAGS) + "Q: 12+3=?\n<think>12+3=15</think><answer>15</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_tags_are_single_tokens_and_chars_are_one_token_each(tokenizer):
    for tag in TAGS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer("abc 12", add_special_tokens=False)["input_ids"]) == 6


def test_saved_tokenizer_loads_through_auto_class(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Q: 7-2=?\n<think>7-2=5</think>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.decode(loaded(text)["input_ids"] + [loaded.eos_token_id], skip_special_tokens=True) == text
