"""Tiny randomly-initialised HF models built in tmp dirs (nothing is downloaded)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: every printable ASCII char is a token."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_config(tokenizer, **kwargs) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=2, bos_token_id=2, **kwargs,
    )


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rm")
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    LlamaForSequenceClassification(tiny_config(tok, num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    LlamaForCausalLM(tiny_config(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
