"""The embedded default: a char-level tokenizer and a tiny Llama-family config.

Both are ordinary Hugging Face objects: the tokenizer is a `PreTrainedTokenizerFast` over a
`tokenizers` WordLevel model that splits text into single characters, and the model is a
`LlamaForCausalLM`. `save_pretrained` writes a normal model directory, so the shipped asset loads
through `AutoModelForCausalLM`/`AutoTokenizer` like any hub model.
"""

from __future__ import annotations


from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")  # one token each: keeps traces short
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *TAGS, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(list(TAGS))  # matched before the per-character split
    return tok


SIZES = {
    # name: (hidden, layers, heads, intermediate)
    "nano": (64, 2, 2, 192),
    "tiny": (192, 4, 6, 576),
    "small": (512, 6, 8, 1408),  # ~19.3M parameters: the training-throughput benchmark size
}


def build_config(tokenizer: PreTrainedTokenizerFast, size: str = "tiny", max_positions: int = 256) -> LlamaConfig:
    hidden, layers, heads, inter = SIZES[size]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
